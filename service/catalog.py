"""Backup manifests: write, read, list, and choose a fresh id.

A backup is complete if and only if its `manifest.json` exists; the manifest
is the last object written. Everything that reads backups goes through here;
service.finder resolves the id an operator typed on top of this module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

from service import layout
from service.errors import BackupNotFoundError, IntegrityError, ObjectNotFoundError
from service.storage import ObjectStore

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TableEntry:
    """One table's dump as recorded in a manifest."""

    schema: str
    table: str
    key: str
    bytes: int
    sha256: str
    rows: int


@dataclass(frozen=True)
class Manifest:
    """Everything a restore needs to trust a backup."""

    id: str
    job: str
    started_at: str
    finished_at: str
    server_version: str
    pg_dump_version: str
    database: str
    tables: tuple[TableEntry, ...]
    schema: dict = field(default_factory=dict)  # {"key", "bytes", "sha256"} of schema.dump
    # {"key", "bytes", "sha256", "privileges"} of privileges.json; empty in backups made
    # before privileges were kept (they restore without grants, with a warning)
    privileges: dict = field(default_factory=dict)
    compression: int = 1
    compression_spec: str = ""  # what pg_dump used: "gzip:1", "zstd:3", "lz4:1" or "none" (older: gzip level)
    format_version: int = FORMAT_VERSION
    # A pre-restore backup names the restore it was taken before: space, binding, confirmation
    # given, source (backup id or snapshot binding) and run id. Empty (and not written) otherwise.
    before_restore: dict = field(default_factory=dict)
    # What the backup occupies on disk once restored, measured at backup time (service.space):
    # {"restored_bytes", "tables": [[schema, table, bytes], ...], "matviews_bytes"}.
    # Each table's bytes are its on-disk size with TOAST and indexes. Empty in older backups
    # (a restore then estimates from the dumps, roughly). A top-level key, so that older
    # versions of the service, which ignore keys they do not know, still read the manifest.
    disk: dict = field(default_factory=dict)

    @property
    def restored_bytes(self) -> int:
        """On-disk bytes a restore creates (0: not recorded)."""
        return int(self.disk.get("restored_bytes", 0) or 0)

    @property
    def total_bytes(self) -> int:
        return (sum(t.bytes for t in self.tables) + int(self.schema.get("bytes", 0))
                + int(self.privileges.get("bytes", 0)))

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["tables"] = [asdict(t) for t in self.tables]
        for optional in ("before_restore", "disk"):
            if not data[optional]:
                del data[optional]
        return json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, backup_id: str) -> Manifest:
        try:
            data = json.loads(raw)
            tables = tuple(TableEntry(**t) for t in data.pop("tables"))
            known = {f for f in cls.__dataclass_fields__}
            return cls(tables=tables, **{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, KeyError) as exc:
            raise IntegrityError(
                f"the manifest of backup {backup_id} is unreadable",
                detail=str(exc),
                hint="treat this backup as incomplete; choose another one",
            ) from exc


@dataclass(frozen=True)
class BackupSummary:
    """One backup as `list` shows it."""

    id: str
    complete: bool
    job: str = ""
    started_at: str = ""
    finished_at: str = ""
    tables: int = 0
    bytes: int = 0
    manifest: Manifest | None = None
    legacy: bool = False  # written by the old tool: dumps only, no manifest, no schema.dump
    verified_at: str = ""  # when a drill last proved it restorable (its verified.json, S3's clock)


def write_manifest(store: ObjectStore, manifest: Manifest) -> None:
    """Write the manifest: the last object of a backup, and what makes it complete."""
    store.put_bytes(layout.manifest_key(manifest.id), manifest.to_json())


def read_manifest(store: ObjectStore, backup_id: str) -> Manifest:
    """The manifest of `backup_id`; BackupNotFoundError when it has none."""
    try:
        raw = store.get_bytes(layout.manifest_key(backup_id))
    except ObjectNotFoundError as exc:
        raise BackupNotFoundError(
            f"backup {backup_id} has no manifest (it is incomplete or does not exist)",
            hint="run 'python -m service list' to see complete backups",
        ) from exc
    return Manifest.from_json(raw, backup_id)


def list_backups(store: ObjectStore) -> list[BackupSummary]:
    """Every backup under `backups/`, complete or not, oldest first by start time or id."""
    by_id: dict[str, list] = {}
    for obj in store.list_objects(layout.BACKUPS_PREFIX):
        rest = obj.key[len(layout.BACKUPS_PREFIX):]
        if "/" not in rest or obj.key.startswith(layout.MEDIA_VERSIONS_PREFIX):
            continue
        parts = rest.split("/")
        # The old tool also wrote `backups/<operation>/<stamp>/<dump>`; our ids never hold a '/'.
        backup_id = "/".join(parts[:2]) if len(parts) == 3 and layout.is_dump_key(obj.key) else parts[0]
        by_id.setdefault(backup_id, []).append(obj)
    summaries = []
    for backup_id, objects in by_id.items():
        if any(o.key == layout.manifest_key(backup_id) for o in objects):
            try:
                m = read_manifest(store, backup_id)
            except (IntegrityError, BackupNotFoundError):
                m = None
            if m is not None:
                verified = next((o.last_modified for o in objects
                                 if o.key == layout.verified_key(backup_id) and o.last_modified), None)
                summaries.append(
                    BackupSummary(backup_id, True, m.job, m.started_at, m.finished_at, len(m.tables),
                                  m.total_bytes, m, verified_at=verified.isoformat() if verified else "")
                )
                continue
        dumps = [o for o in objects if layout.is_dump_key(o.key)]
        legacy = bool(dumps) and not any(o.key.endswith("/" + layout.SCHEMA_NAME) for o in objects)
        # The old tool's ISO stamp says when its backup started; otherwise the first upload does.
        started = (layout.legacy_stamp_time(backup_id) if legacy else None) or \
            min((o.last_modified for o in objects if o.last_modified), default=None)
        summaries.append(
            BackupSummary(
                backup_id, False, "", started.isoformat() if started else "", "",
                len(dumps), sum(o.size for o in objects), legacy=legacy,
            )
        )
    return sorted(summaries, key=lambda s: (s.started_at or "", s.id))


def allocate_backup_id(store: ObjectStore, base_id: str) -> str:
    """`base_id`, or `base_id-2`, `-3`... when anything already lives under that prefix.

    A run never overwrites an earlier backup, complete or not.
    """
    candidate, n = base_id, 1
    while True:
        if next(iter(store.list_objects(layout.backup_prefix(candidate))), None) is None:
            return candidate
        n += 1
        candidate = f"{base_id}-{n}"


def now_iso(tz) -> str:
    """ISO 8601 with offset, to the second, in the service's time zone."""
    return datetime.now(tz).isoformat(timespec="seconds")
