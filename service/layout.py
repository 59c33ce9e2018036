"""Every S3 key name and backup id format, in one module.

Dumps live under `backups/<backup-id>/`: one `<schema>-<table>.dump` per table
(the format users restore by hand), `schema.dump` with every other object of
the database, and `manifest.json`, written last. Table keys always hold a '-',
so `schema.dump`, `privileges.json` and `manifest.json` can never collide with a table's dump.
Media objects live at the root of the backups bucket, outside `backups/`.
Before the media sync replaces a copy whose content changed, it keeps the
current one under `backups/media-versions/<media key>/<replaced-at>_<mirrored-at>`
(service.media_versions), and each backup records the moment of its media in
`backups/<backup-id>/media.json`.
The run journal (service.journal) keeps one small record per job run under
`backups/journal/runs/<YYYY-MM>/`, and the contingency reports under
`backups/journal/reports/`: neither is a backup, and every listing of backups
skips both reserved prefixes (`backup_listing_skip`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

BACKUPS_PREFIX = "backups/"
MANIFEST_NAME = "manifest.json"
SCHEMA_NAME = "schema.dump"
PRIVILEGES_NAME = "privileges.json"
MEDIA_STATE_NAME = "media.json"
VERIFIED_NAME = "verified.json"  # written by a drill that proved the backup restorable
# Not a backup: the media copies the sync replaced. Backup ids never take this name
# (they all start with a kind of ID_FORMATS), and listings of backups skip it.
MEDIA_VERSIONS_ID = "media-versions"
MEDIA_VERSIONS_PREFIX = f"{BACKUPS_PREFIX}{MEDIA_VERSIONS_ID}/"
ACKNOWLEDGED_NAME = "acknowledged.json"  # an operator accepted the rows a backup found dropped
# Not a backup either: the run journal and the reports made from it (service.journal).
JOURNAL_ID = "journal"
JOURNAL_PREFIX = f"{BACKUPS_PREFIX}{JOURNAL_ID}/"
JOURNAL_RUNS_PREFIX = f"{JOURNAL_PREFIX}runs/"
JOURNAL_REPORTS_PREFIX = f"{JOURNAL_PREFIX}reports/"
RESERVED_IDS = (MEDIA_VERSIONS_ID, JOURNAL_ID)
RESERVED_PREFIXES = tuple(f"{BACKUPS_PREFIX}{name}/" for name in RESERVED_IDS)
# A journal key starts with its run's start (UTC, to the microsecond, fixed width): the keys of
# a month list oldest first, and a month is one prefix.
_RUN_STAMP = "%Y%m%dT%H%M%S.%fZ"
_REPORT_DAY = "%Y%m%d"
# Both stamps are UTC. The first (when the copy was replaced, our clock, to the
# microsecond) leads and has a fixed width, so a key's versions sort oldest first.
_REPLACED_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_MIRRORED_FORMAT = "%Y%m%dT%H%M%SZ"
_VERSION_LEAF = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z)_(\d{8}T\d{6}Z)$")
MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length

# job -> (id prefix, strftime pattern), as operators type them (REFERENCE section 3)
ID_FORMATS = {
    "scheduled": "scheduled-%m-%d-%H",
    "daily": "daily-%m-%d",
    "initial": "initial-%Y%m%d%H%M",
    "deploy": "deploy-%Y%m%d%H%M",
    "on-demand": "on-demand-%Y%m%d%H%M",
    "pre-restore": "pre-restore-%Y%m%d%H%M",
}
_ID_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# The old tool's backups: `backups/<operation>-mm-dd-HH/` (the seed's flat form), then
# `backups/<operation>/<stamp>/` with `mm-dd-HH` stamps and, since June 2026, stamps made by
# `date +"%Y-%m-%dT%H:%M:%S%z"` in America/New_York (colons and an offset: `09:03:26-0400`).
LEGACY_ISO_STAMP = "%Y-%m-%dT%H:%M:%S%z"
_LEGACY_PART_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$")


def build_backup_id(kind: str, when: datetime) -> str:
    """The id of a backup of `kind` started at `when` (already in the service's time zone)."""
    return when.strftime(ID_FORMATS[kind])


def id_kind(backup_id: str) -> str | None:
    """The kind of an id (`scheduled`, `daily`, ...), or None for an unknown form."""
    for kind in sorted(ID_FORMATS, key=len, reverse=True):
        if backup_id.startswith(kind + "-"):
            return kind
    return None


def is_valid_backup_id(backup_id: str) -> bool:
    """Ids become key prefixes: no slashes, no leading dot, nothing exotic."""
    return bool(_ID_SAFE.match(backup_id)) and ".." not in backup_id


def is_valid_legacy_part(part: str) -> bool:
    """One component of an old tool's nested id (`scheduled`, `2026-06-25T09:03:26-0400`)."""
    return bool(_LEGACY_PART_SAFE.match(part)) and ".." not in part


def legacy_stamp_time(legacy_id: str) -> datetime | None:
    """When `<operation>/<ISO stamp>` started, from its stamp; None for any other id."""
    stamp = legacy_id.rsplit("/", 1)[-1]
    try:
        return datetime.strptime(stamp, LEGACY_ISO_STAMP)
    except ValueError:
        return None


def backup_prefix(backup_id: str) -> str:
    return f"{BACKUPS_PREFIX}{backup_id}/"


def table_key(backup_id: str, schema: str, table: str) -> str:
    return f"{backup_prefix(backup_id)}{schema}-{table}.dump"


def schema_key(backup_id: str) -> str:
    return backup_prefix(backup_id) + SCHEMA_NAME


def privileges_key(backup_id: str) -> str:
    return backup_prefix(backup_id) + PRIVILEGES_NAME


def manifest_key(backup_id: str) -> str:
    return backup_prefix(backup_id) + MANIFEST_NAME


def verified_key(backup_id: str) -> str:
    return backup_prefix(backup_id) + VERIFIED_NAME


def media_state_key(backup_id: str) -> str:
    return backup_prefix(backup_id) + MEDIA_STATE_NAME


def media_version_key(key: str, replaced_at: datetime, mirrored_at: datetime) -> str:
    """Where the copy of media `key` replaced at `replaced_at` is kept; `mirrored_at` is
    when that copy was written into the mirror (its LastModified, S3's clock)."""
    replaced = replaced_at.astimezone(UTC).strftime(_REPLACED_FORMAT)
    mirrored = mirrored_at.astimezone(UTC).strftime(_MIRRORED_FORMAT)
    return f"{MEDIA_VERSIONS_PREFIX}{key}/{replaced}_{mirrored}"


def parse_media_version_key(version_key: str) -> tuple[str, datetime, datetime] | None:
    """(media key, replaced_at, mirrored_at) of a kept version's key; None for anything else."""
    if not version_key.startswith(MEDIA_VERSIONS_PREFIX) or "/" not in version_key[len(MEDIA_VERSIONS_PREFIX):]:
        return None
    key, leaf = version_key[len(MEDIA_VERSIONS_PREFIX):].rsplit("/", 1)
    match = _VERSION_LEAF.match(leaf)
    if not match or not key:
        return None
    replaced = datetime.strptime(match.group(1), _REPLACED_FORMAT).replace(tzinfo=UTC)
    mirrored = datetime.strptime(match.group(2), _MIRRORED_FORMAT).replace(tzinfo=UTC)
    return key, replaced, mirrored


def journal_month_prefix(when: datetime) -> str:
    """The prefix of the journal records of runs started in `when`'s month (UTC)."""
    return f"{JOURNAL_RUNS_PREFIX}{when.astimezone(UTC):%Y-%m}/"


def journal_record_key(started: datetime, job: str, run_id: str) -> str:
    """Where the record of run `run_id` of `job`, started at `started`, is kept."""
    stamp = started.astimezone(UTC).strftime(_RUN_STAMP)
    return f"{journal_month_prefix(started)}{stamp}_{job}_{run_id}.json"


def journal_record_time(key: str) -> datetime | None:
    """When the run of a journal key started; None for anything else."""
    if not key.startswith(JOURNAL_RUNS_PREFIX) or not key.endswith(".json"):
        return None
    leaf = key.rsplit("/", 1)[-1]
    try:
        return datetime.strptime(leaf.split("_", 1)[0], _RUN_STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def report_key(since: datetime, until: datetime, made: datetime, suffix: str = "html") -> str:
    """Where a report of [since, until) made at `made` is stored (the dates are local days)."""
    return (f"{JOURNAL_REPORTS_PREFIX}{since:{_REPORT_DAY}}-{until:{_REPORT_DAY}}_"
            f"{made.astimezone(UTC).strftime(_RUN_STAMP)}.{suffix}")


def report_key_time(key: str) -> datetime | None:
    """When a stored report was made; None for anything else."""
    if not key.startswith(JOURNAL_REPORTS_PREFIX) or "_" not in key:
        return None
    try:
        return datetime.strptime(key.rsplit("_", 1)[-1].rsplit(".", 1)[0], _RUN_STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def acknowledged_key(backup_id: str) -> str:
    return backup_prefix(backup_id) + ACKNOWLEDGED_NAME


def reserved_prefix_of(key: str) -> str | None:
    """The reserved prefix (media versions, journal) `key` lies under, or None."""
    return next((p for p in RESERVED_PREFIXES if key.startswith(p)), None)


def backup_listing_skip(reserved: str) -> str:
    """The StartAfter that resumes a listing of `backups/` past everything under `reserved`:
    every key under `backups/<name>/` sorts before `backups/<name>0` ('/' < '0')."""
    return reserved[:-1] + "0"


def is_dump_key(key: str) -> bool:
    return key.endswith(".dump")


def is_media_key(key: str) -> bool:
    """Media keys are everything outside `backups/`, in either bucket."""
    return not key.startswith(BACKUPS_PREFIX)


# Where the media sync resumes a listing once it meets the first key under
# `backups/`, so that it never pages through the dumps: backup ids start with a
# letter or digit, and '~' sorts after those in ASCII. Anything in the resumed
# listing still under `backups/` is filtered by `is_media_key`; a media key such
# as `backups0` sorts after this marker and is kept.
BACKUPS_SKIP_AFTER = BACKUPS_PREFIX + "~"
