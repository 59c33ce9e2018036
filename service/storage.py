"""The storage boundary: S3ObjectStore, the only module that imports boto3/botocore.

Vendor errors are translated here (ClientError -> ObjectNotFoundError /
StorageError), so nothing outside catches botocore. The contract itself
(ObjectStore, upload_stream) lives in `service.objectstore` and the fake in
`service.memory_store`; both are re-exported here, so callers import every
storage name from this one module.

Every request has a deadline, and `interrupt()` reaches requests in flight
(service.s3_deadlines, used on this module's clients only).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.subscribers import BaseSubscriber

from service.errors import AccessDeniedError, JobAbortedError, ObjectNotFoundError, StorageError
from service.memory_store import MemoryObjectStore
from service.objectstore import (
    MAX_COPY_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    ExpiryRule,
    ObjectInfo,
    ObjectStore,
    OpenUpload,
    UploadResult,
    choose_part_size,
    parse_expiry_rules,
)
from service.progress import activity_of
from service.s3_deadlines import (
    ATTEMPTS,
    COMPLETE_SECONDS_PER_PART,
    CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    CleanupGaveUp,
    RequestInterrupted,
    copy_allowance,
    guard_for,
)
from service.s3_listing import parse_listing_fast
from service.vcap import BucketBinding

__all__ = [
    "MAX_COPY_OBJECT_SIZE", "MAX_PARTS", "MAX_PART_SIZE", "MIN_PART_SIZE", "ExpiryRule", "MemoryObjectStore",
    "ObjectInfo", "ObjectStore", "OpenUpload", "S3ObjectStore", "UploadResult", "build_s3_client",
    "choose_part_size",
]

_DEFAULT_TYPE = "binary/octet-stream"


def _attributes(content_type: str | None, metadata: Mapping[str, str] | None) -> dict:
    """ContentType / Metadata request arguments, only those given."""
    found: dict = {}
    if content_type:
        found["ContentType"] = content_type
    if metadata:
        found["Metadata"] = dict(metadata)
    return found


def _info(key: str, r: dict) -> ObjectInfo:
    """An ObjectInfo from a HEAD or GET response."""
    return ObjectInfo(key, int(r["ContentLength"]), r.get("ETag", "").strip('"'), r.get("LastModified"),
                      r.get("ContentType", ""), dict(r.get("Metadata") or {}))


class _DoneSubscriber(BaseSubscriber):
    """Sets an event when a managed transfer ends (success, failure or cancel)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_done(self, future, **kwargs) -> None:
        self.event.set()


NOT_FOUND_CODES = ("404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload")
DENIED_CODES = ("403", "AccessDenied", "Forbidden")


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
        if code in DENIED_CODES or status == 403:
            return AccessDeniedError(f"S3 {action} of {where} was denied", detail=detail, hint=hint)
        return StorageError(f"S3 {action} of {where} failed", detail=detail, hint=hint)
    return StorageError(
        f"S3 {action} of {where} failed",
        detail=f"{type(exc).__name__}: {exc}",
        hint="check that the S3 endpoint is reachable",
    )


_session = None
_session_lock = threading.Lock()


def _shared_session_unlocked():
    """One boto3 session for the process (call with `_session_lock` held): it loads
    the S3 model once (a few hundred ms per session), while every client still gets
    its own binding's credentials."""
    global _session
    if _session is None:
        _session = boto3.session.Session()
    return _session


def _without_proxy(config: BotoConfig) -> BotoConfig:
    """`config` with no HTTP proxy, whatever HTTPS_PROXY, HTTP_PROXY or NO_PROXY say.

    S3 is reached directly, on every endpoint of every binding (FAC's own start script lists each
    `endpoint` and `fips_endpoint` in no_proxy for that reason): the egress proxy is for
    notifications, and its allowlist has no S3. botocore reads the proxy variables only when
    `proxies` is None (EndpointCreator.create_endpoint -> get_environ_proxies); an empty mapping
    is used as given, so no scheme has a proxy.
    """
    return config.merge(BotoConfig(proxies={}))


def build_s3_client(binding: BucketBinding, *, max_pool_connections: int = 72, max_attempts: int = ATTEMPTS):
    """A client using only the binding's credentials, region and endpoint (no AWS_* env).

    `max_attempts` counts every attempt, the first included: against an endpoint
    that accepts and never answers, a call fails after about ATTEMPTS x
    READ_TIMEOUT_SECONDS (plus a second or two of backoff), naming the endpoint.
    """
    config = BotoConfig(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        ignore_configured_endpoint_urls=True,
    )
    config = _without_proxy(config)
    with _session_lock:  # creating clients from one session is not thread-safe
        return _shared_session_unlocked().client(
            "s3", endpoint_url=binding.endpoint_url, config=config, region_name=binding.region,
            aws_access_key_id=binding.access_key_id, aws_secret_access_key=binding.secret_access_key)


class S3ObjectStore(ObjectStore):
    """An S3 bucket reached with one binding's credentials."""

    def __init__(self, binding: BucketBinding, *, client=None, bucket: str | None = None) -> None:
        self.binding = binding
        self.bucket = bucket or binding.bucket
        self.client = client if client is not None else build_s3_client(binding)
        self.client.meta.events.register("before-parse.s3.ListObjectsV2", parse_listing_fast,
                                         unique_id="fac-backup-listing")
        self._guard = guard_for(self.client)
        self.endpoint = self.client.meta.endpoint_url

    def interrupt(self, reason: str = "interrupted") -> None:
        self._guard.interrupt(reason)

    @contextlib.contextmanager
    def _request(self, action: str, key: str, *, allowance: float = 0.0) -> Iterator[None]:
        """One request (its retries included): shown to the watchdog while in flight, its errors
        translated. `allowance`: seconds it may honestly take beyond an ordinary request."""
        where = f"s3://{self.bucket}/{key}"
        activity = activity_of(self.progress, f"S3 {action} of {where} at {self.endpoint}", allowance=allowance)
        try:
            with activity as moving, self._guard.allowance(allowance):
                yield
                if moving is not None:
                    moving.moved()  # S3 answered: that is motion, whatever the caller counts
        except RequestInterrupted as exc:
            raise JobAbortedError(f"S3 {action} of {where} was stopped", detail=str(exc)) from None
        except CleanupGaveUp as exc:
            raise StorageError(f"S3 {action} of {where} failed", detail=str(exc),
                               hint="check that the S3 endpoint is reachable") from None
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, action, self.bucket, key) from exc

    def _call(self, action: str, key: str, method, *, allowance: float = 0.0, **kwargs):
        with self._request(action, key, allowance=allowance):
            return method(Bucket=self.bucket, **kwargs)

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self._call("PUT", key, self.client.put_object, Key=key, Body=data,
                   **_attributes(content_type, metadata))

    def get_bytes(self, key: str) -> bytes:
        body = self.open_stream(key)
        try:
            with self._request("GET", key):
                return body.read()
        finally:
            body.close()

    def open_stream(self, key: str) -> BinaryIO:
        return self._call("GET", key, self.client.get_object, Key=key)["Body"]

    def open_object(self, key: str) -> tuple[ObjectInfo, BinaryIO]:
        r = self._call("GET", key, self.client.get_object, Key=key)
        return _info(key, r), r["Body"]

    def head(self, key: str) -> ObjectInfo:
        return _info(key, self._call("HEAD", key, self.client.head_object, Key=key))

    def list_objects(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        token = None
        while True:
            kwargs = {"Prefix": prefix, "MaxKeys": 1000}
            if start_after:
                kwargs["StartAfter"] = start_after
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

    def list_level(self, prefix: str = "") -> Iterator[ObjectInfo | str]:
        token = None
        while True:
            kwargs = {"Prefix": prefix, "Delimiter": "/", "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("LIST", prefix, self.client.list_objects_v2, **kwargs)
            level: list = [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            level += [ObjectInfo(i["Key"], int(i["Size"]), i.get("ETag", "").strip('"'), i.get("LastModified"))
                      for i in page.get("Contents", [])]
            yield from sorted(level, key=lambda item: item if isinstance(item, str) else item.key)
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def list_prefixes(self, prefix: str) -> list[str]:
        return [item for item in self.list_level(prefix) if isinstance(item, str)]

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

    def read_expiry_rules(self) -> list[ExpiryRule]:
        with self._request("GET LIFECYCLE", ""):
            try:
                rules = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                    raise
                rules = []
        return parse_expiry_rules(rules)

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

    def _begin_upload(self, key: str, **extra) -> str:
        return self._call("CREATE UPLOAD", key, self.client.create_multipart_upload, Key=key,
                          **_attributes(extra.get("content_type"), extra.get("metadata")))["UploadId"]

    def copier_for(self, dest: ObjectStore) -> ObjectStore | None:
        if not isinstance(dest, S3ObjectStore) or not self.binding.can_reach(dest.bucket):
            return None
        if (self.binding.endpoint_url or "") != (dest.binding.endpoint_url or ""):
            return None  # another S3 service: no server-side copy between them
        copier = S3ObjectStore(self.binding, client=self.client, bucket=dest.bucket)
        copier.progress = self.progress
        return copier

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
        if cancelled is not None and cancelled():
            raise JobAbortedError("the copy was cancelled")
        copy_source = {"Bucket": source.bucket, "Key": source_key or key}
        extra = {}
        if metadata is not None:
            extra = {"MetadataDirective": "REPLACE", **_attributes(content_type or _DEFAULT_TYPE, metadata)}
        if source_etag:
            extra["CopySourceIfMatch"] = f'"{source_etag}"'
        if size < multipart_threshold:
            r = self._call("COPY", key, self.client.copy_object, allowance=copy_allowance(size), Key=key,
                           CopySource=copy_source, **extra)
            return r.get("CopyObjectResult", {}).get("ETag", "").strip('"')
        with self._request("COPY", key, allowance=copy_allowance(size)):
            self._copy_multipart(copy_source, key, extra, multipart_threshold, part_size, cancelled)
        return self.head(key).etag

    def _copy_multipart(self, copy_source: dict, key: str, extra: dict, threshold: int, part_size: int,
                        cancelled: Callable[[], bool] | None) -> None:
        """s3transfer's managed copy (UploadPartCopy, parts in parallel), which aborts
        its upload on failure; a cancel is polled here and cancels the transfer."""
        # Older s3transfer releases do not carry the source's type and metadata
        # into a multipart copy, so they are always given explicitly.
        if "MetadataDirective" not in extra:
            try:
                info = self.client.head_object(**copy_source)
            except (ClientError, BotoCoreError) as exc:
                raise _translate(exc, "HEAD", copy_source["Bucket"], copy_source["Key"]) from exc
            except RequestInterrupted as exc:
                raise JobAbortedError("the copy was stopped", detail=str(exc)) from None
            extra = {**extra, "MetadataDirective": "REPLACE",
                     **_attributes(info.get("ContentType") or _DEFAULT_TYPE, info.get("Metadata") or {})}
        config = TransferConfig(multipart_threshold=threshold, multipart_chunksize=max(part_size, MIN_PART_SIZE),
                                max_concurrency=4)
        done = threading.Event()
        manager = create_transfer_manager(self.client, config)
        try:
            future = manager.copy(copy_source, self.bucket, key, extra_args=extra,
                                  subscribers=[_DoneSubscriber(done)])
            while not done.is_set():
                if cancelled is not None and cancelled():
                    future.cancel()
                    break
                done.wait(0.2)
            try:
                future.result()
            except (ClientError, BotoCoreError) as exc:
                raise _translate(exc, "COPY", self.bucket, key) from exc
            except Exception as exc:  # noqa: BLE001 - s3transfer's own errors, translated
                if isinstance(exc, RequestInterrupted) or (cancelled is not None and cancelled()):
                    raise JobAbortedError("the copy was cancelled") from exc
                raise _translate(exc, "COPY", self.bucket, key) from exc
        finally:
            manager.shutdown()

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
            allowance=COMPLETE_SECONDS_PER_PART * len(parts),
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
