"""Kept media versions, and the moment of each backup's media.

The media mirror (the root of the backups bucket) holds one copy per key. When
the sync is about to replace a copy whose content changed, it first copies the
current one, server-side, to
`backups/media-versions/<key>/<replaced-at>_<mirrored-at>` (layout): when it
was replaced (our clock, to the microsecond) and since when it had been in the
mirror (its LastModified, S3's clock, to the second). The keep must succeed
before the overwrite starts, so an interrupted sync leaves every key with its
old content, its new content, or both; never neither. First copies and
unchanged objects keep nothing.

A backup job's media sync writes `backups/<id>/media.json` when it ends: its
moment T in our clock (`synced_at`), and S3's clock of that write (the object's
LastModified, read back). The content of key k at T is then:
- the earliest kept version of k replaced after T, if any (it was current at T);
- otherwise the mirror's copy;
- and none at all when that content reached the mirror after T (the key was
  first copied later): compared in S3's clock, to the second, a copy made in
  the very second media.json was written counts as present.
A backup without media.json (made before versions were kept, or whose sync
failed before the end) takes its manifest's finished_at as T.

Why a prefix and not S3 versioning: cloud.gov's brokered buckets are created
for the tenant, who may not be allowed to turn versioning on (the team cannot
even manage the lifecycle rule); with versioning the 60-day rule would expire
current copies while noncurrent ones lived on unless the broker also set
NoncurrentVersionExpiration; and noncurrent versions are invisible to the
listings this service already reads. A prefix works in any bucket, expires
under the same 60-day rule as the dumps (a version is always younger than the
backups that need it: it was replaced after their moment), and the retention
prunes it like everything else under `backups/`.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from service import layout
from service.errors import ObjectNotFoundError
from service.storage import ObjectInfo, ObjectStore

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class MediaMoment:
    """When a backup's media was taken: `synced_at` in our clock, `recorded_at` in S3's."""

    backup_id: str
    synced_at: datetime
    recorded_at: datetime
    source: str  # "media.json", or "manifest" (finished_at) when the backup has no media record
    state: dict  # media.json as written (empty for "manifest")


@dataclass(frozen=True)
class KeptVersion:
    """One kept copy: the media key it belongs to and its two stamps."""

    info: ObjectInfo  # the object under backups/media-versions/
    key: str
    replaced_at: datetime
    mirrored_at: datetime


def list_versions(store: ObjectStore) -> Iterator[KeptVersion]:
    """Every kept version in the bucket (anything else under the prefix is ignored)."""
    for info in store.list_objects(layout.MEDIA_VERSIONS_PREFIX):
        parsed = layout.parse_media_version_key(info.key)
        if parsed is not None:
            yield KeptVersion(info, *parsed)


def write_media_state(store: ObjectStore, backup_id: str, synced_at: datetime, figures: dict) -> dict:
    """Record the moment of `backup_id`'s media (after its sync) and return what was written."""
    state = {"backup_id": backup_id, "synced_at": synced_at.astimezone(UTC).isoformat(timespec="microseconds"),
             **{k: figures[k] for k in ("dest_objects", "dest_bytes", "copied", "kept", "failed") if k in figures}}
    store.put_bytes(layout.media_state_key(backup_id), json.dumps(state, indent=2).encode("utf-8"),
                    content_type="application/json")
    return state


def read_moment(store: ObjectStore, manifest) -> MediaMoment:
    """The moment of a complete backup's media: its media.json, else its manifest's finished_at."""
    key = layout.media_state_key(manifest.id)
    try:
        info = store.head(key)
        state = json.loads(store.get_bytes(key))
        synced = datetime.fromisoformat(state["synced_at"])
        recorded = info.last_modified or synced
        return MediaMoment(manifest.id, synced, recorded.astimezone(UTC), layout.MEDIA_STATE_NAME, state)
    except ObjectNotFoundError:
        pass
    except (ValueError, KeyError, TypeError):
        pass  # an unreadable record: fall back like a backup without one
    finished = datetime.fromisoformat(manifest.finished_at)
    finished = (finished if finished.tzinfo else finished.replace(tzinfo=UTC)).astimezone(UTC)
    return MediaMoment(manifest.id, finished, finished, "manifest", {})


class MomentPlan:
    """Which object holds each key's content at a backup's moment (see the module docstring).

    Memory: one entry per key replaced after the moment (the earliest such
    version), never per object of the bucket; the mirror itself is streamed.
    """

    def __init__(self, moment: MediaMoment) -> None:
        self.moment = moment
        self.after: dict[str, KeptVersion] = {}
        self.from_versions = 0
        self.from_versions_bytes = 0
        self.not_in_backup = 0

    def load(self, store: ObjectStore) -> MomentPlan:
        """Read the kept versions once; only those replaced after the moment matter."""
        for version in list_versions(store):
            if version.replaced_at <= self.moment.synced_at:
                continue
            held = self.after.get(version.key)
            if held is None or version.replaced_at < held.replaced_at:
                self.after[version.key] = version
        return self

    def _existed(self, mirrored_at: datetime | None) -> bool:
        return (mirrored_at or EPOCH) <= self.moment.recorded_at

    def source_for(self, key: str, mirror: ObjectInfo | None) -> ObjectInfo | None:
        """The object holding `key`'s content at the moment, or None (the key came later)."""
        version = self.after.pop(key, None)
        if version is not None:
            if not self._existed(version.mirrored_at):
                self.not_in_backup += 1
                return None
            self.from_versions += 1
            self.from_versions_bytes += version.info.size
            return version.info
        if mirror is None:
            return None
        if not self._existed(mirror.last_modified):
            self.not_in_backup += 1
            return None
        return mirror

    def leftovers(self) -> Iterator[tuple[str, ObjectInfo]]:
        """Kept versions of keys whose mirror copy is gone (removed by hand, or expired)."""
        for key in sorted(self.after):
            source = self.source_for(key, None)
            if source is not None:
                yield key, source


def versions_needed(replaced: list[datetime], moments: list[datetime]) -> list[bool]:
    """For one key's kept versions (replaced_at, oldest first): which a backup needs.

    A restore to moment T takes the earliest version replaced after T, so the
    version replaced at r[i] serves exactly the moments in [r[i-1], r[i]) (from
    the beginning of time for the first). `moments` must be sorted.
    """
    needed = []
    for i, replaced_at in enumerate(replaced):
        start = bisect_left(moments, replaced[i - 1]) if i else 0
        needed.append(start < len(moments) and moments[start] < replaced_at)
    return needed


def restorable_media(store: ObjectStore, manifest) -> dict:
    """What a restore of this backup's media would bring back today, from one listing of the mirror
    (`show` and the contingency report)."""
    import threading

    from service.tasks.sync import list_media_by_folder  # the sync's own listing; the sync imports us

    stop = threading.Event()
    try:
        return summarize_moment(store, manifest, list_media_by_folder(store, stop))
    finally:
        stop.set()


def summarize_moment(store: ObjectStore, manifest, listing: Iterator[ObjectInfo]) -> dict:
    """What a restore of this backup's media would bring back from `store` today (the
    mirror's `listing` streamed once): objects, bytes, and how many come from kept versions."""
    moment = read_moment(store, manifest)
    plan = MomentPlan(moment).load(store)
    objects = total = 0
    for mirror in listing:
        source = plan.source_for(mirror.key, mirror)
        if source is not None:
            objects, total = objects + 1, total + source.size
    for _key, source in plan.leftovers():
        objects, total = objects + 1, total + source.size
    return {"moment": moment.synced_at.isoformat(), "moment_from": moment.source, "objects": objects,
            "bytes": total, "from_versions": plan.from_versions, "from_versions_bytes": plan.from_versions_bytes,
            "not_in_backup": plan.not_in_backup,
            "recorded_objects": moment.state.get("dest_objects"), "recorded_bytes": moment.state.get("dest_bytes")}
