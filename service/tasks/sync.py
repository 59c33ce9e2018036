"""media_sync: fac-private-s3 -> backups (and backups -> fac-private-s3 for restores).

How a run decides, object by object (`sync_plan.plan_object`):

- Both buckets are listed at once, each in key order and page by page, and the
  two listings are merged like sorted files: memory holds a few pages and a
  bounded queue of work, never the whole bucket. `backups/` is skipped in both
  listings (it holds the dumps): the sync never reads from it nor writes into it.
- A key missing in the destination, or of another size, is copied.
- Same size and same ETag: the same bytes, skipped. Never decided by timestamp.
- Same size, two different MD5-shaped ETags: different bytes, copied.
- Same size, different ETags of which one is multipart-shaped ("...-N", not an
  MD5 of the bytes, so it differs for equal content): whenever we write an
  object whose ETag may differ from its source's, we record the source's ETag
  in its metadata (`fac-source-etag`). Such a pair is checked with HEAD
  requests: equal when either object's recorded ETag is the other's ETag;
  otherwise it is copied. (Objects encrypted with SSE-KMS have ETags that are
  not an MD5 either, without the "-N": they would be copied on every run.)
- Keys only in the destination are left alone: the sync never deletes.

Copies are server-side (CopyObject, or UploadPartCopy from
`multipart_threshold` bytes on) when the source binding's credentials reach the
destination bucket (cloud.gov's `additional_buckets`); otherwise each object
is streamed from one client into the other, never touching local disk. A failed
object is recorded and the others go on; the step then fails naming the keys.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service import layout
from service.commands import CancelScope
from service.errors import ServiceError, SyncError
from service.storage import MAX_COPY_OBJECT_SIZE, ObjectInfo, ObjectStore
from service.tasks.sync_plan import (  # noqa: F401 - re-exported: the sync's vocabulary
    CHECK,
    COPY,
    SKIP,
    SOURCE_ETAG,
    is_multipart_etag,
    list_media,
    merge_listings,
    plan_object,
    same_content,
)

LISTING_QUEUE = 2000  # listed objects held per listing ahead of its consumer (two pages)
FOLDERS_AHEAD = 4  # top-level folders listed at once per bucket
MAX_NAMED_FAILURES = 20


@dataclass
class SyncReport:
    """What one sync did; `figures()` is the step's result."""

    source: str
    dest: str
    mode: str
    copied: int = 0
    copied_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    checked: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    failed_bytes: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    progress: object = field(default=None, repr=False)  # the run's tracker (service.progress)

    def add(self, outcome: str, size: int, key: str = "", error: str = "") -> None:
        if self.progress is not None:
            self.progress.item_done()
            if outcome == COPY and self.mode == "server-side":  # streamed copies count their own upload
                self.progress.add(size)
        with self.lock:
            if outcome == COPY:
                self.copied, self.copied_bytes = self.copied + 1, self.copied_bytes + size
            elif outcome == SKIP:
                self.skipped, self.skipped_bytes = self.skipped + 1, self.skipped_bytes + size
            else:
                self.failures[key] = error
                self.failed_bytes += size

    def figures(self) -> dict:
        return {"source": self.source, "dest": self.dest, "mode": self.mode, "copied": self.copied,
                "copied_bytes": self.copied_bytes, "skipped": self.skipped, "skipped_bytes": self.skipped_bytes,
                "checked": self.checked, "failed": len(self.failures), "failed_bytes": self.failed_bytes,
                "seconds": self.seconds}


def list_media_by_folder(store: ObjectStore, stop: threading.Event) -> Iterator[ObjectInfo]:
    """`sync_plan.list_media`'s objects, in the same order, faster: the top-level
    folders are listed in parallel, a few ahead of the consumer (one listing gets
    one page at a time), and `backups/` is skipped whole."""
    pending: deque[Iterator[ObjectInfo]] = deque()
    for item in store.list_level(""):
        if isinstance(item, str):
            if layout.is_media_key(item):
                pending.append(_prefetch(store.list_objects(item), stop))
        elif layout.is_media_key(item.key):
            pending.append(iter((item,)))
        while len(pending) > FOLDERS_AHEAD:
            yield from pending.popleft()
    while pending:
        yield from pending.popleft()


def _prefetch(items: Iterator[ObjectInfo], stop: threading.Event) -> Iterator[ObjectInfo]:
    """Run a listing in a thread (started now), a bounded queue ahead of its consumer."""
    ahead: queue.Queue = queue.Queue(maxsize=LISTING_QUEUE)
    end = object()

    def offer(item) -> bool:
        """Queue `item` unless the consumer has gone (then never block forever)."""
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            offer(exc)

    def consume() -> Iterator[ObjectInfo]:
        while True:
            item = ahead.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    threading.Thread(target=produce, daemon=True, name="sync-list").start()
    return consume()


class _Copier:
    """Copies one object, server-side when `server` is set, else by streaming."""

    def __init__(self, source: ObjectStore, dest: ObjectStore, server: ObjectStore | None,
                 multipart_threshold: int, part_size: int, cancelled: Callable[[], bool]) -> None:
        self.source, self.dest, self.server = source, dest, server
        self.threshold, self.part_size, self.cancelled = multipart_threshold, part_size, cancelled

    def copy(self, src: ObjectInfo) -> None:
        if self.server is None:
            self._stream(src.key)
            return
        if not is_multipart_etag(src.etag) and src.size < self.threshold:
            # CopyObject keeps the MD5 ETag and the metadata: nothing to record.
            self.server.copy_from(self.source, src.key, size=src.size, cancelled=self.cancelled)
            return
        # The new ETag will not equal the source's: record the source's, and copy
        # only the version it names.
        info = self.source.head(src.key)
        self.server.copy_from(
            self.source, src.key, size=info.size, content_type=info.content_type,
            metadata={**info.metadata, SOURCE_ETAG: info.etag}, source_etag=info.etag,
            multipart_threshold=self.threshold, part_size=self.part_size, cancelled=self.cancelled)

    def _stream(self, key: str) -> None:
        info, body = self.source.open_object(key)
        try:
            self.dest.upload_stream(key, body, part_size=self.part_size, cancelled=self.cancelled,
                                    content_type=info.content_type,
                                    metadata={**info.metadata, SOURCE_ETAG: info.etag})
        finally:
            body.close()


def sync_bucket(
    source: ObjectStore,
    dest: ObjectStore,
    *,
    concurrency: int = 16,
    multipart_threshold: int = MAX_COPY_OBJECT_SIZE,
    part_size: int = 8 * 1024 * 1024,
    scope: CancelScope | None = None,
    log=None,
    progress=None,
) -> SyncReport:
    """Copy every media object of `source` missing in or different from `dest`.

    An object that fails is recorded in the report's `failures` and the others
    go on (the step turns failures into a SyncError). Raises StorageError when a
    listing fails, and JobAbortedError when `scope` is cancelled (checked
    between objects; copies in flight abort their multipart uploads).
    """
    scope = scope or CancelScope()
    server = source.copier_for(dest)
    copier = _Copier(source, dest, server, multipart_threshold, part_size, lambda: scope.cancelled)
    report = SyncReport(source.bucket, dest.bucket, "server-side" if server else "streamed", progress=progress)
    started = time.monotonic()
    if log is not None:
        log.info("media_sync.started", source=source.bucket, dest=dest.bucket, mode=report.mode,
                 concurrency=concurrency)
    slots = threading.BoundedSemaphore(concurrency * 2)  # queued + running work, whatever the bucket size
    stop = threading.Event()

    def work(action: str, src: ObjectInfo, dst: ObjectInfo | None) -> None:
        try:
            if scope.cancelled:
                return
            if action == CHECK:
                with report.lock:
                    report.checked += 1
                if same_content(src, dest.head(src.key)) or same_content(source.head(src.key), dst):
                    report.add(SKIP, src.size)
                    return
            copier.copy(src)
            report.add(COPY, src.size)
        except ServiceError as exc:
            if not scope.cancelled:
                report.add("failed", src.size, src.key, exc.message)
                if log is not None:
                    log.error("media_sync.object_failed", key=src.key, error=exc.message, detail=exc.detail)
        except Exception as exc:  # noqa: BLE001 - one object's fault must not stop the rest
            report.add("failed", src.size, src.key, f"{type(exc).__name__}: {exc}")
            if log is not None:
                log.exception("media_sync.object_failed", key=src.key)
        finally:
            slots.release()

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sync") as pool:
            merged = merge_listings(_prefetch(list_media_by_folder(source, stop), stop),
                                    _prefetch(list_media_by_folder(dest, stop), stop))
            for _key, src, dst in merged:
                if scope.cancelled:
                    break
                action = plan_object(src, dst)
                if src is None:
                    continue
                if action == SKIP:
                    report.add(SKIP, src.size)
                    continue
                slots.acquire()
                pool.submit(work, action, src, dst)
    finally:
        stop.set()
        report.seconds = round(time.monotonic() - started, 3)
    scope.check()
    if log is not None:
        log.info("media_sync.finished", **report.figures())
    return report


def _run(ctx, source: ObjectStore, dest: ObjectStore) -> dict:
    """The step: sync, log the figures, fail after the fact for failed objects."""
    settings = ctx.config.settings
    ctx.progress.expect(unit="objects")  # the total is unknown: both listings are read as the copy goes
    report = sync_bucket(source, dest, concurrency=settings.sync_concurrency, part_size=settings.min_part_size,
                         scope=ctx.scope, log=ctx.log, progress=ctx.progress)
    figures = report.figures()
    if report.failures:
        ctx.figures_on_failure = figures
        keys = sorted(report.failures)
        named = "\n".join(f"{k}: {report.failures[k]}" for k in keys[:MAX_NAMED_FAILURES])
        more = len(keys) - MAX_NAMED_FAILURES
        raise SyncError(
            f"{len(keys)} object(s) could not be copied from s3://{source.bucket} to s3://{dest.bucket}: "
            + ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else ""),
            detail=named + (f"\n... and {more} more (see media_sync.object_failed events)" if more > 0 else ""),
            hint=f"the other {report.copied + report.skipped} object(s) are in place; "
            "run media_sync again to retry the failed ones",
        )
    return figures


def sync_media(ctx) -> dict:
    """Step `media_sync`: copy new and changed media from fac-private-s3 into the backups bucket."""
    return _run(ctx, ctx.media_store(), ctx.backups_store())


def sync_media_back(ctx) -> dict:
    """Step `media_restore`: copy media from the backups bucket back into fac-private-s3."""
    return _run(ctx, ctx.backups_store(), ctx.media_store())
