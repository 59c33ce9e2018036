"""The control socket: a Unix socket server in the daemon and its client in the CLI.

Protocol: one JSON object per line each way. A request is
`{"command": "status" | "jobs" | "trigger" | "pause" | "resume", ...}`; `trigger`
adds `"job"`, `"args"` (a list) and `"options"` (confirm/apply/force). A reply
is `{"ok": true, ...}` or `{"ok": false, "error", "detail", "hint", "exit_code"}`.
Lines are bounded (MAX_LINE_BYTES); anything malformed gets an error reply and
the server carries on. Each request line must arrive whole within
REQUEST_SECONDS (a client sending a byte now and then is cut off), and at most
MAX_CONNECTIONS clients are served at once: one more is answered "busy" at
once, without a thread. The socket is created mode 0600 (only the app's user
can steer it), a stale one left by a killed daemon is replaced, and it is
removed on close. On cloud.gov an operator reaches it with `cf ssh APP -c "..."`.

The client (`send_request`) says in its error whether the daemon was asked at
all: DaemonUnavailableError (exit 6: none listening, or busy) means nothing was
sent; a ControlError after sending means the request may have been carried out.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path

from service.errors import ControlError, DaemonBusyError, DaemonUnavailableError, ServiceError
from service.log import get_logger, scrub

MAX_LINE_BYTES = 64 * 1024
REQUEST_SECONDS = 30.0  # for the whole of one request line, and for sending its reply
MAX_CONNECTIONS = 8  # control connections served at once: operators, not crowds
LISTEN_BACKLOG = 64  # connections the kernel queues before the client's connect is refused (EAGAIN)
CONNECT_RETRY_SECONDS = 2.0  # a full queue drains fast: the client tries again this long
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


class _LineReader:
    """Request lines from a socket, each within a deadline; an overlong line is reported once
    (returned as None in `overlong`) and the rest of it discarded."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.discarding = False

    def read_line(self, deadline: float) -> tuple[bytes | None, bool]:
        """(line, overlong); (None, False) at the end. TimeoutError past `deadline`."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line, self.buffer = self.buffer[:end], self.buffer[end + 1:]
                if self.discarding:
                    self.discarding = False
                    continue
                return line.rstrip(b"\r"), False
            if len(self.buffer) > MAX_LINE_BYTES:
                self.buffer, overlong, self.discarding = b"", not self.discarding, True
                if overlong:
                    return None, True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                line, self.buffer = self.buffer, b""
                return (line, False) if line and not self.discarding else (None, False)
            self.buffer += chunk


class _RequestHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        reader, seconds = _LineReader(self.request), self.server.request_seconds
        while True:
            # The whole request within `seconds` of the last reply (or of connecting): a client
            # trickling a byte at a time cannot hold a thread longer than that.
            deadline = time.monotonic() + seconds
            try:
                line, overlong = reader.read_line(deadline)
            except TimeoutError:
                if reader.buffer:
                    self._send(error_reply(ControlError(f"the request was not complete within {seconds:g} s")))
                return
            except OSError:  # the client went away
                return
            if line is None and not overlong:
                return
            reply = (error_reply(ControlError(f"request longer than {MAX_LINE_BYTES} bytes")) if overlong
                     else self.server.answer(line))
            if not self._send(reply):
                return

    def _send(self, reply: dict) -> bool:
        try:
            self.request.settimeout(self.server.request_seconds)  # a client that never reads
            self.request.sendall(json.dumps(reply, default=str).encode("utf-8") + b"\n")
            return True
        except OSError:
            return False


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves `handler(request) -> reply` on a Unix socket, one thread per client, at most
    `max_connections` at once; a client beyond that is told the daemon is busy (exit 6)."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, path: Path, handler: Handler, *, request_seconds: float = REQUEST_SECONDS,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.path = Path(path)
        self.handler = handler
        self.request_seconds = request_seconds
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        self.log = get_logger(component="control")
        _replace_stale_socket(self.path)
        old_umask = os.umask(0o177)  # born 0600: no window in which others could connect
        try:
            super().__init__(str(self.path), _RequestHandler)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._thread: threading.Thread | None = None

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request) -> None:
        """Answered on the accepting thread, without reading: the client learns at once."""
        busy = DaemonBusyError(f"the daemon is serving {self.max_connections} control connections already",
                               hint="try again in a moment")
        with contextlib.suppress(OSError):
            request.settimeout(1.0)
            request.sendall(json.dumps(error_reply(busy)).encode("utf-8") + b"\n")
        self.shutdown_request(request)

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
    """Send one request to the daemon and return its reply.

    DaemonUnavailableError (exit 6) when nothing was asked of the daemon: none
    listens, or its queue stayed full for CONNECT_RETRY_SECONDS; ControlError
    when the request was sent and no answer came.
    """
    with _connect(Path(path), timeout) as sock:
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # A daemon with no slot free answers "busy" and closes before reading: its
                # answer is waiting even though our request could not be written.
                sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline(MAX_LINE_BYTES * 16)
        except OSError as exc:
            raise ControlError(f"the daemon on {path} did not answer", detail=str(exc),
                               hint="the request may have been carried out: see 'python -m service ctl status'"
                               ) from None
    if not line:
        raise ControlError(f"the daemon on {path} closed the connection without an answer",
                           hint="see 'python -m service ctl status' and the daemon's log")
    try:
        return json.loads(line)
    except ValueError:
        raise ControlError(f"the daemon on {path} sent an unreadable answer") from None


def _connect(path: Path, timeout: float) -> socket.socket:
    """A connected socket, trying again while the daemon's listen queue is full."""
    give_up = time.monotonic() + CONNECT_RETRY_SECONDS
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            return sock
        except BlockingIOError:  # EAGAIN: a Unix socket's listen queue is full
            sock.close()
            if time.monotonic() >= give_up:
                raise DaemonBusyError(
                    f"the daemon on {path} is not taking connections: its queue stayed full for "
                    f"{CONNECT_RETRY_SECONDS:g} s; nothing was sent",
                    hint="try again in a moment; if it lasts, the daemon is stuck: see its log") from None
            time.sleep(0.05)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonUnavailableError(
                f"no daemon is listening on {path}",
                detail=exc.strerror or "",
                hint="start it with 'python -m service daemon' (on cloud.gov: run this command inside "
                "the app with cf ssh), or set FAC_BACKUP_CONTROL_SOCKET to its socket",
            ) from None
        except PermissionError:
            sock.close()
            raise ControlError(f"no permission to use {path}",
                               hint="run the command as the daemon's user") from None
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot connect to the daemon on {path}", detail=str(exc)) from None
