"""The media sync's decisions and bounds, on in-memory buckets: what is copied, skipped, left alone."""

from __future__ import annotations

import threading
import time

import pytest

from service.commands import CancelScope
from service.errors import JobAbortedError, StorageError
from service.storage import MemoryObjectStore, ObjectInfo
from service.tasks import sync
from service.tasks.sync_plan import CHECK, COPY, SKIP, SOURCE_ETAG, merge_listings, plan_object, same_content


def info(key: str, size: int = 1, etag: str = "e", **metadata: str) -> ObjectInfo:
    return ObjectInfo(key, size, etag, metadata=metadata)


def buckets(reachable: bool = True) -> tuple[MemoryObjectStore, MemoryObjectStore]:
    dest = MemoryObjectStore("dest")
    return MemoryObjectStore("source", reachable=("dest",) if reachable else ()), dest


def test_merge_walks_two_sorted_listings_together():
    """Keys of both listings come once each, in order, paired when both sides have them."""
    merged = list(merge_listings(iter([info("a"), info("c"), info("d")]), iter([info("b"), info("c")])))
    assert [(k, s is not None, d is not None) for k, s, d in merged] == [
        ("a", True, False), ("b", False, True), ("c", True, True), ("d", True, False)]


def test_plan_copies_missing_resized_and_changed_skips_equal_checks_multipart_etags():
    """Missing, resized or another MD5: copy; same ETag: skip; a multipart ETag: check; dest only: skip."""
    assert plan_object(info("k"), None) == COPY
    assert plan_object(info("k", 2), info("k", 3)) == COPY
    assert plan_object(info("k", 2, "x"), info("k", 2, "x")) == SKIP
    assert plan_object(info("k", 2, "x"), info("k", 2, "y")) == COPY
    assert plan_object(info("k", 2, "x"), info("k", 2, "y-2")) == CHECK
    assert plan_object(info("k", 2, "x-3"), info("k", 2, "y")) == CHECK
    assert plan_object(None, info("k")) == SKIP


def test_same_content_trusts_only_an_etag_recorded_of_the_other_side():
    """A recorded source ETag makes a multipart copy equal; a stale or absent one does not."""
    assert same_content(info("k", 5, "abc"), info("k", 5, "def-2", **{SOURCE_ETAG: "abc"}))
    assert same_content(info("k", 5, "def-2", **{SOURCE_ETAG: "abc"}), info("k", 5, "abc"))
    assert not same_content(info("k", 5, "new"), info("k", 5, "def-2", **{SOURCE_ETAG: "abc"}))
    assert not same_content(info("k", 5, "abc"), info("k", 5, "def"))
    assert not same_content(info("k", 5, "abc"), info("k", 6, "x-2", **{SOURCE_ETAG: "abc"}))


def test_list_media_skips_the_backups_prefix_only():
    """Everything but `backups/...` is media, including look-alikes such as `backups0` and `backups`."""
    store = MemoryObjectStore()
    for key in ("a.pdf", "backups", "backups/x/public-t.dump", "backups/~odd", "backups0", "backupsz/y", "z"):
        store.put_bytes(key, b"1")
    assert [o.key for o in sync.list_media(store)] == ["a.pdf", "backups", "backups0", "backupsz/y", "z"]


def test_the_parallel_folder_listing_gives_the_same_objects_in_the_same_order():
    """Listing top-level folders in parallel changes nothing in what is listed, or its order."""
    store = MemoryObjectStore()
    keys = ["a", "a/1", "a/2/3", "a.b", "a0", "backups", "backups/x.dump", "backups0/y", "b/" + "c/" * 9 + "d",
            *(f"f{i}/k{j}" for i in range(7) for j in range(3)), "é/1", "z"]
    for key in keys:
        store.put_bytes(key, b"1")
    fast = [o.key for o in sync.list_media_by_folder(store, threading.Event())]
    assert fast == [o.key for o in sync.list_media(store)]
    assert "backups/x.dump" not in fast and "backups0/y" in fast


def test_sync_copies_missing_and_changed_skips_equal_never_deletes():
    """A same-size change is copied; equal objects are skipped; destination-only keys stay."""
    source, dest = buckets()
    source.put_bytes("same.pdf", b"aaaa")
    source.put_bytes("changed.pdf", b"new!")
    source.put_bytes("new é.pdf", b"n")
    dest.put_bytes("same.pdf", b"aaaa")
    dest.put_bytes("changed.pdf", b"old!")
    dest.put_bytes("deleted-in-source.pdf", b"keep")
    report = sync.sync_bucket(source, dest, concurrency=2)
    assert dest.objects == {"same.pdf": b"aaaa", "changed.pdf": b"new!", "new é.pdf": b"n",
                            "deleted-in-source.pdf": b"keep"}
    assert (report.copied, report.copied_bytes, report.skipped, report.failures) == (2, 5, 1, {})
    assert report.mode == "server-side"


def test_sync_leaves_backups_prefix_alone_in_both_directions():
    """Dumps are neither read from the source nor written or overwritten in the destination."""
    source, dest = buckets()
    source.put_bytes("backups/x/public-t.dump", b"source dump")
    source.put_bytes("m.pdf", b"m")
    dest.put_bytes("backups/x/public-t.dump", b"dest dump")
    sync.sync_bucket(source, dest)
    sync.sync_bucket(dest, source)
    assert dest.objects["backups/x/public-t.dump"] == b"dest dump"
    assert source.objects["backups/x/public-t.dump"] == b"source dump"
    assert dest.objects["m.pdf"] == b"m"


def test_sync_streams_without_shared_credentials_and_records_the_source_etag():
    """Unreachable buckets are copied by streaming, keeping type and metadata plus the source ETag."""
    source, dest = buckets(reachable=False)
    source.put_bytes("s.pdf", b"streamed", content_type="application/pdf", metadata={"a": "1"})
    report = sync.sync_bucket(source, dest)
    head = dest.head("s.pdf")
    assert (report.mode, report.copied, dest.objects["s.pdf"]) == ("streamed", 1, b"streamed")
    assert dict(head.metadata) == {"a": "1", SOURCE_ETAG: source.head("s.pdf").etag}
    assert head.content_type == "application/pdf"


class FailsOn(MemoryObjectStore):
    """A destination whose copies of one key fail as S3 would after its retries."""

    def __init__(self, bucket: str, bad: str) -> None:
        super().__init__(bucket)
        self.bad = bad

    def copy_from(self, source, key, **kwargs):
        if key == self.bad:
            raise StorageError(f"S3 COPY of s3://{self.bucket}/{key} failed", detail="500: injected")
        return super().copy_from(source, key, **kwargs)


def test_one_failed_object_is_reported_after_the_others_are_copied():
    """A failing key is named in the report; every other object is still copied."""
    source, dest = MemoryObjectStore("source", reachable=("dest",)), FailsOn("dest", "b.pdf")
    for key in ("a.pdf", "b.pdf", "c.pdf"):
        source.put_bytes(key, key.encode())
    report = sync.sync_bucket(source, dest, concurrency=1)
    assert sorted(dest.objects) == ["a.pdf", "c.pdf"]
    assert list(report.failures) == ["b.pdf"] and "failed" in report.failures["b.pdf"]
    assert report.failed_bytes == 5


def test_a_cancelled_sync_stops_between_objects():
    """After a cancel no further object is copied and the sync raises JobAbortedError."""
    source, dest = buckets()
    for i in range(50):
        source.put_bytes(f"k{i:02d}", b"x")
    scope = CancelScope()
    scope.cancel("SIGTERM")
    with pytest.raises(JobAbortedError):
        sync.sync_bucket(source, dest, scope=scope)
    assert dest.objects == {}


class EndlessSource(MemoryObjectStore):
    """A bucket of `count` synthetic objects, counting how far its listing was read."""

    def __init__(self, count: int) -> None:
        super().__init__("source", reachable=("dest",))
        self.count, self.listed = count, 0

    def list_level(self, prefix=""):
        yield from ("a/", "b/")

    def list_objects(self, prefix="", *, start_after=""):
        for folder in ("a/", "b/"):
            for i in range(self.count // 2):
                key = f"{folder}{i:07d}"
                if key > start_after and key.startswith(prefix):
                    self.listed += 1
                    yield ObjectInfo(key, 1, "e")


class BlockingDest(MemoryObjectStore):
    """A destination whose copies wait for a gate, counting the copies running at once."""

    def __init__(self) -> None:
        super().__init__("dest")
        self.gate, self.running, self.peak, self.started = threading.Event(), 0, 0, threading.Semaphore(0)
        self.count_lock = threading.Lock()

    def copy_from(self, source, key, **kwargs):
        with self.count_lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        self.started.release()
        self.gate.wait(10)
        with self.count_lock:
            self.running -= 1
        return "e"


def test_memory_is_bounded_whatever_the_object_count():
    """While copies are stuck, the listing is read only a bounded distance ahead of the work."""
    source, dest = EndlessSource(20_000), BlockingDest()
    result = {}
    runner = threading.Thread(target=lambda: result.update(r=sync.sync_bucket(source, dest, concurrency=4)))
    runner.start()
    for _ in range(4):
        assert dest.started.acquire(timeout=10)
    settled, deadline = threading.Event(), time.monotonic() + 10
    before = -1
    while source.listed != before and time.monotonic() < deadline:  # until the listing is held back
        before = source.listed
        settled.wait(0.3)
    # each listing thread holds at most LISTING_QUEUE objects: one per folder and one per bucket
    assert source.listed <= (sync.FOLDERS_AHEAD + 1) * sync.LISTING_QUEUE + 4 * 2 + 10
    assert dest.peak == 4
    dest.gate.set()
    runner.join(60)
    assert result["r"].copied == 20_000 and dest.peak == 4
