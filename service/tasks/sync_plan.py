"""The media sync's decisions: which keys are media, how two sorted listings
merge, and when two objects hold the same bytes. `service.tasks.sync` carries
them out; its module docstring explains the rules."""

from __future__ import annotations

from collections.abc import Iterator

from service import layout
from service.storage import ObjectInfo, ObjectStore

SOURCE_ETAG = "fac-source-etag"  # user metadata: the ETag of the object we copied from
COPY, SKIP, CHECK = "copy", "skip", "check"


def list_media(store: ObjectStore) -> Iterator[ObjectInfo]:
    """Every media object of `store` in key order; nothing under `backups/`."""
    for info in store.list_objects():
        if layout.is_media_key(info.key):
            yield info
            continue
        # The first dump: jump over the whole prefix instead of paging through it.
        for later in store.list_objects(start_after=layout.BACKUPS_SKIP_AFTER):
            if layout.is_media_key(later.key):
                yield later
        return


def merge_listings(
    source: Iterator[ObjectInfo], dest: Iterator[ObjectInfo]
) -> Iterator[tuple[str, ObjectInfo | None, ObjectInfo | None]]:
    """Walk two key-ordered listings together: (key, source or None, dest or None)."""
    src, dst = next(source, None), next(dest, None)
    while src is not None or dst is not None:
        if dst is None or (src is not None and src.key < dst.key):
            yield src.key, src, None
            src = next(source, None)
        elif src is None or dst.key < src.key:
            yield dst.key, None, dst
            dst = next(dest, None)
        else:
            yield src.key, src, dst
            src, dst = next(source, None), next(dest, None)


def plan_object(src: ObjectInfo | None, dst: ObjectInfo | None) -> str:
    """COPY, SKIP or CHECK (compare recorded ETags with HEAD) for one key of the merge."""
    if src is None:
        return SKIP  # only in the destination: never deleted
    if dst is None or src.size != dst.size:
        return COPY
    if src.etag and src.etag == dst.etag:
        return SKIP
    if is_multipart_etag(src.etag) or is_multipart_etag(dst.etag):
        return CHECK
    return COPY  # two MD5s of the bytes that differ: no need to ask


def same_content(src: ObjectInfo, dst: ObjectInfo) -> bool:
    """Equal size and an ETag that one side recorded of the other (HEAD results)."""
    if src.size != dst.size:
        return False
    if src.etag and src.etag == dst.etag:
        return True
    src_seen, dst_seen = src.metadata.get(SOURCE_ETAG), dst.metadata.get(SOURCE_ETAG)
    return bool(dst_seen == src.etag or src_seen == dst.etag or (src_seen and src_seen == dst_seen))


def is_multipart_etag(etag: str) -> bool:
    """ETags of multipart uploads end in '-<parts>' and are not an MD5 of the bytes."""
    return "-" in etag
