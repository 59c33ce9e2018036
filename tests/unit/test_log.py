"""Logs never carry secrets: secret keys masked, registered secret values replaced anywhere."""

from __future__ import annotations

import io
import json

import structlog

from service.log import configure_logging, get_logger, register_secrets


def test_secret_values_and_keys_are_redacted():
    """A password in any string, nested value or exception text is masked in the JSON line."""
    register_secrets(["hunter2-secret-value"])
    out = io.StringIO()
    configure_logging("json", out)
    try:
        raise RuntimeError("connect failed for password hunter2-secret-value")
    except RuntimeError:
        get_logger().exception("db.error", password="plain", nested={"uri": "x://u:hunter2-secret-value@h"},
                               items=["hunter2-secret-value"])
    line = out.getvalue()
    assert "hunter2-secret-value" not in line
    event = json.loads(line)
    assert event["password"] == "***" and event["event"] == "db.error"
    structlog.reset_defaults()


def test_json_when_not_a_terminal():
    """Not on a terminal, every event is one JSON object per line with a level and a time."""
    out = io.StringIO()
    configure_logging("auto", out)
    get_logger(job="x").info("backup.started", tables=3)
    event = json.loads(out.getvalue())
    assert event["job"] == "x" and event["tables"] == 3 and event["level"] == "info" and "timestamp" in event
    structlog.reset_defaults()


def test_every_library_line_is_json_too(monkeypatch):
    """APScheduler's warnings, any other library's log records, Python warnings and a thread that
    crashed all come out as JSON lines of the same stream, with their logger and level, secrets
    redacted; nothing reaches stderr as plain text."""
    import logging
    import sys
    import threading
    import warnings

    register_secrets(["lib-secret-4411"])
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)  # as in the daemon, not pytest's
    logging.captureWarnings(False)  # pytest may have replaced showwarning since: install afresh
    configure_logging("json", out)
    logging.getLogger("apscheduler.scheduler").warning(
        "Execution of job %r skipped: maximum number of running instances reached (1)", "refresh-versions")
    logging.getLogger("urllib3.connectionpool").error("retrying with lib-secret-4411")
    logging.getLogger("apscheduler.executors.default").info("Running job (a routine line stays out)")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
    crashing = threading.Thread(target=lambda: 1 / 0, name="doomed")
    crashing.start()
    crashing.join()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    by_logger = {e["logger"]: e for e in events if "logger" in e}
    skipped = by_logger["apscheduler.scheduler"]
    assert skipped["event"] == "library.log" and skipped["level"] == "warning"
    assert "maximum number of running instances" in skipped["message"] and "timestamp" in skipped
    assert by_logger["urllib3.connectionpool"]["message"] == "retrying with ***"
    assert "apscheduler.executors.default" not in by_logger
    assert "an old API" in by_logger["py.warnings"]["message"]
    crash = next(e for e in events if e["event"] == "thread.crashed")
    assert crash["thread"] == "doomed" and "ZeroDivisionError" in crash["exception"]
    assert err.getvalue() == ""
    logging.captureWarnings(False)
    structlog.reset_defaults()
