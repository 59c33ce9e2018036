"""How the media sync writes one object: a server-side copy (CopyObject, or
UploadPartCopy from the multipart threshold on) or a stream between two
clients, and, before replacing different content in the backups bucket, the
keep of the current copy under backups/media-versions/ (service.media_versions).
`service.tasks.sync` decides what to copy; this module only copies.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from service import layout
from service.errors import ObjectNotFoundError, SyncError
from service.storage import ObjectInfo, ObjectStore
from service.tasks.sync_plan import SOURCE_ETAG, is_multipart_etag


class Copier:
    """Copies one object, server-side when `server` is set, else by streaming; keeps the
    destination's current copy first when `keeper` is set."""

    def __init__(self, source: ObjectStore, dest: ObjectStore, server: ObjectStore | None,
                 multipart_threshold: int, part_size: int, cancelled: Callable[[], bool],
                 keeper: ObjectStore | None = None, clock: Callable[[], datetime] | None = None) -> None:
        self.source, self.dest, self.server = source, dest, server
        self.threshold, self.part_size, self.cancelled = multipart_threshold, part_size, cancelled
        self.keeper, self.clock = keeper, clock or (lambda: datetime.now(UTC))

    def keep(self, current: ObjectInfo) -> str:
        """Copy the destination's `current` copy under backups/media-versions/ (server-side,
        UploadPartCopy for large ones), exactly the content listed (If-Match on its ETag)."""
        assert self.keeper is not None
        version_key = layout.media_version_key(current.key, self.clock(),
                                               current.last_modified or datetime(1970, 1, 1, tzinfo=UTC))
        if len(version_key.encode("utf-8")) > layout.MAX_KEY_BYTES:
            raise SyncError(f"{current.key} cannot be replaced: its kept copy's key would exceed "
                            f"S3's {layout.MAX_KEY_BYTES} bytes, and it is never replaced without one",
                            hint="the old copy stays in place; shorten the key in the source bucket")
        self.keeper.copy_from(self.dest, version_key, source_key=current.key, size=current.size,
                              source_etag=current.etag or None, multipart_threshold=self.threshold,
                              part_size=max(self.part_size, 64 * 1024 * 1024), cancelled=self.cancelled)
        return version_key

    def copy(self, src: ObjectInfo, target: str | None = None) -> None:
        """Copy `src` into the destination's `target` (by default the same key)."""
        target = target or src.key
        if self.server is None:
            self._stream(src.key, target)
            return
        if not is_multipart_etag(src.etag) and src.size < self.threshold:
            # CopyObject keeps the MD5 ETag and the metadata: nothing to record.
            self.server.copy_from(self.source, target, source_key=src.key, size=src.size, cancelled=self.cancelled)
            return
        # The new ETag will not equal the source's: record the source's, and copy
        # only the version it names.
        info = self.source.head(src.key)
        self.server.copy_from(
            self.source, target, source_key=src.key, size=info.size, content_type=info.content_type,
            metadata={**info.metadata, SOURCE_ETAG: info.etag}, source_etag=info.etag,
            multipart_threshold=self.threshold, part_size=self.part_size, cancelled=self.cancelled)

    def _stream(self, key: str, target: str) -> None:
        info, body = self.source.open_object(key)
        try:
            self.dest.upload_stream(target, body, part_size=self.part_size, cancelled=self.cancelled,
                                    content_type=info.content_type,
                                    metadata={**info.metadata, SOURCE_ETAG: info.etag})
        finally:
            body.close()


def head_or_none(store: ObjectStore, key: str) -> ObjectInfo | None:
    try:
        return store.head(key)
    except ObjectNotFoundError:
        return None
