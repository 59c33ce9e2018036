"""MemoryObjectStore: the in-memory fake of the ObjectStore contract.

It keeps whole objects in a dict, so it is for tests and the demo only. The
contract suite (tests/contract) runs the same tests against it and against
S3ObjectStore on a moto server, so what passes here holds there. Its ETags are
the MD5 of the bytes (what S3 gives a single-request write).
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import BinaryIO

from service.errors import AccessDeniedError, JobAbortedError, ObjectNotFoundError, StorageError
from service.objectstore import (
    MAX_COPY_OBJECT_SIZE,
    ExpiryRule,
    ObjectInfo,
    ObjectStore,
    OpenUpload,
    parse_expiry_rules,
)

DEFAULT_CONTENT_TYPE = "binary/octet-stream"


def _etag(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - an ETag, not a security check


class MemoryObjectStore(ObjectStore):
    """The fake: a dict of key -> bytes, with the same contract as S3ObjectStore.

    `reachable` names the other buckets its "credentials" can copy into
    server-side (as `additional_buckets` does for a cloud.gov binding).
    """

    def __init__(self, bucket: str = "memory", *, reachable: Iterable[str] = ()) -> None:
        self.bucket = bucket
        self.reachable = frozenset(reachable)
        self.objects: dict[str, bytes] = {}
        self.attributes: dict[str, tuple[str, dict[str, str]]] = {}  # key -> (type, metadata)
        self.modified: dict[str, datetime] = {}  # key -> LastModified, to the second as S3 lists it
        self.uploads: dict[str, tuple[str, dict[int, bytes], dict]] = {}
        self._lock = threading.Lock()
        self._next = 0
        self.lifecycle_rules: list[dict] = []  # S3's `Rules` shape, as put_bucket_lifecycle_configuration takes
        self.lifecycle_denied = False  # True: the credentials may not read them (as on cloud.gov)

    def read_expiry_rules(self) -> list[ExpiryRule]:
        if self.lifecycle_denied:
            raise AccessDeniedError(f"reading the lifecycle rules of s3://{self.bucket} was denied",
                                    detail="AccessDenied: Access Denied")
        return parse_expiry_rules(self.lifecycle_rules)

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        with self._lock:
            self._store(key, bytes(data), content_type, metadata)

    def _store(self, key: str, data: bytes, content_type: str | None, metadata) -> None:
        self.objects[key] = data
        self.attributes[key] = (content_type or DEFAULT_CONTENT_TYPE, dict(metadata or {}))
        self.modified[key] = datetime.now(UTC).replace(microsecond=0)

    def get_bytes(self, key: str) -> bytes:
        with self._lock:
            if key not in self.objects:
                raise ObjectNotFoundError(f"{key} does not exist in bucket {self.bucket}")
            return self.objects[key]

    def open_stream(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get_bytes(key))

    def open_object(self, key: str) -> tuple[ObjectInfo, BinaryIO]:
        info = self.head(key)
        return info, io.BytesIO(self.get_bytes(key))

    def head(self, key: str) -> ObjectInfo:
        data = self.get_bytes(key)
        content_type, metadata = self.attributes.get(key, (DEFAULT_CONTENT_TYPE, {}))
        return ObjectInfo(key, len(data), _etag(data), self.modified.get(key), content_type, dict(metadata))

    def list_objects(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            items = sorted((k, v, self.modified.get(k)) for k, v in self.objects.items()
                           if k.startswith(prefix) and k > start_after)
        for key, data, modified in items:
            yield ObjectInfo(key, len(data), _etag(data), modified)

    def list_level(self, prefix: str = "") -> Iterator[ObjectInfo | str]:
        folders = set(self.list_prefixes(prefix))
        with self._lock:
            items = [(k, len(v), _etag(v), self.modified.get(k)) for k, v in self.objects.items()
                     if k.startswith(prefix) and "/" not in k[len(prefix):]]
        level: list = [ObjectInfo(k, size, etag, modified) for k, size, etag, modified in items] + sorted(folders)
        yield from sorted(level, key=lambda item: item if isinstance(item, str) else item.key)

    def list_prefixes(self, prefix: str) -> list[str]:
        with self._lock:
            keys = [k for k in self.objects if k.startswith(prefix)]
        found = {prefix + k[len(prefix):].split("/", 1)[0] + "/" for k in keys if "/" in k[len(prefix):]}
        return sorted(found)

    def delete_objects(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self.objects.pop(key, None)
                self.attributes.pop(key, None)
                self.modified.pop(key, None)

    def copier_for(self, dest: ObjectStore) -> ObjectStore | None:
        if isinstance(dest, MemoryObjectStore) and dest.bucket in self.reachable | {self.bucket}:
            return dest
        return None

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
        if not isinstance(source, MemoryObjectStore) or source.copier_for(self) is not self:
            raise StorageError(f"cannot copy {key} from bucket {source.bucket} server-side")
        if cancelled is not None and cancelled():
            raise JobAbortedError("the copy was cancelled")
        info = source.head(source_key or key)
        data = source.get_bytes(source_key or key)
        if source_etag is not None and source_etag != info.etag:
            raise StorageError(f"{source_key or key} in bucket {source.bucket} changed during the copy")
        if metadata is None:
            content_type, metadata = info.content_type, info.metadata
        with self._lock:
            self._store(key, data, content_type, metadata)
        return _etag(data)

    def list_open_uploads(self, prefix: str = "") -> list[OpenUpload]:
        with self._lock:
            return [OpenUpload(k, uid, None) for uid, (k, _, _) in self.uploads.items() if k.startswith(prefix)]

    def abort_upload(self, key: str, upload_id: str) -> None:
        with self._lock:
            self.uploads.pop(upload_id, None)

    def _begin_upload(self, key: str, **extra) -> str:
        with self._lock:
            self._next += 1
            upload_id = f"upload-{self._next}"
            self.uploads[upload_id] = (key, {}, extra)
            return upload_id

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict:
        with self._lock:
            if upload_id not in self.uploads:
                raise StorageError(f"upload {upload_id} of {key} does not exist")
            self.uploads[upload_id][1][number] = bytes(data)
        return {"PartNumber": number}

    def _complete_upload(self, key: str, upload_id: str, parts: list[dict]) -> None:
        with self._lock:
            _, stored, extra = self.uploads.pop(upload_id)
            data = b"".join(stored[p["PartNumber"]] for p in parts)
            self._store(key, data, extra.get("content_type"), extra.get("metadata"))
