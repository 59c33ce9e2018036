"""The ObjectStore contract, run against the in-memory fake and against S3 on the moto server.

Every test receives `stores`, a factory of stores over fresh buckets of one
implementation: what passes for MemoryObjectStore holds for S3ObjectStore.
"""

from __future__ import annotations

import hashlib
import io
import uuid

import pytest

from service.errors import AccessDeniedError, JobAbortedError, ObjectNotFoundError, StorageError
from service.storage import MIN_PART_SIZE, ExpiryRule, MemoryObjectStore, S3ObjectStore
from service.vcap import BucketBinding
from tests.fakes import access_denied

PART = MIN_PART_SIZE  # moto enforces S3's 5 MiB minimum part
ODD_KEYS = ("a file with spaces.pdf", "résumé/naïve café/Ünïcödé 报告.xlsx",
            "deep/" * 12 + "leaf.pdf", "plus+and%percent&amp.txt")


class MemoryFactory:
    """Fresh in-memory buckets; `reachable` buckets play additional_buckets."""

    def new(self, *reachable: str, bucket: str | None = None) -> MemoryObjectStore:
        return MemoryObjectStore(bucket or f"m-{uuid.uuid4().hex[:8]}", reachable=reachable)

    def bucket_name(self) -> str:
        return f"m-{uuid.uuid4().hex[:8]}"

    def open_uploads(self, store) -> list:
        return store.list_open_uploads()

    def set_lifecycle(self, store, rules: list[dict]) -> None:
        store.lifecycle_rules = rules

    def deny_lifecycle(self, store) -> None:
        store.lifecycle_denied = True


class S3Factory:
    """Fresh buckets on the moto server, each reached through a cloud.gov-like binding."""

    def __init__(self, server) -> None:
        self.server = server

    def bucket_name(self) -> str:
        return self.server.create_bucket()

    def new(self, *reachable: str, bucket: str | None = None) -> S3ObjectStore:
        name = bucket or self.server.create_bucket()
        key_id, secret = self.server.bucket_key((name, *reachable))  # rights on these buckets only
        return S3ObjectStore(BucketBinding("test", name, "us-gov-west-1", self.server.endpoint_url,
                                           key_id, secret, tuple(reachable)))

    def open_uploads(self, store) -> list:
        return self.server.client().list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])

    def set_lifecycle(self, store, rules: list[dict]) -> None:
        self.server.client().put_bucket_lifecycle_configuration(
            Bucket=store.bucket, LifecycleConfiguration={"Rules": rules})

    def deny_lifecycle(self, store) -> None:
        """What cloud.gov's brokered credentials get: 403 on the bucket's lifecycle rules."""
        def forbid(request, **_):
            if "lifecycle" in request.url:
                return access_denied(request.url)
        store.client.meta.events.register("before-send.s3.GetBucketLifecycleConfiguration", forbid)


@pytest.fixture(params=["memory", "s3"])
def stores(request):
    if request.param == "memory":
        return MemoryFactory()
    return S3Factory(request.getfixturevalue("s3_server"))


def pair(stores):
    """A source whose credentials reach a destination (server-side copy possible)."""
    dest_name = stores.bucket_name()
    return stores.new(dest_name), stores.new(bucket=dest_name)


class FailingReader(io.RawIOBase):
    """Yields `good` bytes, then raises as a dying producer would."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            raise OSError("producer died")
        n = min(len(buffer), self.left)
        buffer[:n] = b"x" * n
        self.left -= n
        return n


def test_put_get_round_trips_odd_keys_type_and_metadata(stores):
    """Keys with spaces, non-ASCII letters and deep prefixes keep their bytes, type and metadata."""
    store = stores.new()
    for i, key in enumerate(ODD_KEYS):
        store.put_bytes(key, f"body {i}".encode(), content_type="application/pdf", metadata={"origin": f"n{i}"})
    for i, key in enumerate(ODD_KEYS):
        assert store.get_bytes(key) == f"body {i}".encode()
        info = store.head(key)
        assert (info.size, info.content_type, dict(info.metadata)) == (len(f"body {i}"), "application/pdf",
                                                                       {"origin": f"n{i}"})
    assert [o.key for o in store.list_objects()] == sorted(ODD_KEYS)


def test_reads_of_a_missing_key_raise_object_not_found(stores):
    """get, head, open_stream and open_object of a missing key raise ObjectNotFoundError."""
    store = stores.new()
    for read in (store.get_bytes, store.head, store.open_stream, store.open_object):
        with pytest.raises(ObjectNotFoundError):
            read("missing.pdf")


def test_etag_is_the_md5_of_a_single_request_write_in_listing_and_head(stores):
    """A whole-object write has the MD5 of its bytes as ETag, in the listing and in HEAD."""
    store = stores.new()
    store.put_bytes("a.pdf", b"same bytes")
    store.put_bytes("b.pdf", b"same bytes")
    md5 = hashlib.md5(b"same bytes").hexdigest()  # noqa: S324
    assert [o.etag for o in store.list_objects()] == [md5, md5]
    assert store.head("a.pdf").etag == md5


def test_list_objects_is_in_code_point_order_with_prefix_and_start_after(stores):
    """Listings come in code point order (S3's UTF-8 order); prefix filters, start_after excludes."""
    store = stores.new()
    keys = ["b", "a/2", "a/1", "Z", "é", "backups/x", "backups0", "backups/~"]
    for key in keys:
        store.put_bytes(key, b"1")
    assert [o.key for o in store.list_objects()] == sorted(keys)
    assert [o.key for o in store.list_objects("a/")] == ["a/1", "a/2"]
    assert [o.key for o in store.list_objects(start_after="backups/~")] == ["backups0", "é"]


def test_list_objects_pages_through_more_than_a_thousand_objects(stores):
    """Listings are not cut at one page."""
    store = stores.new()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put_bytes(f"k/{i:05d}", b""), range(1003)))
    assert [o.key for o in store.list_objects("k/")] == [f"k/{i:05d}" for i in range(1003)]


def test_list_prefixes_and_delete_objects(stores):
    """list_prefixes names the folders under a prefix; deleting missing keys is not an error."""
    store = stores.new()
    for key in ("backups/a/1", "backups/a/2", "backups/b/1", "backups/top"):
        store.put_bytes(key, b"1")
    assert store.list_prefixes("backups/") == ["backups/a/", "backups/b/"]
    store.delete_objects(["backups/a/1", "backups/a/2", "never-there"])
    assert [o.key for o in store.list_objects()] == ["backups/b/1", "backups/top"]


def test_list_level_gives_objects_and_folders_of_one_level_in_key_order(stores):
    """list_level interleaves a level's objects and folders ('/'-terminated) in key order."""
    store = stores.new()
    for key in ("a/1", "a/2/3", "a.b", "a0", "b", "c d/é", "top/x/y"):
        store.put_bytes(key, b"12")
    level = [i if isinstance(i, str) else (i.key, i.size) for i in store.list_level("")]
    assert level == [("a.b", 2), "a/", ("a0", 2), ("b", 2), "c d/", "top/"]
    assert [i if isinstance(i, str) else i.key for i in store.list_level("a/")] == ["a/1", "a/2/"]


def test_open_object_streams_bytes_with_size_etag_and_metadata(stores):
    """open_object gives the object's attributes and a reader of its bytes."""
    store = stores.new()
    store.put_bytes("r é.pdf", b"0123456789", content_type="application/pdf", metadata={"k": "v"})
    info, body = store.open_object("r é.pdf")
    try:
        assert body.read() == b"0123456789"
    finally:
        body.close()
    assert (info.size, info.etag, info.content_type, dict(info.metadata)) == (
        10, hashlib.md5(b"0123456789").hexdigest(), "application/pdf", {"k": "v"})  # noqa: S324


def test_upload_stream_below_part_size_is_one_write_with_its_sha256(stores):
    """A stream smaller than a part is written whole; the result gives its size and sha256."""
    store = stores.new()
    result = store.upload_stream("small.bin", io.BytesIO(b"abc"), part_size=PART)
    assert (result.size, result.sha256) == (3, hashlib.sha256(b"abc").hexdigest())
    assert store.get_bytes("small.bin") == b"abc"
    assert stores.open_uploads(store) == []


def test_upload_stream_above_part_size_goes_multipart_and_keeps_metadata(stores):
    """A stream over a part is uploaded in parts: exact bytes, sha256, type and metadata, no open upload."""
    store = stores.new()
    data = bytes(range(256)) * (2 * PART // 256 + 77)
    result = store.upload_stream("big é.bin", io.BytesIO(data), part_size=PART,
                                 content_type="application/pdf", metadata={"fac-source-etag": "x"})
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert store.get_bytes("big é.bin") == data
    info = store.head("big é.bin")
    assert (info.content_type, dict(info.metadata)) == ("application/pdf", {"fac-source-etag": "x"})
    assert stores.open_uploads(store) == []


def test_upload_stream_reader_failure_aborts_the_upload(stores):
    """A producer dying after two parts leaves neither an object nor an open upload."""
    store = stores.new()
    with pytest.raises(OSError, match="producer died"):
        store.upload_stream("dies.bin", io.BufferedReader(FailingReader(2 * PART + 10)), part_size=PART)
    assert list(store.list_objects()) == []
    assert stores.open_uploads(store) == []


def test_upload_stream_cancel_aborts_the_upload(stores):
    """A cancel between parts raises JobAbortedError and leaves no object and no open upload."""
    store = stores.new()
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(JobAbortedError):
        store.upload_stream("cancel.bin", io.BytesIO(b"y" * (3 * PART)), part_size=PART, cancelled=cancelled)
    assert list(store.list_objects()) == []
    assert stores.open_uploads(store) == []


@pytest.mark.parametrize("size", [10, 2 * PART + 1])
def test_upload_stream_before_complete_raising_aborts(stores, size):
    """When the producer's exit check fails, nothing becomes visible and no upload stays open."""
    store = stores.new()

    def before_complete() -> None:
        raise StorageError("producer exited with status 1")

    with pytest.raises(StorageError, match="status 1"):
        store.upload_stream("checked.bin", io.BytesIO(b"z" * size), part_size=PART,
                            before_complete=before_complete)
    assert list(store.list_objects()) == []
    assert stores.open_uploads(store) == []


def test_copier_for_needs_credentials_that_reach_the_destination(stores):
    """copier_for gives a store only when the source's credentials reach the destination bucket."""
    source, dest = pair(stores)
    assert source.copier_for(dest) is not None
    assert stores.new().copier_for(dest) is None


def test_copy_from_copies_bytes_type_and_metadata_server_side(stores):
    """A plain server-side copy keeps the key, bytes, ETag, type and metadata."""
    source, dest = pair(stores)
    key = ODD_KEYS[1]
    source.put_bytes(key, b"report", content_type="application/pdf", metadata={"a": "1"})
    etag = source.copier_for(dest).copy_from(source, key, size=6)
    info = dest.head(key)
    assert dest.get_bytes(key) == b"report"
    assert (info.etag, etag, info.content_type, dict(info.metadata)) == (
        source.head(key).etag, info.etag, "application/pdf", {"a": "1"})


def test_copy_from_with_metadata_replaces_it(stores):
    """Given metadata, a copy stores that metadata and type instead of the source's."""
    source, dest = pair(stores)
    source.put_bytes("k.pdf", b"report", content_type="application/pdf", metadata={"a": "1"})
    source.copier_for(dest).copy_from(source, "k.pdf", size=6, content_type="application/pdf",
                                      metadata={"a": "1", "fac-source-etag": "abc"})
    assert dict(dest.head("k.pdf").metadata) == {"a": "1", "fac-source-etag": "abc"}


def test_copy_from_above_the_threshold_copies_part_by_part(stores):
    """From the multipart threshold on, the copy goes by parts: exact bytes and metadata, no open upload."""
    source, dest = pair(stores)
    data = bytes(range(256)) * (PART // 256 + 5000)
    source.put_bytes("large é.bin", data, content_type="application/pdf", metadata={"a": "1"})
    source.copier_for(dest).copy_from(source, "large é.bin", size=len(data), multipart_threshold=PART,
                                      part_size=PART)
    assert dest.get_bytes("large é.bin") == data
    info = dest.head("large é.bin")
    assert (info.content_type, dict(info.metadata)) == ("application/pdf", {"a": "1"})
    assert stores.open_uploads(dest) == []


@pytest.mark.parametrize("threshold", [None, PART], ids=["copy-object", "by-parts"])
def test_copy_from_a_source_key_into_another_key_within_one_bucket(stores, threshold):
    """With source_key, an object is copied under another key of the same bucket (how replaced
    media is kept): exact bytes, type and metadata, the source untouched, If-Match honoured."""
    store = stores.new()
    data = bytes(range(256)) * (PART // 256 + 100)
    store.put_bytes(ODD_KEYS[1], data, content_type="application/pdf", metadata={"a": "1"})
    etag = store.head(ODD_KEYS[1]).etag
    kept = "backups/media-versions/" + ODD_KEYS[1] + "/20260101T000000.000000Z_20260101T000000Z"
    extra = {"multipart_threshold": threshold, "part_size": PART} if threshold else {}
    store.copier_for(store).copy_from(store, kept, source_key=ODD_KEYS[1], size=len(data), source_etag=etag,
                                      **extra)
    info = store.head(kept)
    assert store.get_bytes(kept) == data and store.get_bytes(ODD_KEYS[1]) == data
    assert (info.content_type, dict(info.metadata)) == ("application/pdf", {"a": "1"})
    if threshold or isinstance(store, MemoryObjectStore):
        # moto 5.2 ignores x-amz-copy-source-if-match on CopyObject (S3 answers 412); a copy by
        # parts checks the ETag with its HEAD first, which moto does honour.
        with pytest.raises(StorageError):
            store.copier_for(store).copy_from(store, kept + "-2", source_key=ODD_KEYS[1], size=len(data),
                                              source_etag="0" * 32, **extra)
    assert stores.open_uploads(store) == []


def test_copy_from_cancelled_raises_and_writes_nothing(stores):
    """A cancelled copy raises JobAbortedError and leaves no object and no open upload."""
    source, dest = pair(stores)
    data = b"q" * (PART + 100)
    source.put_bytes("c.bin", data)
    with pytest.raises(JobAbortedError):
        source.copier_for(dest).copy_from(source, "c.bin", size=len(data), multipart_threshold=PART,
                                          part_size=PART, cancelled=lambda: True)
    assert list(dest.list_objects()) == []
    assert stores.open_uploads(dest) == []


SIXTY_DAYS = {"ID": "cloud-gov-expiry", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 60}}


def test_a_bucket_without_lifecycle_rules_has_no_expiry(stores):
    """No lifecycle configuration at all is an empty list, not an error."""
    assert stores.new().read_expiry_rules() == []


def test_expiry_rules_are_read_with_their_prefix_and_days(stores):
    """Enabled expiring rules come back; disabled, tag-only and non-expiring ones do not."""
    store = stores.new()
    stores.set_lifecycle(store, [
        SIXTY_DAYS,
        {"ID": "dumps", "Status": "Enabled", "Filter": {"Prefix": "backups/"}, "Expiration": {"Days": 30}},
        {"ID": "off", "Status": "Disabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}},
        {"ID": "tagged", "Status": "Enabled", "Filter": {"Tag": {"Key": "tmp", "Value": "1"}},
         "Expiration": {"Days": 2}},
        {"ID": "uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}},
    ])
    rules = sorted(store.read_expiry_rules(), key=lambda r: r.rule_id)
    assert rules == [ExpiryRule("cloud-gov-expiry", 60, ""), ExpiryRule("dumps", 30, "backups/")]
    assert rules[0].covers("singleauditreport/1.pdf") and not rules[1].covers("excel/1.xlsx")


def test_a_denied_lifecycle_read_is_access_denied(stores):
    """Credentials that may not read the rules get AccessDeniedError (a StorageError), nothing else."""
    store = stores.new()
    stores.set_lifecycle(store, [SIXTY_DAYS])
    stores.deny_lifecycle(store)
    with pytest.raises(AccessDeniedError) as caught:
        store.read_expiry_rules()
    assert isinstance(caught.value, StorageError)
    assert "AccessDenied" in caught.value.detail
