"""Deadlines of S3 requests, and the interrupt that reaches requests already in flight.

Part of the storage boundary: only service.storage uses it, on the botocore
client it builds (this module imports no vendor library; it hooks the
client's events and its connection pools). What it enforces:

- an ordinary request waits READ_TIMEOUT_SECONDS for each read and is tried
  ATTEMPTS times (the client's configuration, service.storage.build_s3_client);
- a clean-up request (abort an upload, delete objects) waits at most
  CLEANUP_READ_SECONDS, CLEANUP_ATTEMPTS times: it must never wait like the
  work it tidies up after;
- a request that honestly answers late gets time in proportion to its size:
  a server-side copy (CopyObject up to 5 GB, UploadPartCopy), the completion
  of an upload of many parts;
- `interrupt()` shuts down every socket of the client, so a thread blocked in a
  read wakes at once, and refuses every new request except clean-up for
  CLEANUP_GRACE_SECONDS. A cancelled or stalled run stops within seconds,
  whatever the endpoint does, and can still abort its uploads.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import weakref
from collections.abc import Iterator

# A read waits this long for the next bytes of an answer. S3 answers an ordinary request (a part,
# a listing page, a HEAD) in well under a second; three attempts bound a silent endpoint at ~95 s.
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 30
ATTEMPTS = 3
# Clean-up after a failure must not wait like the work it cleans up after.
CLEANUP_OPERATIONS = frozenset({"AbortMultipartUpload", "DeleteObjects"})
CLEANUP_READ_SECONDS = 10
CLEANUP_ATTEMPTS = 2
# After an interrupt only clean-up goes out, and only for this long (cloud.gov's stop allows 10 s).
CLEANUP_GRACE_SECONDS = 3.0
# Honest late answers: a server-side copy slower than this rate, or a completion slower than this
# per part, is treated as stalled. Far below what S3 does (hundreds of MB/s inside a region).
COPY_BYTES_PER_SECOND = 25 * 1000 * 1000
COMPLETE_SECONDS_PER_PART = 0.05


def copy_allowance(size: int) -> float:
    """Extra seconds a server-side copy of `size` bytes may take to answer."""
    return max(int(size), 0) / COPY_BYTES_PER_SECOND


def _range_bytes(text: str) -> int:
    """Bytes of a `bytes=first-last` range (0 when unreadable)."""
    try:
        first, last = text.removeprefix("bytes=").split("-")
        return int(last) - int(first) + 1
    except ValueError:
        return 0


class RequestInterrupted(Exception):
    """Raised from botocore's before-send: the store was interrupted, the request stays unsent.
    No botocore class, so botocore never retries it."""


class CleanupGaveUp(Exception):
    """Raised from botocore's before-send: a clean-up request used its attempts."""


class RequestGuard:
    """Per client: the connections it opened, each request's deadline, and the interrupt.

    botocore exposes no hook on its sockets, so the client's connection pools are
    replaced by subclasses that remember every connection they open (weakly): an
    interrupt shuts each socket down, and whatever thread reads from it wakes with
    an error. `installed` is False if a botocore release moved those internals
    (then an interrupt still refuses new requests, and requests in flight end at
    their own deadline).
    """

    def __init__(self, client) -> None:
        self._lock = threading.Lock()
        self._connections: weakref.WeakSet = weakref.WeakSet()
        self._local = threading.local()
        self.reason = ""
        self._interrupted_at: float | None = None
        self._window_closed = False
        client.meta.events.register("before-parameter-build.s3", self._deadline, unique_id="fac-backup-deadline")
        client.meta.events.register("before-send.s3", self._before_send, unique_id="fac-backup-interrupt")
        self.installed = self._track_connections(client)

    def _track_connections(self, client) -> bool:
        try:
            classes = client._endpoint.http_session._pool_classes_by_scheme
        except AttributeError:
            return False
        guard = self
        for scheme, base in list(classes.items()):
            class Tracked(base):
                def _new_conn(self):
                    conn = super()._new_conn()
                    guard._connections.add(conn)
                    return conn

            Tracked.__name__ = f"Tracked{base.__name__}"
            classes[scheme] = Tracked  # the pool manager shares this dict: pools made from now on
        return True

    @contextlib.contextmanager
    def allowance(self, seconds: float) -> Iterator[None]:
        """Requests this thread makes in the block may answer `seconds` later than usual; a block
        inside another gives its own requests its own allowance, then the outer one's again."""
        outer = getattr(self._local, "allowance", 0.0)
        self._local.allowance = seconds
        try:
            yield
        finally:
            self._local.allowance = outer

    def _deadline(self, params, model, context, **_kwargs) -> None:
        """The read timeout of this call (`params`: the API call's own arguments)."""
        name = model.name
        if name in CLEANUP_OPERATIONS:
            context["read_timeout"] = CLEANUP_READ_SECONDS
            return
        extra = getattr(self._local, "allowance", 0.0)
        if name == "UploadPartCopy":  # s3transfer's managed copy sends these from its own threads
            extra = copy_allowance(_range_bytes(params.get("CopySourceRange", "")))
        elif name == "CompleteMultipartUpload":
            extra = COMPLETE_SECONDS_PER_PART * len((params.get("MultipartUpload") or {}).get("Parts", ()))
        if extra:
            context["read_timeout"] = READ_TIMEOUT_SECONDS + extra

    def _before_send(self, request, event_name: str, **_kwargs) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        context = getattr(request, "context", None) or {}
        with self._lock:
            interrupted_at, closed = self._interrupted_at, self._window_closed
        cleanup = operation in CLEANUP_OPERATIONS
        if interrupted_at is not None:
            if not cleanup or closed:
                raise RequestInterrupted(self.reason or "interrupted")
            context["read_timeout"] = max(0.1, interrupted_at + CLEANUP_GRACE_SECONDS - time.monotonic())
        if cleanup and (context.get("retries") or {}).get("attempt", 1) > CLEANUP_ATTEMPTS:
            raise CleanupGaveUp(f"no answer after {CLEANUP_ATTEMPTS} attempts")

    def interrupt(self, reason: str) -> None:
        with self._lock:
            if self._interrupted_at is not None:
                return
            self._interrupted_at, self.reason = time.monotonic(), reason
        timer = threading.Timer(CLEANUP_GRACE_SECONDS, self._close_window)
        timer.daemon = True
        timer.start()
        self._shut_down_sockets()

    def _close_window(self) -> None:
        with self._lock:
            self._window_closed = True
        self._shut_down_sockets()

    def _shut_down_sockets(self) -> None:
        for conn in list(self._connections):
            sock = getattr(conn, "sock", None)
            if sock is None:
                continue
            try:
                # The plain socket's shutdown, also for TLS: the thread inside the TLS read owns it.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except (OSError, TypeError):
                pass


_guards: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_guards_lock = threading.Lock()


def guard_for(client) -> RequestGuard:
    """The one guard of `client` (stores that share a client share its guard)."""
    with _guards_lock:
        guard = _guards.get(client)
        if guard is None:
            guard = _guards[client] = RequestGuard(client)
        return guard
