"""Find the backup an operator means by the id they typed.

- A complete backup is one with a manifest. Ids repeat: `scheduled-06-04-10`
  comes back every year and a taken id gets `-2`, `-3` (catalog.allocate_backup_id),
  so an id in one of the layout.ID_FORMATS forms also matches its suffixed
  siblings; several matches -> the newest, and the caller says so.
- A legacy backup (written by the old tool) is a prefix holding
  `<schema>-<table>.dump` objects and neither a manifest nor `schema.dump`:
  `backups/<id>/` or the nested `backups/<operation>/<stamp>/` (layout names
  the stamps), typed as `list` prints it, `<operation>/<stamp>`, or as
  `<operation>-<stamp>`. Typed with the '/', a stamp may be cut short
  (`scheduled/2026-06-25T09:03`, `scheduled/2026-06-25`): it matches when
  exactly one legacy backup starts so, and names the candidates when several do.
- Anything else is not found, and the error lists the nearest complete backups
  and, when the bucket holds any, the old tool's.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import datetime

from service import catalog, layout
from service.errors import BackupNotFoundError, IntegrityError
from service.storage import ObjectInfo, ObjectStore

NEAREST = 5


@dataclass(frozen=True)
class LegacyTable:
    """One dump of a legacy backup; schema and table come from its key."""

    schema: str
    table: str
    key: str
    bytes: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class FoundBackup:
    """What an id resolved to: a manifest, or a legacy prefix and its dumps."""

    id: str
    prefix: str
    manifest: catalog.Manifest | None = None
    legacy_tables: tuple[LegacyTable, ...] = ()
    matched: tuple[str, ...] = field(default_factory=tuple)  # every complete id the typed one matched

    @property
    def legacy(self) -> bool:
        return self.manifest is None


def _started(manifest: catalog.Manifest) -> datetime:
    try:
        return datetime.fromisoformat(manifest.started_at)
    except ValueError:
        return datetime.min


def _sibling_pattern(typed: str) -> re.Pattern | None:
    """`typed` plus an allocation suffix, only for ids in a known format (so `daily-06`
    never matches `daily-06-04`)."""
    kind = layout.id_kind(typed)
    if kind is None:
        return None
    try:
        datetime.strptime(typed, layout.ID_FORMATS[kind])
    except ValueError:
        return None
    return re.compile(re.escape(typed) + r"(-[2-9]|-[1-9][0-9]+)?")


def _group(objects: list[ObjectInfo], base: str) -> dict[str, list[ObjectInfo]]:
    """Objects under `base` grouped by the first path component after it."""
    groups: dict[str, list[ObjectInfo]] = {}
    for obj in objects:
        rest = obj.key[len(base):]
        if "/" in rest:
            groups.setdefault(rest.split("/", 1)[0], []).append(obj)
    return groups


def legacy_tables(objects: list[ObjectInfo], prefix: str) -> tuple[LegacyTable, ...]:
    """The `<schema>-<table>.dump` objects directly under `prefix`.

    The old tool backed up only `public`, whose name holds no '-': split at the first one.
    """
    found = []
    for obj in objects:
        name = obj.key[len(prefix):]
        if "/" in name or not layout.is_dump_key(name) or "-" not in name:
            continue
        schema, table = name[: -len(".dump")].split("-", 1)
        found.append(LegacyTable(schema, table, obj.key, obj.size))
    return tuple(sorted(found, key=lambda t: (t.schema, t.table)))


def is_legacy_prefix(objects: list[ObjectInfo], prefix: str) -> bool:
    names = {o.key[len(prefix):] for o in objects}
    return (not names & {layout.MANIFEST_NAME, layout.SCHEMA_NAME, layout.PRIVILEGES_NAME}
            and bool(legacy_tables(objects, prefix)))


def find_backup(store: ObjectStore, typed: str) -> FoundBackup:
    """Resolve an operator-typed id; BackupNotFoundError (listing the nearest) if nothing fits."""
    wanted = typed.strip().strip("/")
    if wanted.startswith(layout.BACKUPS_PREFIX):
        wanted = wanted[len(layout.BACKUPS_PREFIX):]
    if wanted.split("/", 1)[0] in layout.RESERVED_IDS:  # media versions, the journal: never a backup
        raise _not_found(store, typed)
    if "/" in wanted:
        found = _find_legacy(store, wanted, typed, prefix_match=True)
        if found is not None:
            return found
        raise _not_found(store, typed)
    kind = layout.id_kind(wanted)
    if not layout.is_valid_backup_id(wanted):
        # `<operation>-<ISO stamp>`: the nested legacy form typed with a '-' (its ':' is no id of ours)
        found = _find_legacy(store, f"{kind}/{wanted[len(kind) + 1:]}", typed, prefix_match=False) \
            if kind is not None else None
        if found is not None:
            return found
        raise BackupNotFoundError(f"{typed!r} is not a backup id",
                                  hint="backup ids look like scheduled-06-04-10 or daily-06-04")
    groups = _group(list(store.list_objects(layout.BACKUPS_PREFIX + wanted)), layout.BACKUPS_PREFIX)
    pattern = _sibling_pattern(wanted)
    candidates = [i for i in groups if i == wanted or (pattern is not None and pattern.fullmatch(i))]
    manifests = []
    for backup_id in candidates:
        if any(o.key == layout.manifest_key(backup_id) for o in groups[backup_id]):
            try:
                manifests.append(catalog.read_manifest(store, backup_id))
            except (IntegrityError, BackupNotFoundError):
                continue  # an unreadable manifest is an incomplete backup
    if manifests:
        newest = max(manifests, key=lambda m: (_started(m), m.id))
        return FoundBackup(newest.id, layout.backup_prefix(newest.id), newest,
                           matched=tuple(sorted(m.id for m in manifests)))
    if wanted in groups and is_legacy_prefix(groups[wanted], layout.backup_prefix(wanted)):
        prefix = layout.backup_prefix(wanted)
        return FoundBackup(wanted, prefix, None, legacy_tables(groups[wanted], prefix))
    if kind is not None:
        found = _find_legacy(store, f"{kind}/{wanted[len(kind) + 1:]}", typed, prefix_match=False)
        if found is not None:
            return found
    if candidates:
        raise BackupNotFoundError(
            f"backup {wanted} is incomplete: it has no manifest, so it cannot be trusted",
            detail=_nearest_detail(store, wanted),
            hint="choose a complete backup ('python -m service list')",
        )
    raise _not_found(store, typed)


def _find_legacy(store: ObjectStore, path: str, typed: str, *, prefix_match: bool) -> FoundBackup | None:
    """The nested legacy backup `<operation>/<stamp>`; with `prefix_match` also the only one whose
    stamp starts with the typed one (BackupNotFoundError naming them when several do)."""
    parts = path.split("/")
    if len(parts) != 2 or not all(layout.is_valid_legacy_part(p) for p in parts):
        return None
    operation, stamp = parts
    base = f"{layout.BACKUPS_PREFIX}{operation}/"
    groups = _group(list(store.list_objects(base + (stamp if prefix_match else stamp + "/"))), base)
    legacy = sorted(s for s, objects in groups.items()
                    if (s == stamp or prefix_match) and is_legacy_prefix(objects, f"{base}{s}/"))
    if stamp in legacy:
        legacy = [stamp]  # typed in full: never ambiguous
    if len(legacy) > 1:
        shown = ", ".join(f"{operation}/{s}" for s in legacy[:NEAREST])
        more = f" and {len(legacy) - NEAREST} more" if len(legacy) > NEAREST else ""
        raise BackupNotFoundError(
            f"{typed!r} matches {len(legacy)} legacy backups; nothing was chosen",
            detail=f"candidates: {shown}{more}",
            hint="type more of the id, as 'python -m service list' prints it",
        )
    if not legacy:
        return None
    prefix = f"{base}{legacy[0]}/"
    return FoundBackup(f"{operation}/{legacy[0]}", prefix, None, legacy_tables(groups[legacy[0]], prefix))


def nearest_complete(store: ObjectStore, typed: str, n: int = NEAREST, *,
                     summaries: list[catalog.BackupSummary] | None = None) -> list[str]:
    """Complete backup ids most like `typed`: same kind first, then the most similar spelling."""
    kind = layout.id_kind(typed)
    summaries = catalog.list_backups(store) if summaries is None else summaries
    complete = [b for b in summaries if b.complete]

    def rank(summary):
        similar = difflib.SequenceMatcher(None, typed, summary.id).ratio()
        return (layout.id_kind(summary.id) == kind, similar, summary.started_at)

    return [b.id for b in sorted(complete, key=rank, reverse=True)[:n]]


def nearest_legacy(store: ObjectStore, typed: str, n: int = NEAREST, *,
                   summaries: list[catalog.BackupSummary] | None = None) -> list[str]:
    """The old tool's backups most like `typed`, most similar spelling first, newest on a tie."""
    summaries = catalog.list_backups(store) if summaries is None else summaries
    legacy = [b for b in summaries if b.legacy]

    def rank(summary):
        return (difflib.SequenceMatcher(None, typed, summary.id).ratio(), summary.started_at)

    return [b.id for b in sorted(legacy, key=rank, reverse=True)[:n]]


def _nearest_detail(store: ObjectStore, typed: str) -> str:
    """What the bucket offers instead: complete backups first, then the old tool's (legacy) ones."""
    summaries = catalog.list_backups(store)
    complete = nearest_complete(store, typed, summaries=summaries)
    legacy = nearest_legacy(store, typed, summaries=summaries)
    parts = ["nearest complete backups: " + ", ".join(complete) if complete
             else "the backups bucket holds no complete backup of this service"]
    if legacy:
        parts.append("nearest legacy backups (old tool): " + ", ".join(legacy))
    elif not complete:
        parts[0] = "the backups bucket holds no backup at all, complete or legacy"
    return "; ".join(parts)


def _not_found(store: ObjectStore, typed: str) -> BackupNotFoundError:
    return BackupNotFoundError(
        f"no backup matches {typed!r}",
        detail=_nearest_detail(store, typed),
        hint="run 'python -m service list' and pass one of its ids",
    )
