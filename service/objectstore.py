"""The ObjectStore contract: what every bucket implementation promises, and the
logic written once on top of it.

`upload_stream` is written once, on top of four multipart primitives, so the
fake and S3 share the logic that matters: memory bounded to a few parts, a
sha256 of what was written, and an aborted upload on any failure or cancel.
This module imports no vendor library; `service.storage` holds the S3
implementation (the only boto3 user) and re-exports everything here.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

from service.errors import JobAbortedError, ServiceError, StorageError
from service.progress import activity_of

MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
# CopyObject copies at most 5 GB in one request; above that a copy goes part by part.
MAX_COPY_OBJECT_SIZE = 5 * 1000 * 1000 * 1000


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as a listing shows it."""

    key: str
    size: int
    etag: str = ""
    last_modified: datetime | None = None
    # Only `head` and `open_object` fill these; a listing does not carry them.
    content_type: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class UploadResult:
    """What `upload_stream` wrote: size and sha256 of the exact bytes."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class OpenUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime | None


@dataclass(frozen=True)
class ExpiryRule:
    """One enabled lifecycle rule of a bucket that deletes current objects `days` after they
    were written. `prefix` "" means every key; a rule limited to tagged objects never
    touches ours (we write no tags) and is not listed."""

    rule_id: str
    days: int
    prefix: str = ""

    def covers(self, key: str) -> bool:
        """True when the rule applies to `key` (or, for a folder ending in '/', to some keys under it)."""
        return key.startswith(self.prefix) or (key.endswith("/") and self.prefix.startswith(key))


def parse_expiry_rules(rules: list[dict]) -> list[ExpiryRule]:
    """The expiring rules of a GetBucketLifecycleConfiguration `Rules` list (S3's own shape)."""
    found = []
    for rule in rules or []:
        days = (rule.get("Expiration") or {}).get("Days")
        if rule.get("Status") != "Enabled" or not days:
            continue
        where = rule.get("Filter") or {}
        where = where.get("And", where)
        if where.get("Tag") or where.get("Tags"):
            continue
        prefix = where.get("Prefix", rule.get("Prefix", "")) or ""
        found.append(ExpiryRule(str(rule.get("ID") or "(no id)"), int(days), prefix))
    return found


def choose_part_size(expected_bytes: int, minimum: int = 8 * 1024 * 1024) -> int:
    """A part size that fits `expected_bytes` twice over inside 10,000 parts.

    A pipe's final size is unknown, so we take a generous estimate (twice the
    table's size on disk) and round up to whole MiB.
    """
    mib = 1024 * 1024
    needed = -(-2 * max(expected_bytes, 0) // (MAX_PARTS - 100))
    size = max(minimum, MIN_PART_SIZE, needed)
    size = -(-size // mib) * mib
    return min(size, MAX_PART_SIZE)


def _read_full(reader: BinaryIO, size: int) -> bytes:
    """Read up to `size` bytes, looping over short reads; b'' only at end of stream."""
    chunks = []
    remaining = size
    while remaining > 0:
        chunk = reader.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class ObjectStore(ABC):
    """A bucket. Every method raises StorageError on failure; reads of a missing key
    raise ObjectNotFoundError."""

    bucket: str
    # The running job's tracker (service.progress), set by the JobContext that made this
    # store: upload_stream and streams.ObjectReader count the bytes they move into it.
    progress = None
    endpoint = "memory"  # where the bucket is served, for messages (an S3 store: its endpoint URL)

    def interrupt(self, reason: str = "interrupted") -> None:
        """Stop every request in flight at once and refuse new ones but a few seconds of clean-up
        (aborting uploads, deleting objects). For a cancel: a store that has nothing blocking
        has nothing to do."""
        return None

    @abstractmethod
    def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Write a whole object in one request, with an optional type and user metadata."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a whole (small) object."""

    @abstractmethod
    def open_stream(self, key: str) -> BinaryIO:
        """A file-like reader of the object's bytes, streamed (never staged on disk)."""

    @abstractmethod
    def open_object(self, key: str) -> tuple[ObjectInfo, BinaryIO]:
        """Like `open_stream`, with the object's size, ETag, content type and metadata."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size, ETag, content type and user metadata of one object."""

    @abstractmethod
    def list_objects(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        """Every object under `prefix` (and after `start_after`), in key order
        (code point order, which is S3's UTF-8 byte order), fetched page by page."""

    def copier_for(self, dest: ObjectStore) -> ObjectStore | None:
        """`dest`'s bucket reached with this store's credentials, ready for
        `copy_from(self, ...)`; None when they cannot reach it (copy by streaming)."""
        return None

    @abstractmethod
    def copy_from(
        self,
        source: ObjectStore,
        key: str,
        *,
        size: int,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        multipart_threshold: int = MAX_COPY_OBJECT_SIZE,
        part_size: int = 512 * 1024 * 1024,
        cancelled: Callable[[], bool] | None = None,
        source_etag: str | None = None,
        source_key: str | None = None,
    ) -> str:
        """Copy `source`'s object `key` (of `size` bytes) to the same key here, server-side;
        with `source_key`, copy that object of `source` into `key` instead.

        `self` must come from `source.copier_for(...)`. Without `metadata` the
        source's type and metadata are copied as they are; with it they are
        replaced by `content_type` and `metadata`. From `multipart_threshold`
        bytes on, the copy goes part by part (UploadPartCopy); a failed or
        cancelled multipart copy is aborted. With `source_etag` the copy fails
        (StorageError) if the source no longer has that ETag. Returns the new
        object's ETag.
        """

    @abstractmethod
    def list_prefixes(self, prefix: str) -> list[str]:
        """The 'folders' directly under `prefix` (delimiter '/'), each ending in '/'."""

    @abstractmethod
    def list_level(self, prefix: str = "") -> Iterator[ObjectInfo | str]:
        """One level under `prefix` in key order: its objects (ObjectInfo) and its
        folders (str ending in '/'), each folder standing for every key under it."""

    @abstractmethod
    def delete_objects(self, keys: Iterable[str]) -> None:
        """Delete the given keys; missing keys are not an error."""

    @abstractmethod
    def read_expiry_rules(self) -> list[ExpiryRule]:
        """The bucket's enabled lifecycle rules that expire objects after some days ([] when
        it has no lifecycle configuration). Raises AccessDeniedError when the credentials may
        not read the configuration (cloud.gov manages it), StorageError otherwise."""

    @abstractmethod
    def list_open_uploads(self, prefix: str = "") -> list[OpenUpload]:
        """Multipart uploads under `prefix` that are still open."""

    @abstractmethod
    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload; an unknown upload is not an error."""

    @abstractmethod
    def _begin_upload(self, key: str, **extra) -> str: ...

    @abstractmethod
    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict: ...

    @abstractmethod
    def _complete_upload(self, key: str, upload_id: str, parts: list[dict]) -> None: ...

    def upload_stream(
        self,
        key: str,
        reader: BinaryIO,
        *,
        part_size: int = 8 * 1024 * 1024,
        cancelled: Callable[[], bool] | None = None,
        before_complete: Callable[[], None] | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> UploadResult:
        """Stream `reader` into `key`; one PUT when it fits in a part, else multipart.

        At most three parts are in memory: one being read, one queued, one being
        sent. On any exception (including a cancel) the multipart upload is
        aborted before the exception propagates, so no open upload is left.
        `before_complete` runs after the end of the stream and before the object
        becomes visible: it checks the producer's exit status, so a producer that
        died halfway never leaves a truncated object. `content_type` and
        `metadata` are stored with the object.
        """
        # Passed only when given, so a store written against the older
        # two-argument primitives keeps working.
        extra = {k: v for k, v in (("content_type", content_type), ("metadata", metadata)) if v}
        with self._activity(f"upload of s3://{self.bucket}/{key} to {self.endpoint}") as activity:
            return self._upload_stream(key, reader, part_size, cancelled, before_complete, extra, activity)

    def _activity(self, what: str):
        """The run's record of a transfer in flight (nothing when no run tracks this store)."""
        return activity_of(self.progress, what)

    def _upload_stream(self, key, reader, part_size, cancelled, before_complete, extra, activity) -> UploadResult:
        count = activity.moved if activity is not None else self._count
        digest = hashlib.sha256()
        first = _read_full(reader, part_size)
        if len(first) < part_size:
            self._check_cancel(cancelled)
            if before_complete:
                before_complete()
            self.put_bytes(key, first, **extra)
            count(len(first))
            return UploadResult(key, len(first), hashlib.sha256(first).hexdigest())
        upload_id = self._begin_upload(key, **extra)
        chunks: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        reader_thread = threading.Thread(
            target=self._prefetch, args=(reader, part_size, chunks, stop), daemon=True
        )
        reader_thread.start()
        total = 0
        try:
            parts = []
            chunk: bytes | BaseException | None = first
            number = 1
            while chunk:
                if isinstance(chunk, BaseException):
                    raise chunk
                self._check_cancel(cancelled)
                if number > MAX_PARTS:
                    raise StorageError(
                        f"{key} needs more than {MAX_PARTS} parts of {part_size} bytes",
                        hint="raise FAC_BACKUP_MIN_PART_MIB so the largest table fits",
                    )
                digest.update(chunk)
                total += len(chunk)
                parts.append(self._upload_part(key, upload_id, number, chunk))
                count(len(chunk))
                number += 1
                chunk = chunks.get()
            self._check_cancel(cancelled)
            if before_complete:
                before_complete()
            self._complete_upload(key, upload_id, parts)
        except BaseException:
            stop.set()
            self._abort_quietly(key, upload_id)
            raise
        finally:
            stop.set()
            reader_thread.join(timeout=1)
        return UploadResult(key, total, digest.hexdigest())

    @staticmethod
    def _prefetch(reader: BinaryIO, size: int, chunks: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                data = _read_full(reader, size)
                while not stop.is_set():
                    try:
                        chunks.put(data, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if not data:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            chunks.put(exc)

    def _count(self, nbytes: int) -> None:
        if self.progress is not None:
            self.progress.add(nbytes)

    @staticmethod
    def _check_cancel(cancelled: Callable[[], bool] | None) -> None:
        if cancelled is not None and cancelled():
            raise JobAbortedError("the upload was cancelled")

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            self.abort_upload(key, upload_id)
        except ServiceError:
            pass  # swept at the next start (see sweep in tasks.backup); an interrupt may refuse it too

