"""What the contingency report is made from, read from the backups bucket once.

`History` is plain data: the period, the schedules, the run journal's records,
every complete backup's manifest, the drills' `verified.json` and the
acknowledgements beside the backups, the media figures and the storage the
databases have where it is known. The report's figures are pure functions of
it (service.evidence), so tests build one by hand; `gather_history` reads it:
one listing of the backups (catalog.list_backups, which skips the journal and
the media versions), one listing per month of the journal, one of the kept
media versions, and one of the media mirror for what a restore of the newest
backup would bring back (as `show` computes it).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from service import catalog, journal, layout
from service.bucket_rules import read_bucket_expiry
from service.errors import ServiceError
from service.media_versions import list_versions, restorable_media
from service.scheduler import OFF

SCHEDULE_SETTINGS = {"scheduled_backup": "scheduled_cron", "daily_backup": "daily_cron",
                     "verify_backup": "verify_cron"}
# The storage each database has, in GB of 1024^3 bytes as space.py counts them (FAC_BACKUP_FAC_DB_STORAGE_GB,
# FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB), when the configuration knows it.
STORAGE_SETTINGS = {"fac-db": "fac_db_storage_gb", "fac-snapshot-db": "snapshot_db_storage_gb"}
READERS = 16  # objects read at once: a year of manifests and journal records is thousands of GETs


@dataclass(frozen=True)
class History:
    """Everything a report of [since, until) is computed from."""

    since: datetime
    until: datetime
    now: datetime
    tz: tzinfo
    schedules: dict[str, str]  # job -> cron expression, enabled schedules only
    runs: tuple[dict, ...] = ()  # journal records of runs started in the period (service.journal)
    backups: tuple[catalog.Manifest, ...] = ()  # every complete backup in the bucket
    verified: dict[str, dict] = field(default_factory=dict)  # backup id -> its verified.json
    acknowledged: dict[str, dict] = field(default_factory=dict)  # backup id -> its acknowledged.json
    media: dict = field(default_factory=dict)  # what a restore of the newest backup brings back
    media_versions: dict = field(default_factory=dict)  # {"objects", "bytes"} kept under media-versions/
    storage_gb: dict[str, float] = field(default_factory=dict)  # binding -> allocated storage, where known
    journal_keep_days: int = 365
    bucket_expiry_days: int | None = None
    bucket_expiry_text: str = "no expiry known"
    space: str = ""
    bucket: str = ""


def enabled_schedules(settings) -> dict[str, str]:
    return {job: getattr(settings, name) for job, name in SCHEDULE_SETTINGS.items()
            if getattr(settings, name).strip().lower() != OFF}


def storage_of(settings) -> dict[str, float]:
    """The storage of each database where the configuration knows it; {} otherwise."""
    found = {}
    for binding, name in STORAGE_SETTINGS.items():
        value = getattr(settings, name)
        if value:
            found[binding] = float(value)
    return found


def _read_json(store, key: str) -> dict:
    try:
        data = json.loads(store.get_bytes(key))
    except (ServiceError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def gather_history(config, store, since: datetime, until: datetime, now: datetime, *, log=None) -> History:
    """Read the history of [since, until) from the backups bucket (module docstring)."""
    settings = config.settings
    summaries = [s for s in catalog.list_backups(store, workers=READERS) if s.complete and s.manifest is not None]
    with ThreadPoolExecutor(READERS, thread_name_prefix="history") as pool:
        verified = dict(pool.map(lambda s: (s.id, _read_json(store, layout.verified_key(s.id))
                                            or {"verified_at": s.verified_at}),
                                 [s for s in summaries if s.verified_at]))
        acknowledged = dict(pool.map(lambda s: (s.id, _read_json(store, layout.acknowledged_key(s.id))
                                                or {"acknowledged_at": s.acknowledged_at}),
                                     [s for s in summaries if s.acknowledged_at]))
    versions = {"objects": 0, "bytes": 0}
    for version in list_versions(store):
        versions["objects"] += 1
        versions["bytes"] += version.info.size
    try:
        expiry = read_bucket_expiry(store, settings.bucket_expiry_days)
    except ServiceError as exc:
        if log is not None:
            log.warning("report.bucket_rules_unreadable", error=exc.message)
        expiry = None
    return History(
        since=since, until=until, now=now, tz=settings.timezone, schedules=enabled_schedules(settings),
        runs=tuple(journal.read_records(store, since, until, workers=READERS)),
        backups=tuple(s.manifest for s in summaries),
        verified=verified, acknowledged=acknowledged, media=newest_media(store, summaries, log),
        media_versions=versions, storage_gb=storage_of(settings), journal_keep_days=settings.journal_keep_days,
        bucket_expiry_days=expiry.days if expiry else settings.bucket_expiry_days,
        bucket_expiry_text=expiry.describe() if expiry else "the bucket's rules could not be read",
        space=config.space or "", bucket=store.bucket)


def newest_media(store, summaries, log=None) -> dict:
    """What a restore of the newest complete backup's media would bring back today ({} if none)."""
    if not summaries:
        return {}
    newest = max(summaries, key=lambda s: (s.started_at, s.id))
    try:
        return {"backup_id": newest.id, **restorable_media(store, newest.manifest)}
    except ServiceError as exc:
        if log is not None:
            log.warning("report.media_unreadable", error=exc.message)
        return {"backup_id": newest.id, "error": exc.message}
