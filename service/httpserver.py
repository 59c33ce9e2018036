"""The daemon's HTTP port: /healthz and /metrics, built so that /healthz keeps answering.

cloud.gov's health check asks `GET /healthz` and gives up after a second; a
Prometheus scrapes `/metrics`. Anyone who can reach the port can also flood it
or hold connections open, so:

- One asyncio loop in a thread of its own owns every connection: a slow client
  costs a socket, not a thread. The listen backlog is LISTEN_BACKLOG.
- A request's head (request line and headers) must arrive whole within
  `head_seconds` of the connection, or of the previous answer on a kept-alive
  one, else 408 and close; an answer must be written within WRITE_SECONDS.
- At most `max_connections` at once: a quarter of the open-file limit, 16 to
  256 (connection_budget), so the control socket, the databases and S3 keep
  their descriptors. One more is not refused: the connection that has waited
  longest for its request is closed instead, so a new probe always finds room
  and a crowd of slow clients only pushes itself out.
- /healthz is answered in the loop with `healthy()` alone (a few attribute
  reads): it never waits for the registry, a render, or a thread.
- /metrics is rendered on RENDER_THREADS threads, at most RENDER_WAITING more
  waiting; beyond that 503 with Retry-After, and the loop stays free.
- Only GET and HEAD on /metrics and /healthz: any other path is 404, another
  method 405 with Allow. A request line over MAX_LINE_BYTES is 414, headers
  over MAX_HEADER_BYTES or MAX_HEADERS lines 431. A request body is never read;
  the connection closes after the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import resource
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from service.errors import ServiceError
from service.log import get_logger

LISTEN_BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
HEAD_SECONDS = 10.0
WRITE_SECONDS = 10.0
MAX_LINE_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
RENDER_THREADS = 2
RENDER_WAITING = 8
PATHS = ("/metrics", "/healthz")
ALLOWED = "GET, HEAD"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 414: "URI Too Long", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def connection_budget(open_file_limit: int | None = None) -> int:
    """Connections the port may hold: a quarter of the open-file limit, from 16 to 256."""
    if open_file_limit is None:
        open_file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if open_file_limit == resource.RLIM_INFINITY:
            open_file_limit = 1 << 20
    return max(16, min(256, open_file_limit // 4))


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Connection:
    """One client: its socket, what it sent beyond the last request, and what it is waiting for."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.phase = "head"  # head (waiting for a request), render, write
        self.since = time.monotonic()
        self.task: asyncio.Task | None = None

    def enter(self, phase: str) -> None:
        self.phase, self.since = phase, time.monotonic()


class MetricsServer:
    """/metrics (Prometheus text) and /healthz (200 while `healthy()`) on one port."""

    def __init__(self, port: int, registry: CollectorRegistry, healthy: Callable[[], bool],
                 host: str = "0.0.0.0", *, max_connections: int | None = None,
                 head_seconds: float = HEAD_SECONDS) -> None:
        self.registry = registry
        self.healthy = healthy
        self.max_connections = max_connections or connection_budget()
        self.head_seconds = head_seconds
        self.log = get_logger(component="http")
        try:
            self.sock = socket.create_server((host, port), backlog=LISTEN_BACKLOG)
        except OSError as exc:
            raise ServiceError(f"cannot serve metrics on port {port}: {exc.strerror}",
                               hint="another process uses the port; set PORT to a free one") from exc
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self._connections: dict[_Connection, None] = {}  # insertion order: oldest first
        self._rendering = 0
        self._renderer = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="metrics")
        self._loop = asyncio.new_event_loop()
        self._stopped = asyncio.Event()  # bound to the loop when first used, in its thread
        self._short_of_descriptors = 0.0
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        self.log.info("http.listening", port=self.port, max_connections=self.max_connections)
        return self

    def close(self) -> None:
        """Stop accepting, close every connection, and wait (briefly) for the loop to end."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=3)
        elif not self._loop.is_closed() and self._thread.ident is None:
            self._loop.close()  # never started
        self._renderer.shutdown(wait=False, cancel_futures=True)
        self.sock.close()

    def open_connections(self) -> int:
        return len(self._connections)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve_until_stopped())
        finally:
            self._loop.close()

    async def _serve_until_stopped(self) -> None:
        accepting = asyncio.create_task(self._accept_forever())
        await self._stopped.wait()
        accepting.cancel()
        tasks = [c.task for c in self._connections if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(accepting, *tasks, return_exceptions=True)
        await asyncio.sleep(0)  # their done callbacks close their sockets
        for connection in list(self._connections):
            self._release(connection)

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    self._note_short_of_descriptors()
                    self._evict_one()  # the process ran out: give one back and try again
                elif not isinstance(exc, ConnectionError):  # a client gone before its accept is no news
                    self.log.warning("http.accept_failed", error=str(exc))
                await asyncio.sleep(0.05)
                continue
            sock.setblocking(False)
            connection = _Connection(sock)
            self._connections[connection] = None
            connection.task = asyncio.create_task(self._serve(connection))
            # Closed when its task is done, however it ended: a task cancelled before it ever ran
            # never reaches a `finally`, and a socket must not close while the loop still watches it.
            connection.task.add_done_callback(lambda _task, c=connection: self._release(c))
            if len(self._connections) > self.max_connections:
                self._evict_one()
            # An accept that finds a connection waiting completes without yielding: let the
            # connections run (and the evicted one close) before taking the next.
            await asyncio.sleep(0)

    def _release(self, connection: _Connection) -> None:
        self._connections.pop(connection, None)
        connection.sock.close()

    def _evict_one(self) -> None:
        """Close the connection that has waited longest for a request (or, if none is waiting,
        the oldest at all); its task's `finally` closes the socket."""
        live = [c for c in self._connections if c.task is not None and not c.task.cancelled()
                and not c.task.cancelling()]
        waiting = [c for c in live if c.phase == "head"] or live
        if waiting:
            min(waiting, key=lambda c: c.since).task.cancel()

    def _note_short_of_descriptors(self) -> None:
        now = time.monotonic()
        if now - self._short_of_descriptors > 60:
            self._short_of_descriptors = now
            self.log.warning("http.out_of_descriptors", connections=len(self._connections),
                             hint="the process reached its open-file limit; the oldest waiting "
                                  "connection is closed to make room")

    async def _serve(self, connection: _Connection) -> None:
        try:
            while True:
                connection.enter("head")
                try:
                    async with asyncio.timeout(self.head_seconds):
                        request = await self._read_head(connection)
                except TimeoutError:
                    if connection.buffer:
                        await self._send(connection, 408, b"request not complete in time\n", close=True)
                    return
                except _BadRequest as bad:
                    await self._send(connection, bad.status, f"{REASONS[bad.status]}\n".encode(), close=True)
                    return
                if request is None or not await self._answer(connection, *request):
                    return
        except (OSError, TimeoutError):
            return  # the client went away, or did not read its answer in time
        except Exception:  # noqa: BLE001 - one bad exchange must not stop the port
            self.log.exception("http.crashed")

    async def _read_head(self, connection: _Connection):
        """(method, path, headers, keep_alive) of the next request; None at the end."""
        loop = asyncio.get_running_loop()
        while True:
            end = connection.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head, connection.buffer = connection.buffer[:end], connection.buffer[end + 4:]
                return parse_head(head)
            line_end = connection.buffer.find(b"\r\n")
            if (line_end < 0 and len(connection.buffer) > MAX_LINE_BYTES) or line_end > MAX_LINE_BYTES:
                raise _BadRequest(414)
            if len(connection.buffer) > MAX_LINE_BYTES + MAX_HEADER_BYTES:
                raise _BadRequest(431)
            chunk = await loop.sock_recv(connection.sock, 65536)
            if not chunk:
                return None
            connection.buffer += chunk

    async def _answer(self, connection: _Connection, method: str, path: str, headers: dict,
                      keep_alive: bool) -> bool:
        """Answer one request; True to read another on this connection."""
        if path not in PATHS:
            return await self._send(connection, 404, b"not found: this port serves /metrics and /healthz\n",
                                    close=not keep_alive, head=method == "HEAD")
        if method not in ("GET", "HEAD"):
            return await self._send(connection, 405, b"method not allowed\n", close=not keep_alive,
                                    extra=(("Allow", ALLOWED),))
        if path == "/healthz":
            ok = self.healthy()
            return await self._send(connection, 200 if ok else 503,
                                    b"ok\n" if ok else b"scheduler not running\n",
                                    close=not keep_alive, head=method == "HEAD")
        if self._rendering >= RENDER_THREADS + RENDER_WAITING:
            return await self._send(connection, 503, b"busy: too many /metrics requests at once\n",
                                    close=True, extra=(("Retry-After", "1"),), head=method == "HEAD")
        connection.enter("render")
        self._rendering += 1
        try:
            body, content_type, encoding = await asyncio.get_running_loop().run_in_executor(
                self._renderer, self._render, headers.get("accept", ""), headers.get("accept-encoding", ""))
        finally:
            self._rendering -= 1
        extra = (("Content-Encoding", encoding),) if encoding else ()
        return await self._send(connection, 200, body, close=not keep_alive, content_type=content_type,
                                extra=extra, head=method == "HEAD")

    def _render(self, accept: str, accept_encoding: str) -> tuple[bytes, str, str]:
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        if "gzip" in accept_encoding.lower():
            return gzip.compress(body, compresslevel=1), content_type, "gzip"
        return body, content_type, ""

    async def _send(self, connection: _Connection, status: int, body: bytes, *, close: bool,
                    content_type: str = "text/plain; charset=utf-8", extra: tuple = (),
                    head: bool = False) -> bool:
        """Write one answer within WRITE_SECONDS; True when the connection stays open."""
        connection.enter("write")
        lines = [f"HTTP/1.1 {status} {REASONS[status]}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in extra),
                 f"Connection: {'close' if close else 'keep-alive'}"]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)
        async with asyncio.timeout(WRITE_SECONDS):
            await asyncio.get_running_loop().sock_sendall(connection.sock, data)
        if close:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_WR)
        return not close


def parse_head(head: bytes) -> tuple[str, str, dict, bool]:
    """(method, path, headers, keep_alive) of a request head; _BadRequest when malformed."""
    lines = head.split(b"\r\n")
    if len(lines[0]) > MAX_LINE_BYTES:
        raise _BadRequest(414)
    if len(lines) - 1 > MAX_HEADERS or len(head) - len(lines[0]) > MAX_HEADER_BYTES:
        raise _BadRequest(431)
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper() \
            or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1") or not parts[1].startswith(b"/"):
        raise _BadRequest(400)
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(400)
        headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    version, connection = parts[2], headers.get("connection", "").lower()
    has_body = headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
    keep_alive = (version == b"HTTP/1.1" and "close" not in connection) or \
                 (version == b"HTTP/1.0" and "keep-alive" in connection)
    path = parts[1].split(b"?", 1)[0].decode("latin-1")
    return parts[0].decode("ascii"), path, headers, keep_alive and not has_body
