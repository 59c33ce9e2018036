"""structlog set-up: JSON lines when not on a terminal, readable on one, secrets redacted.

Events have stable names (`backup.started`, `backup.finished`, ...). Two layers
keep secrets out: keys that name a secret are masked, and every registered
secret value (passwords, S3 keys from the bindings) is replaced wherever it
appears in a string, including exception text.

Libraries log through the standard library (APScheduler's `apscheduler.*`,
botocore, urllib3, asyncio) and Python warns through `warnings`: their records
of WARNING and above are handed to structlog as `library.log` events (`logger`,
`message`), and a thread that dies of an exception becomes `thread.crashed`, so
every line the process writes is one of ours and parses as JSON in json mode.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog

MASK = "***"
SECRET_KEY_WORDS = ("password", "secret", "token", "authorization", "access_key", "credential")

_lock = threading.Lock()
_secret_values: frozenset[str] = frozenset()


def register_secrets(values: tuple[str, ...] | list[str]) -> None:
    """Remember secret values so that no log line can carry them."""
    global _secret_values
    with _lock:
        _secret_values = _secret_values | {v for v in values if v and len(v) >= 4}


def scrub(text: str) -> str:
    """Replace every registered secret value in `text`."""
    for value in _secret_values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: (MASK if _is_secret_key(k) else _scrub_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(v) for v in value)
    return value


def _is_secret_key(key: Any) -> bool:
    lowered = str(key).lower()
    return any(word in lowered for word in SECRET_KEY_WORDS)


def redact_secrets(_logger: Any, _method: str, event_dict: dict) -> dict:
    """structlog processor: mask secret keys and registered secret values."""
    return {k: (MASK if _is_secret_key(k) else _scrub_value(v)) for k, v in event_dict.items()}


def configure_logging(fmt: str = "auto", stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """JSON on `stream` (stdout by default) unless it is a terminal or `fmt` says console."""
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False, default=str)
    )
    structlog.configure(
        processors=processors + [renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    route_standard_logging()


LIBRARY_LEVEL = logging.WARNING  # APScheduler says INFO at every fire: our own events tell that


class _ToStructlog(logging.Handler):
    """Hands a standard-library log record to structlog: one renderer, one lock, one stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's bad format string must not lose the line
            message = str(record.msg)
        fields: dict[str, Any] = {"logger": record.name, "message": message}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        get_logger().log(record.levelno, "library.log", **fields)


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    get_logger().error("thread.crashed", thread=getattr(args.thread, "name", None),
                       exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def route_standard_logging() -> None:
    """Send the standard library's log records, warnings and thread crashes through structlog."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToStructlog)]:
        root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(LIBRARY_LEVEL)
    logging.captureWarnings(True)
    if threading.excepthook is threading.__excepthook__:  # not one a test runner put there
        threading.excepthook = _log_thread_crash


def get_logger(**bind: Any) -> structlog.typing.FilteringBoundLogger:
    """The service's logger, optionally with bound keys."""
    return structlog.get_logger("fac-backup").bind(**bind)
