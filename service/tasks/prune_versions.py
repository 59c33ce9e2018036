"""The retention of kept media versions (service.media_versions), run by prune_backups.

A version is kept while a backup that the prune keeps may need it: the one a
restore of that backup would take (`media_versions.versions_needed`), and
every version replaced less than MIN_DAYS ago, whatever the backups (nothing
younger is ever deleted, as for backups). Everything else is deleted after the
backups the same prune deletes, so an interrupted prune never leaves a backup
that looks complete without the versions its media restore needs. The dry run,
the refusals and the events are prune_backups' own.
"""

from __future__ import annotations

from datetime import UTC, timedelta

from service import catalog
from service.errors import BackupNotFoundError, IntegrityError
from service.media_versions import KeptVersion, list_versions, read_moment, versions_needed
from service.retention import COMPLETE, Decision

DELETE_BATCH = 1000


def kept_moments(store, decisions: list[Decision]) -> list:
    """The media moments (our clock) of the complete backups the prune keeps, sorted."""
    moments = []
    for d in decisions:
        if not d.keep or d.record.state != COMPLETE:
            continue
        try:
            manifest = catalog.read_manifest(store, d.record.id)
        except (BackupNotFoundError, IntegrityError):
            continue
        moments.append(read_moment(store, manifest).synced_at)
    return sorted(moments)


def decide_versions(versions: list[KeptVersion], moments: list, now, min_days: int) -> list[tuple[KeptVersion, str]]:
    """(version, reason) for each version to delete; the others are kept."""
    by_key: dict[str, list[KeptVersion]] = {}
    for version in versions:
        by_key.setdefault(version.key, []).append(version)
    young = now.astimezone(UTC) - timedelta(days=min_days)
    doomed = []
    for group in by_key.values():
        group.sort(key=lambda v: v.replaced_at)
        for version, needed in zip(group, versions_needed([v.replaced_at for v in group], moments), strict=True):
            if not needed and version.replaced_at < young:
                doomed.append((version, f"replaced more than {min_days} days ago and no kept backup's "
                                        "media restore would take it"))
    return doomed


def prune_media_versions(ctx, store, decisions: list[Decision], now, apply: bool) -> dict:
    """Delete (or, in a dry run, list) the kept media versions no kept backup needs; return figures."""
    min_days = ctx.config.settings.retention.min_days
    versions = list(list_versions(store))
    doomed = decide_versions(versions, kept_moments(store, decisions), now, min_days)
    event = "prune.media_version_deleted" if apply else "prune.media_version_would_delete"
    for version, reason in doomed:
        ctx.log.info(event, key=version.key, version=version.info.key, bytes=version.info.size, reason=reason)
    if apply:
        keys = [v.info.key for v, _ in doomed]
        for start in range(0, len(keys), DELETE_BATCH):
            ctx.scope.check()
            store.delete_objects(keys[start:start + DELETE_BATCH])
    deleted_bytes = sum(v.info.size for v, _ in doomed)
    figures = {"media_versions_kept": len(versions) - len(doomed),
               "media_versions_kept_bytes": sum(v.info.size for v in versions) - deleted_bytes,
               "media_versions_deleted": len(doomed), "media_versions_deleted_bytes": deleted_bytes}
    ctx.log.info("prune.media_versions", applied=apply, **figures)
    return figures
