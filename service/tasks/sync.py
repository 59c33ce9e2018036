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

Before a copy replaces an object of the backups bucket whose content differs,
the current copy is kept under `backups/media-versions/` (service.media_versions),
server-side, and only once that keep succeeded is the object replaced. A
restore of a backup (`s3_restore`) copies each key's content at that backup's
moment (a kept version or the mirror copy); `db_restore` copies the mirror.

Copies are server-side (CopyObject, or UploadPartCopy from
`multipart_threshold` bytes on) when the source binding's credentials reach the
destination bucket (cloud.gov's `additional_buckets`); otherwise each object
is streamed from one client into the other, never touching local disk. A failed
object is recorded and the others go on; the step then fails naming the keys.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from service import layout
from service.commands import CancelScope
from service.errors import ServiceError, SyncError
from service.finder import find_backup, resolution
from service.media_versions import MomentPlan, read_moment, write_media_state
from service.storage import MAX_COPY_OBJECT_SIZE, ObjectInfo, ObjectStore
from service.tasks.sync_copy import Copier, head_or_none
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
    kept: int = 0  # copies kept under backups/media-versions/ before being replaced
    kept_bytes: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    failed_bytes: int = 0
    dest_objects: int = 0  # what the destination holds once the run is over
    dest_bytes: int = 0
    seconds: float = 0.0
    plan: MomentPlan | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    progress: object = field(default=None, repr=False)  # the run's tracker (service.progress)

    def add(self, outcome: str, size: int, key: str = "", error: str = "", replaced: ObjectInfo | None = None) -> None:
        if self.progress is not None and outcome in (COPY, SKIP):  # a failure is not progress
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
                # Counted in dest_* as copied when planned: the old copy stays instead, or nothing.
                if replaced is None:
                    self.dest_objects, self.dest_bytes = self.dest_objects - 1, self.dest_bytes - size
                else:
                    self.dest_bytes += replaced.size - size

    def count_dest(self, size: int) -> None:
        with self.lock:
            self.dest_objects, self.dest_bytes = self.dest_objects + 1, self.dest_bytes + size

    def add_kept(self, size: int) -> None:
        with self.lock:
            self.kept, self.kept_bytes = self.kept + 1, self.kept_bytes + size

    def figures(self) -> dict:
        found = {"source": self.source, "dest": self.dest, "mode": self.mode, "copied": self.copied,
                 "copied_bytes": self.copied_bytes, "skipped": self.skipped, "skipped_bytes": self.skipped_bytes,
                 "checked": self.checked, "kept": self.kept, "kept_bytes": self.kept_bytes,
                 "failed": len(self.failures), "failed_bytes": self.failed_bytes,
                 "dest_objects": self.dest_objects, "dest_bytes": self.dest_bytes, "seconds": self.seconds}
        if self.plan is not None:
            found.update(backup_id=self.plan.moment.backup_id, moment=self.plan.moment.synced_at.isoformat(),
                         moment_from=self.plan.moment.source, from_versions=self.plan.from_versions,
                         from_versions_bytes=self.plan.from_versions_bytes, not_in_backup=self.plan.not_in_backup)
        return found


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


def sync_bucket(
    source: ObjectStore,
    dest: ObjectStore,
    *,
    concurrency: int = 16,
    multipart_threshold: int = MAX_COPY_OBJECT_SIZE,
    part_size: int = 8 * 1024 * 1024,
    scope: CancelScope | None = None,
    log=None,
    keep_versions: bool = False,
    plan: MomentPlan | None = None,
    clock: Callable[[], datetime] | None = None,
    progress=None,
    on_stop: Callable[[SyncReport], None] | None = None,
) -> SyncReport:
    """Copy every media object of `source` missing in or different from `dest`.

    With `keep_versions` (the backups bucket is `dest`), a copy that replaces
    different content is kept under backups/media-versions/ first. With `plan`
    (the backups bucket is `source`), each key's content is the one `plan`
    names for its backup's moment, and keys that came after it are left alone.
    An object that fails is recorded in the report's `failures` and the others
    go on (the step turns failures into a SyncError). Raises StorageError when a
    listing fails, and JobAbortedError when `scope` is cancelled (checked
    between objects; copies in flight abort their multipart uploads), after
    handing what was done so far to `on_stop`.
    """
    scope = scope or CancelScope()
    server = source.copier_for(dest)
    keeper = dest.copier_for(dest) if keep_versions else None
    if keep_versions and keeper is None:
        raise SyncError(f"cannot copy inside s3://{dest.bucket} server-side to keep replaced media",
                        hint="the backups binding's credentials must be allowed to copy within its bucket")
    copier = Copier(source, dest, server, multipart_threshold, part_size, lambda: scope.cancelled, keeper, clock)
    report = SyncReport(source.bucket, dest.bucket, "server-side" if server else "streamed", plan=plan,
                        progress=progress)
    started = time.monotonic()
    if log is not None:
        log.info("media_sync.started", source=source.bucket, dest=dest.bucket, mode=report.mode,
                 concurrency=concurrency, keep_versions=keep_versions,
                 **({"backup_id": plan.moment.backup_id, "moment": plan.moment.synced_at.isoformat(),
                     "versions_after_moment": len(plan.after)} if plan is not None else {}))
    slots = threading.BoundedSemaphore(concurrency * 2)  # queued + running work, whatever the bucket size
    stop = threading.Event()

    def work(action: str, src: ObjectInfo, dst: ObjectInfo | None, target: str) -> None:
        try:
            if scope.cancelled:
                return
            if action == CHECK:
                with report.lock:
                    report.checked += 1
                live = head_or_none(dest, target)
                if live is not None and (same_content(src, live) or (
                        dst is not None and same_content(source.head(src.key), dst))):
                    report.add(SKIP, src.size)
                    return
                dst = dst or live
            if keeper is not None and dst is not None:
                version_key = copier.keep(dst)
                report.add_kept(dst.size)
                if log is not None:
                    log.debug("media_sync.kept", key=dst.key, version=version_key, bytes=dst.size)
            copier.copy(src, target)
            report.add(COPY, src.size)
        except ServiceError as exc:
            if not scope.cancelled:
                report.add("failed", src.size, target, _cause(exc), replaced=dst)
                if log is not None:
                    log.error("media_sync.object_failed", key=target, error=exc.message, detail=exc.detail)
        except Exception as exc:  # noqa: BLE001 - one object's fault must not stop the rest
            report.add("failed", src.size, target, f"{type(exc).__name__}: {exc}", replaced=dst)
            if log is not None:
                log.exception("media_sync.object_failed", key=target)
        finally:
            slots.release()

    def submit(action: str, src: ObjectInfo, dst: ObjectInfo | None, target: str) -> None:
        slots.acquire()
        pool.submit(work, action, src, dst, target)

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sync") as pool:
            merged = merge_listings(_prefetch(list_media_by_folder(source, stop), stop),
                                    _prefetch(list_media_by_folder(dest, stop), stop))
            for key, src, dst in merged:
                if scope.cancelled:
                    break
                if plan is not None and src is not None:
                    src = plan.source_for(key, src)  # None: the key came after the backup's moment
                if src is None:
                    if dst is not None:
                        report.count_dest(dst.size)
                    continue
                report.count_dest(src.size)
                action = plan_object(src, dst)
                if action == SKIP:
                    report.add(SKIP, src.size)
                    continue
                submit(action, src, dst, key)
            for key, src in (plan.leftovers() if plan is not None else ()):
                if scope.cancelled:
                    break
                submit(CHECK, src, None, key)  # a key whose mirror copy is gone
    finally:
        stop.set()
        report.seconds = round(time.monotonic() - started, 3)
    if scope.cancelled and on_stop is not None:
        on_stop(report)
    scope.check()
    if log is not None:
        log.info("media_sync.finished", **report.figures())
    return report


def _run(ctx, source: ObjectStore, dest: ObjectStore, *, keep_versions: bool = False,
         plan: MomentPlan | None = None, backup_id: str | None = None) -> dict:
    """The step: sync, log the figures, record a backup's media moment, and fail after the
    fact for failed objects."""
    settings = ctx.config.settings
    ctx.progress.expect(unit="objects")  # the total is unknown: both listings are read as the copy goes
    report = sync_bucket(source, dest, concurrency=settings.sync_concurrency, part_size=settings.min_part_size,
                         scope=ctx.scope, log=ctx.log, keep_versions=keep_versions, plan=plan,
                         progress=ctx.progress, on_stop=lambda done: setattr(ctx, "figures_on_failure", done.figures()))
    figures = report.figures()
    if backup_id is not None:
        # Written even when objects failed: they keep their older content, which is
        # what the backup then holds for them; the moment is still exact for the rest.
        state = write_media_state(dest, backup_id, datetime.now(UTC), figures)
        figures["backup_id"], figures["moment"] = backup_id, state["synced_at"]
        ctx.log.info("media_sync.moment_recorded", backup_id=backup_id, moment=state["synced_at"],
                     objects=report.dest_objects, bytes=report.dest_bytes)
    if report.failures:
        ctx.figures_on_failure = figures
        keys = sorted(report.failures)
        named = "\n".join(f"{k}: {report.failures[k]}" for k in keys[:MAX_NAMED_FAILURES])
        more = len(keys) - MAX_NAMED_FAILURES
        raise SyncError(
            f"{len(keys)} object(s) could not be copied from s3://{source.bucket} to s3://{dest.bucket}"
            f" ({_commonest_cause(report.failures)}): " + ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else ""),
            detail=named + (f"\n... and {more} more (see media_sync.object_failed events)" if more > 0 else ""),
            hint=f"the other {report.copied + report.skipped} object(s) are in place; "
            "run media_sync again to retry the failed ones",
        )
    return figures


_URL_PATH = re.compile(r'(https?://[^/"\s]+)[^"\s]*')


def _cause(exc: ServiceError) -> str:
    """One object's failure and its cause, the endpoint named without the object's path
    ('S3 COPY of s3://b/k failed: ReadTimeoutError: Read timeout on endpoint URL: "https://host"')."""
    reason = _URL_PATH.sub(r"\1", exc.detail.strip().splitlines()[0]) if exc.detail.strip() else ""
    return f"{exc.message}: {reason}" if reason else exc.message


def _commonest_cause(failures: dict[str, str]) -> str:
    """What most failed objects failed of, without the object's own name ('N of them: <cause>')."""
    causes = Counter(error.split(": ", 1)[1] if ": " in error else error for error in failures.values())
    cause, count = causes.most_common(1)[0]
    return f"{count} of them: {cause}" if count < len(failures) else cause


def sync_media(ctx) -> dict:
    """Step `media_sync`: copy new and changed media from fac-private-s3 into the backups bucket,
    keeping each replaced copy; in a backup job, record the moment of that backup's media."""
    return _run(ctx, ctx.media_store(), ctx.backups_store(), keep_versions=True,
                backup_id=ctx.backup_id)


def sync_media_back(ctx) -> dict:
    """Step `media_restore`: copy media from the backups bucket back into fac-private-s3.

    After `s3_restore BACKUP_ID`, fac-private-s3 is first synced into the backups
    bucket as media_sync does (so whatever the restore replaces is kept, and the
    pre-restore backup records its media moment: restoring it undoes the media
    too); then each key gets its content at that backup's moment
    (service.media_versions). After `db_restore` (the snapshot has no moment in
    the bucket), the mirror's latest copy of every key. The job `media_restore
    BACKUP_ID` runs this step alone, as after `s3_restore BACKUP_ID`.
    """
    store = ctx.backups_store()
    found = ctx.restored  # what the s3_restore step restored (None after db_restore)
    if ctx.job == "media_restore":  # the step alone, e.g. after it failed in an s3_restore
        found = find_backup(store, ctx.args[0])
        if resolved := resolution(found, ctx.args[0]):
            ctx.log.warning("media_restore.id_resolved", **resolved)
    if found is None:
        return _run(ctx, store, ctx.media_store())
    ctx.log.info("media_restore.keeping_current_media", pre_restore_backup=ctx.backup_id or "")
    kept = _run(ctx, ctx.media_store(), store, keep_versions=True, backup_id=ctx.backup_id)
    plan = None
    if found.manifest is None:
        ctx.log.warning("media_restore.latest_copies", backup_id=found.id,
                        reason="a legacy backup records no moment: the latest copy of every key is restored")
    else:
        moment = read_moment(store, found.manifest)
        if moment.source != layout.MEDIA_STATE_NAME:
            ctx.log.warning("media_restore.moment_from_manifest", backup_id=found.id,
                            moment=moment.synced_at.isoformat(),
                            reason="the backup has no media record; its manifest's finished_at is used")
        plan = MomentPlan(moment).load(store)
    figures = _run(ctx, store, ctx.media_store(), plan=plan)
    figures.update(current_media_copied=kept["copied"], current_media_kept=kept["kept"])
    return figures
