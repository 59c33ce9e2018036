"""The control socket: a Unix socket server in the daemon and its client in the CLI.

Protocol: one JSON object per line each way. A request is
`{"command": "status" | "jobs" | "trigger" | "pause" | "resume", ...}`; `trigger`
adds `"job"`, `"args"` (a list) and `"options"` (confirm/apply/force). A reply
is `{"ok": true, ...}` or `{"ok": false, "error", "detail", "hint", "exit_code"}`.
Lines are bounded (MAX_LINE_BYTES); anything malformed gets an error reply and
the server carries on. The socket is created mode 0600 (only the app's user can
steer it), a stale one left by a killed daemon is replaced, and it is removed
on close. On cloud.gov an operator reaches it with `cf ssh APP -c "..."`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path

from service.errors import ControlError, ServiceError
from service.log import get_logger, scrub

MAX_LINE_BYTES = 64 * 1024
IDLE_TIMEOUT_SECONDS = 30.0
COMMANDS = ("status", "jobs", "trigger", "pause", "resume")

Handler = Callable[[dict], dict]


def error_reply(exc: ServiceError) -> dict:
    """The reply that carries a refusal or failure to the client."""
    return {"ok": False, "error": scrub(exc.message), "detail": scrub(exc.detail),
            "hint": scrub(exc.hint), "exit_code": exc.exit_code}


def parse_request(line: bytes) -> dict:
    """A validated request from one line; ControlError describing what is wrong."""
    if len(line) > MAX_LINE_BYTES:
        raise ControlError(f"request longer than {MAX_LINE_BYTES} bytes")
    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlError("request is not one line of JSON", detail=str(exc)) from None
    if not isinstance(request, dict) or request.get("command") not in COMMANDS:
        raise ControlError("request needs a known 'command'", hint="commands: " + ", ".join(COMMANDS))
    if request["command"] == "trigger":
        if not isinstance(request.get("job"), str):
            raise ControlError("trigger needs a 'job' name")
        args, options = request.setdefault("args", []), request.setdefault("options", {})
        if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
            raise ControlError("'args' must be a list of strings")
        if not isinstance(options, dict):
            raise ControlError("'options' must be an object")
    return request


class _RequestHandler(socketserver.StreamRequestHandler):
    timeout = IDLE_TIMEOUT_SECONDS

    def handle(self) -> None:
        while True:
            try:
                line = self.rfile.readline(MAX_LINE_BYTES + 1)
            except OSError:  # idle timeout or the client went away
                return
            if not line:
                return
            reply = self.server.answer(line.rstrip(b"\r\n") if line.endswith(b"\n") else line)
            try:
                self.wfile.write(json.dumps(reply, default=str).encode("utf-8") + b"\n")
            except OSError:
                return
            if len(line) > MAX_LINE_BYTES and not self._skip_rest_of_line():
                return


    def _skip_rest_of_line(self) -> bool:
        """Discard the rest of an overlong line, a bounded piece at a time; False at EOF."""
        while True:
            try:
                chunk = self.rfile.readline(MAX_LINE_BYTES)
            except OSError:
                return False
            if not chunk:
                return False
            if chunk.endswith(b"\n"):
                return True


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves `handler(request) -> reply` on a Unix socket, one thread per client."""

    daemon_threads = True

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self.log = get_logger(component="control")
        _replace_stale_socket(self.path)
        old_umask = os.umask(0o177)  # born 0600: no window in which others could connect
        try:
            super().__init__(str(self.path), _RequestHandler)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._thread: threading.Thread | None = None

    def answer(self, line: bytes) -> dict:
        """One reply for one request line; never raises."""
        try:
            request = parse_request(line)
            return {"ok": True, **self.handler(request)}
        except ServiceError as exc:
            return error_reply(exc)
        except Exception as exc:  # noqa: BLE001 - a bad request must not stop the daemon
            self.log.exception("control.crashed")
            return error_reply(ServiceError(f"internal error: {type(exc).__name__}",
                                            hint="this is a bug; the traceback is in the log"))

    def start(self) -> ControlServer:
        self._thread = threading.Thread(target=self.serve_forever, args=(0.1,), name="control",
                                        daemon=True)
        self._thread.start()
        self.log.info("control.listening", path=str(self.path))
        return self

    def close(self) -> None:
        """Stop serving and remove the socket file."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=2)
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _replace_stale_socket(path: Path) -> None:
    """Remove a socket nobody listens on; refuse to steal one a live daemon serves."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise ControlError(f"{path} exists and is not a socket", hint="remove it or choose another "
                           "FAC_BACKUP_CONTROL_SOCKET")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: left by a daemon that was killed
            return
    raise ControlError(f"another daemon is already listening on {path}",
                       hint="stop it first, or give this one its own FAC_BACKUP_CONTROL_SOCKET")


def send_request(path: Path, request: dict, timeout: float = 10.0) -> dict:
    """Send one request to the daemon and return its reply; ControlError if none listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(
                f"no daemon is listening on {path}",
                detail=exc.strerror or "",
                hint="start it with 'python -m service daemon' (on cloud.gov: run this command inside "
                "the app with cf ssh), or set FAC_BACKUP_CONTROL_SOCKET to its socket",
            ) from None
        except PermissionError:
            raise ControlError(f"no permission to use {path}",
                               hint="run the command as the daemon's user") from None
        try:
            sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline(MAX_LINE_BYTES * 16)
        except OSError as exc:
            raise ControlError(f"the daemon on {path} did not answer", detail=str(exc)) from None
    if not line:
        raise ControlError(f"the daemon on {path} closed the connection without an answer")
    try:
        return json.loads(line)
    except ValueError:
        raise ControlError(f"the daemon on {path} sent an unreadable answer") from None
