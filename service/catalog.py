"""Backup manifests: write, read, list, and choose a fresh id.

A backup is complete if and only if its `manifest.json` exists; the manifest
is the last object written. Everything that reads backups goes through here;
service.finder resolves the id an operator typed on top of this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime

from service import layout
from service.errors import BackupNotFoundError, IntegrityError, ObjectNotFoundError
from service.storage import ObjectInfo, ObjectStore

FORMAT_VERSION = 1
# What this service writes beside the table dumps; the old tool wrote none of them.
OWN_FILES = frozenset({layout.MANIFEST_NAME, layout.SCHEMA_NAME, layout.PRIVILEGES_NAME})


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
    # The integrity watch (service.integrity): the comparison of each table's rows with the
    # previous complete backup of the same database, and the tables found shrunk. Empty (and
    # not written) when there was nothing to compare with.
    integrity: dict = field(default_factory=dict)
    database_bytes: int = 0  # pg_database_size at the snapshot (0: not recorded)
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
        for optional in ("before_restore", "integrity", "database_bytes", "disk"):
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
    acknowledged_at: str = ""  # when an operator accepted its dropped rows (acknowledged.json, S3's clock)


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


def backup_id_of(key: str) -> str | None:
    """The backup a key belongs to, as `list` prints its id; None for a key of no backup (outside
    `backups/`, directly under it, or under a reserved prefix: kept media versions, the journal).
    `list`, `show`, `verify` and every restore group keys through here, so they all see the same
    backups."""
    if not key.startswith(layout.BACKUPS_PREFIX) or layout.reserved_prefix_of(key) is not None:
        return None
    parts = key[len(layout.BACKUPS_PREFIX):].split("/")
    if len(parts) < 2:
        return None
    # The old tool also wrote `backups/<operation>/<stamp>/<dump>`; our ids never hold a '/'.
    return "/".join(parts[:2]) if len(parts) == 3 and layout.is_dump_key(key) else parts[0]


def group_backups(objects: Iterable[ObjectInfo]) -> dict[str, list[ObjectInfo]]:
    """Objects grouped by the backup they belong to (backup_id_of); the others are left out."""
    by_id: dict[str, list[ObjectInfo]] = {}
    for obj in objects:
        backup_id = backup_id_of(obj.key)
        if backup_id is not None:
            by_id.setdefault(backup_id, []).append(obj)
    return by_id


def legacy_dumps(backup_id: str, objects: Iterable[ObjectInfo]) -> list[ObjectInfo]:
    """The old tool's `<schema>-<table>.dump` objects directly under the backup's prefix; none
    unless it is a legacy backup, which holds none of this service's own files (a manifest,
    schema.dump, privileges.json): a run of ours that died halfway is incomplete, not legacy."""
    prefix = layout.backup_prefix(backup_id)
    direct = {o.key[len(prefix):]: o for o in objects
              if o.key.startswith(prefix) and "/" not in o.key[len(prefix):]}
    if direct.keys() & OWN_FILES:
        return []
    return [o for name, o in sorted(direct.items()) if layout.is_dump_key(name) and "-" in name]


_UNREAD = object()


def summarize_backup(store: ObjectStore, backup_id: str, objects: list[ObjectInfo],
                     manifest=_UNREAD) -> BackupSummary:
    """One backup as `list` shows it: complete (a readable manifest), legacy, or incomplete.
    `manifest` is its manifest when the caller has read it already (None: unreadable)."""
    if any(o.key == layout.manifest_key(backup_id) for o in objects):
        m = _read_or_none(store, backup_id) if manifest is _UNREAD else manifest
        if m is not None:
            written = {o.key: o.last_modified.isoformat() for o in objects if o.last_modified}
            return BackupSummary(backup_id, True, m.job, m.started_at, m.finished_at, len(m.tables),
                                 m.total_bytes, m, verified_at=written.get(layout.verified_key(backup_id), ""),
                                 acknowledged_at=written.get(layout.acknowledged_key(backup_id), ""))
    legacy = legacy_dumps(backup_id, objects)
    dumps = [o for o in objects if layout.is_dump_key(o.key)]
    # The old tool's ISO stamp says when its backup started; otherwise the first upload does.
    started = (layout.legacy_stamp_time(backup_id) if legacy else None) or \
        min((o.last_modified for o in objects if o.last_modified), default=None)
    return BackupSummary(backup_id, False, "", started.isoformat() if started else "", "",
                         len(legacy or dumps), sum(o.size for o in objects), legacy=bool(legacy))


def list_backup_objects(store: ObjectStore) -> Iterator[ObjectInfo]:
    """Every object under `backups/` except the reserved prefixes (media versions, the journal),
    which the listing jumps over instead of paging through."""
    start_after = ""
    while True:
        for obj in store.list_objects(layout.BACKUPS_PREFIX, start_after=start_after):
            reserved = layout.reserved_prefix_of(obj.key)
            if reserved is not None:
                start_after = layout.backup_listing_skip(reserved)
                break
            yield obj
        else:
            return


def newest_manifests(store: ObjectStore) -> Iterator[Manifest]:
    """Complete backups' manifests, the most recently written first (readable ones only)."""
    written = [o for o in list_backup_objects(store)
               if o.key.endswith("/" + layout.MANIFEST_NAME) and o.last_modified is not None]
    for obj in sorted(written, key=lambda o: o.last_modified, reverse=True):
        backup_id = obj.key[len(layout.BACKUPS_PREFIX):-len("/" + layout.MANIFEST_NAME)]
        if "/" in backup_id:
            continue
        manifest = _read_or_none(store, backup_id)
        if manifest is not None:
            yield manifest


def _read_or_none(store: ObjectStore, backup_id: str) -> Manifest | None:
    try:
        return read_manifest(store, backup_id)
    except (IntegrityError, BackupNotFoundError):
        return None


def list_backups(store: ObjectStore, *, workers: int = 1) -> list[BackupSummary]:
    """Every backup under `backups/`, complete or not, oldest first by start time or id;
    `workers` manifests are read at once (the report reads a thousand)."""
    groups = group_backups(list_backup_objects(store))
    with_manifest = [i for i, objects in groups.items() if any(o.key == layout.manifest_key(i) for o in objects)]
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="manifests") as pool:
        manifests = dict(zip(with_manifest, pool.map(lambda i: _read_or_none(store, i), with_manifest), strict=True))
    summaries = [summarize_backup(store, backup_id, objects, manifests.get(backup_id))
                 for backup_id, objects in groups.items()]
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
