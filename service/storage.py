"""The storage boundary: the ObjectStore contract, its S3 and in-memory implementations.

This is the only module that imports boto3/botocore. Vendor errors are
translated here (ClientError -> ObjectNotFoundError / StorageError), so nothing
outside catches botocore. `upload_stream` is written once, on top of four
multipart primitives, so the fake and S3 share the logic that matters: memory
bounded to a few parts, a sha256 of what was written, and an aborted upload on
any failure or cancel.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from service.errors import JobAbortedError, ObjectNotFoundError, StorageError
from service.vcap import BucketBinding

MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as a listing shows it."""

    key: str
    size: int
    etag: str = ""
    last_modified: datetime | None = None


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

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write a whole object in one request."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a whole (small) object."""

    @abstractmethod
    def open_stream(self, key: str) -> BinaryIO:
        """A file-like reader of the object's bytes, streamed (never staged on disk)."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and ETag of one object."""

    @abstractmethod
    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under `prefix`, in key order, fetched page by page."""

    @abstractmethod
    def list_prefixes(self, prefix: str) -> list[str]:
        """The 'folders' directly under `prefix` (delimiter '/'), each ending in '/'."""

    @abstractmethod
    def delete_objects(self, keys: Iterable[str]) -> None:
        """Delete the given keys; missing keys are not an error."""

    @abstractmethod
    def list_open_uploads(self, prefix: str = "") -> list[OpenUpload]:
        """Multipart uploads under `prefix` that are still open."""

    @abstractmethod
    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload; an unknown upload is not an error."""

    @abstractmethod
    def _begin_upload(self, key: str) -> str: ...

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
    ) -> UploadResult:
        """Stream `reader` into `key`; one PUT when it fits in a part, else multipart.

        At most three parts are in memory: one being read, one queued, one being
        sent. On any exception (including a cancel) the multipart upload is
        aborted before the exception propagates, so no open upload is left.
        `before_complete` runs after the end of the stream and before the object
        becomes visible: it checks the producer's exit status, so a producer that
        died halfway never leaves a truncated object.
        """
        digest = hashlib.sha256()
        first = _read_full(reader, part_size)
        if len(first) < part_size:
            self._check_cancel(cancelled)
            if before_complete:
                before_complete()
            self.put_bytes(key, first)
            return UploadResult(key, len(first), hashlib.sha256(first).hexdigest())
        upload_id = self._begin_upload(key)
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

    @staticmethod
    def _check_cancel(cancelled: Callable[[], bool] | None) -> None:
        if cancelled is not None and cancelled():
            raise JobAbortedError("the upload was cancelled")

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            self.abort_upload(key, upload_id)
        except StorageError:
            pass  # swept at the next start (see sweep in tasks.backup)


class MemoryObjectStore(ObjectStore):
    """The fake: a dict of key -> bytes, with the same contract as S3ObjectStore."""

    def __init__(self, bucket: str = "memory") -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, tuple[str, dict[int, bytes]]] = {}
        self._lock = threading.Lock()
        self._next = 0

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._lock:
            self.objects[key] = bytes(data)

    def get_bytes(self, key: str) -> bytes:
        with self._lock:
            if key not in self.objects:
                raise ObjectNotFoundError(f"{key} does not exist in bucket {self.bucket}")
            return self.objects[key]

    def open_stream(self, key: str) -> BinaryIO:
        import io

        return io.BytesIO(self.get_bytes(key))

    def head(self, key: str) -> ObjectInfo:
        data = self.get_bytes(key)
        return ObjectInfo(key, len(data), hashlib.md5(data).hexdigest())  # noqa: S324 - an ETag

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            items = sorted((k, v) for k, v in self.objects.items() if k.startswith(prefix))
        for key, data in items:
            yield ObjectInfo(key, len(data), hashlib.md5(data).hexdigest())  # noqa: S324

    def list_prefixes(self, prefix: str) -> list[str]:
        with self._lock:
            keys = [k for k in self.objects if k.startswith(prefix)]
        found = {prefix + k[len(prefix):].split("/", 1)[0] + "/" for k in keys if "/" in k[len(prefix):]}
        return sorted(found)

    def delete_objects(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self.objects.pop(key, None)

    def list_open_uploads(self, prefix: str = "") -> list[OpenUpload]:
        with self._lock:
            return [OpenUpload(k, uid, None) for uid, (k, _) in self.uploads.items() if k.startswith(prefix)]

    def abort_upload(self, key: str, upload_id: str) -> None:
        with self._lock:
            self.uploads.pop(upload_id, None)

    def _begin_upload(self, key: str) -> str:
        with self._lock:
            self._next += 1
            upload_id = f"upload-{self._next}"
            self.uploads[upload_id] = (key, {})
            return upload_id

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict:
        with self._lock:
            if upload_id not in self.uploads:
                raise StorageError(f"upload {upload_id} of {key} does not exist")
            self.uploads[upload_id][1][number] = bytes(data)
        return {"PartNumber": number}

    def _complete_upload(self, key: str, upload_id: str, parts: list[dict]) -> None:
        with self._lock:
            _, stored = self.uploads.pop(upload_id)
            self.objects[key] = b"".join(stored[p["PartNumber"]] for p in parts)


NOT_FOUND_CODES = ("404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload")


def _translate(exc: Exception, action: str, bucket: str, key: str = "") -> StorageError:
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = f"{code or status}: {error.get('Message', '')}".strip()
        if code in NOT_FOUND_CODES:
            return ObjectNotFoundError(f"{where} does not exist ({action})", detail=detail)
        hint = "check the bucket binding's credentials" if status in (401, 403) else ""
        return StorageError(f"S3 {action} of {where} failed", detail=detail, hint=hint)
    return StorageError(
        f"S3 {action} of {where} failed",
        detail=f"{type(exc).__name__}: {exc}",
        hint="check that the S3 endpoint is reachable",
    )


def build_s3_client(binding: BucketBinding, *, max_pool_connections: int = 16):
    """A client using only the binding's credentials, region and endpoint (no AWS_* env)."""
    session = boto3.session.Session(
        aws_access_key_id=binding.access_key_id,
        aws_secret_access_key=binding.secret_access_key,
        region_name=binding.region,
    )
    config = BotoConfig(
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=max_pool_connections,
        connect_timeout=10,
        read_timeout=120,
        ignore_configured_endpoint_urls=True,
    )
    return session.client("s3", endpoint_url=binding.endpoint_url, config=config)


class S3ObjectStore(ObjectStore):
    """An S3 bucket reached with one binding's credentials."""

    def __init__(self, binding: BucketBinding, *, client=None, bucket: str | None = None) -> None:
        self.binding = binding
        self.bucket = bucket or binding.bucket
        self.client = client if client is not None else build_s3_client(binding)

    def _call(self, action: str, key: str, method, **kwargs):
        try:
            return method(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, action, self.bucket, key) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("PUT", key, self.client.put_object, Key=key, Body=data)

    def get_bytes(self, key: str) -> bytes:
        body = self.open_stream(key)
        try:
            return body.read()
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, "GET", self.bucket, key) from exc
        finally:
            body.close()

    def open_stream(self, key: str) -> BinaryIO:
        return self._call("GET", key, self.client.get_object, Key=key)["Body"]

    def head(self, key: str) -> ObjectInfo:
        r = self._call("HEAD", key, self.client.head_object, Key=key)
        return ObjectInfo(key, int(r["ContentLength"]), r.get("ETag", "").strip('"'), r.get("LastModified"))

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        token = None
        while True:
            kwargs = {"Prefix": prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("LIST", prefix, self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    item["Key"], int(item["Size"]), item.get("ETag", "").strip('"'), item.get("LastModified")
                )
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def list_prefixes(self, prefix: str) -> list[str]:
        found: list[str] = []
        token = None
        while True:
            kwargs = {"Prefix": prefix, "Delimiter": "/", "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("LIST", prefix, self.client.list_objects_v2, **kwargs)
            found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def delete_objects(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == 1000:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: list[str]) -> None:
        r = self._call(
            "DELETE",
            keys[0],
            self.client.delete_objects,
            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
        )
        errors = r.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageError(
                f"S3 DELETE of {len(errors)} object(s) in s3://{self.bucket} failed",
                detail=f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}",
            )

    def list_open_uploads(self, prefix: str = "") -> list[OpenUpload]:
        found: list[OpenUpload] = []
        kwargs = {"Prefix": prefix}
        while True:
            page = self._call("LIST UPLOADS", prefix, self.client.list_multipart_uploads, **kwargs)
            found += [OpenUpload(u["Key"], u["UploadId"], u.get("Initiated")) for u in page.get("Uploads", [])]
            if not page.get("IsTruncated"):
                return found
            kwargs = {
                "Prefix": prefix,
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._call("ABORT UPLOAD", key, self.client.abort_multipart_upload, Key=key, UploadId=upload_id)
        except ObjectNotFoundError:
            pass

    def _begin_upload(self, key: str) -> str:
        return self._call("CREATE UPLOAD", key, self.client.create_multipart_upload, Key=key)["UploadId"]

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict:
        r = self._call(
            "UPLOAD PART", key, self.client.upload_part, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": r["ETag"]}

    def _complete_upload(self, key: str, upload_id: str, parts: list[dict]) -> None:
        self._call(
            "COMPLETE UPLOAD",
            key,
            self.client.complete_multipart_upload,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
