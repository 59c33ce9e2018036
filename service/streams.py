"""Objects streamed out of S3 into PostgreSQL programs, hashed on the way.

`ObjectReader` downloads one object on its own thread into a small bounded
queue of chunks, counting and hashing every byte, so the next table can be
fetched while the current one loads (memory: `depth` chunks per reader).
`feed_command` writes a reader's chunks into a program's stdin on another
thread. A restore trusts a stream only when it ended, was as long as the
manifest says and hashed to the recorded sha256: a stream that stopped early
can look like a clean end of input to the program reading it.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator

from service.errors import IntegrityError, ServiceError, StorageError
from service.progress import activity_of
from service.storage import ObjectStore

CHUNK_SIZE = 1024 * 1024
QUEUE_DEPTH = 8
READ_ATTEMPTS = 3
_END = object()


class ObjectReader:
    """One object read on a thread into a bounded queue, with its size and sha256."""

    def __init__(self, store: ObjectStore, key: str, *, chunk_size: int = CHUNK_SIZE,
                 depth: int = QUEUE_DEPTH) -> None:
        self.store = store
        self.key = key
        self.chunk_size = chunk_size
        self.size = 0
        self.error: BaseException | None = None
        self._digest = hashlib.sha256()
        self._progress = getattr(store, "progress", None)  # the run's tracker (service.progress)
        self._moved = None  # counts into the download's activity while the fetch runs
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fetch {key}", daemon=True)

    def start(self) -> ObjectReader:
        self._thread.start()
        return self

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def _run(self) -> None:
        what = f"download of s3://{self.store.bucket}/{self.key} from {getattr(self.store, 'endpoint', '')}"
        with activity_of(self._progress, what) as activity:
            self._moved = activity.moved if activity is not None else None
            self._fetch()

    def _fetch(self) -> None:
        try:
            for attempt in range(1, READ_ATTEMPTS + 1):
                try:
                    self._read_from_start()
                    break
                except ServiceError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a body read failed mid-object (connection reset)
                    if attempt == READ_ATTEMPTS:
                        raise StorageError(f"reading s3://{self.store.bucket}/{self.key} failed",
                                           detail=f"{type(exc).__name__}: {exc}",
                                           hint="check that the S3 endpoint is reachable") from exc
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self.error = exc
            self._put(exc)

    def _read_from_start(self) -> None:
        """Read the object; after a broken connection the bytes already passed on are skipped."""
        body = self.store.open_stream(self.key)
        try:
            skip = self.size
            while not self._stop.is_set():
                data = body.read(self.chunk_size)
                if not data:
                    return
                if skip:
                    # A retry re-reads from the start: drop what the consumer already has.
                    cut = min(skip, len(data))
                    data, skip = data[cut:], skip - cut
                    if not data:
                        continue
                self._digest.update(data)
                self.size += len(data)
                if self._moved is not None:
                    self._moved(len(data))
                self._put(data)
        finally:
            body.close()

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def chunks(self) -> Iterator[bytes]:
        """Every chunk in order; raises the download's error instead of ending early."""
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    raise StorageError(f"the download of {self.key} was stopped") from None
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def check(self, size: int, sha256: str, what: str) -> None:
        """Raise IntegrityError unless the whole stream matched the recorded size and sha256."""
        if self.error is not None:
            raise self.error
        if self.size != size or self.sha256 != sha256:
            raise IntegrityError(
                f"{what} does not match its manifest: {self.size} bytes read, {size} recorded",
                detail=f"key {self.key}: sha256 {self.sha256}, recorded {sha256}",
                hint="the object changed or the download was cut; nothing was committed",
            )

    def close(self) -> None:
        """Stop the download and release the queue (safe to call twice)."""
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)


class Feeder:
    """Writes a reader's chunks into a program's stdin on a thread, then closes it.

    A program may stop reading before the end (`pg_restore --list` reads only the
    table of contents): the rest is still read and hashed, so the check covers
    the whole object. Whether the program was right to stop is its exit status.
    """

    def __init__(self, reader: ObjectReader, stdin) -> None:
        self.reader = reader
        self.stdin = stdin
        self.error: BaseException | None = None
        self.closed_early = False
        self._thread = threading.Thread(target=self._run, name=f"feed {reader.key}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self.reader.chunks():
                if self.closed_early:
                    continue
                try:
                    self.stdin.write(chunk)
                except (BrokenPipeError, ValueError, OSError):
                    self.closed_early = True
        except BaseException as exc:  # noqa: BLE001 - the consumer checks `error`
            self.error = exc
        finally:
            try:
                self.stdin.close()
            except OSError:
                pass

    def join(self) -> None:
        """Wait for the end of the object; raise the download's error if it failed."""
        self._thread.join()
        if self.error is not None:
            raise self.error


def feed_command(reader: ObjectReader, stdin) -> Feeder:
    """Start feeding `reader` into `stdin` (a program's pipe); returns the running Feeder."""
    return Feeder(reader, stdin)
