"""Find the backup an operator means by the id they typed.

The id names a backup exactly when `list` prints it (catalog.summarize_backup
decides complete, legacy or incomplete, for both): then it means that backup
and no other, in every command and job. A complete one has a manifest; an
incomplete one is refused as such. A legacy backup (the old tool's) is a prefix
of `<schema>-<table>.dump` objects and none of this service's own files:
`backups/<id>/` or the nested `backups/<operation>/<stamp>/` (layout names
the stamps), which `list` prints as `<operation>/<stamp>`.

A typed id that is no backup's own may stand for others (its candidates):
- with an allocation suffix left off: `scheduled-06-04-10` for
  `scheduled-06-04-10-2` (catalog.allocate_backup_id suffixes a taken id; only
  for ids in one of the layout.ID_FORMATS forms, so `daily-06` never means
  `daily-06-04`);
- a nested legacy id typed with '-': `scheduled-06-04-10` for
  `scheduled/06-04-10`, `scheduled-2026-06-25T09:03:26-0400` likewise;
- a stamp cut short after the '/': `scheduled/2026-06-25T09:03`,
  `scheduled/2026-06-25`.
One candidate is what the id means (FoundBackup.typed_as says how it was
typed); several are refused (AmbiguousBackupError, exit 3), naming each with
its time, so that nothing is chosen behind the operator's back. An exact id
wins over every candidate; FoundBackup.others names them, for the log and `show`.
Anything else is not found, and the error lists the nearest complete backups
and, when the bucket holds any, the old tool's.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from service import catalog, layout
from service.errors import AmbiguousBackupError, BackupNotFoundError
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
    typed_as: str = ""  # the id as typed, when it was not this backup's own (its only candidate)
    others: tuple[str, ...] = ()  # restorable backups the typed id could also have stood for; not chosen

    @property
    def legacy(self) -> bool:
        return self.manifest is None


def legacy_tables(backup_id: str, objects: list[ObjectInfo]) -> tuple[LegacyTable, ...]:
    """The tables of a legacy backup (catalog.legacy_dumps), from their keys.

    The old tool backed up only `public`, whose name holds no '-': split at the first one.
    """
    prefix = layout.backup_prefix(backup_id)
    found = []
    for obj in catalog.legacy_dumps(backup_id, objects):
        schema, table = obj.key[len(prefix): -len(".dump")].split("-", 1)
        found.append(LegacyTable(schema, table, obj.key, obj.size))
    return tuple(sorted(found, key=lambda t: (t.schema, t.table)))


def find_backup(store: ObjectStore, typed: str) -> FoundBackup:
    """Resolve an operator-typed id (see the module docstring): BackupNotFoundError listing the
    nearest when nothing fits, AmbiguousBackupError naming the candidates when several do."""
    wanted = typed.strip().strip("/")
    if wanted.startswith(layout.BACKUPS_PREFIX):
        wanted = wanted[len(layout.BACKUPS_PREFIX):]
    if wanted.split("/", 1)[0] in layout.RESERVED_IDS:  # media versions, the journal: never a backup
        raise _not_found(store, typed)
    listings = _listings(wanted)
    if listings is None:
        if "/" in wanted:
            raise _not_found(store, typed)
        raise BackupNotFoundError(f"{typed!r} is not a backup id",
                                  hint="backup ids look like scheduled-06-04-10 or daily-06-04")
    groups: dict[str, list[ObjectInfo]] = {}
    for under in listings:
        groups.update(catalog.group_backups(store.list_objects(layout.BACKUPS_PREFIX + under)))
    summaries = {backup_id: catalog.summarize_backup(store, backup_id, objects)
                 for backup_id, objects in groups.items()}
    could_mean = _could_mean(wanted)
    candidates = sorted((s for s in summaries.values() if s.id != wanted and could_mean(s.id)),
                        key=lambda s: (s.started_at, s.id))
    usable = [s for s in candidates if s.complete or s.legacy]
    exact = summaries.get(wanted)
    if exact is not None and (exact.complete or exact.legacy):
        return _found(exact, groups[wanted], others=tuple(s.id for s in usable))
    if exact is None and len(usable) == 1:
        return _found(usable[0], groups[usable[0].id], typed_as=wanted)
    if exact is None and len(usable) > 1:
        raise AmbiguousBackupError(
            f"{typed!r} is not itself a backup and could mean {len(usable)} backups; nothing was chosen",
            candidates=tuple(usable), detail="candidates:\n" + "\n".join(describe_candidate(s) for s in usable),
            hint="nothing was touched; pass one of these ids exactly as 'python -m service list' prints it")
    if exact is not None:
        raise _incomplete(store, wanted, f"backup {wanted} is incomplete: it has no manifest, "
                          "so it cannot be trusted", usable)
    if candidates:
        raise _incomplete(store, wanted, f"{typed!r} matches only incomplete backups "
                          f"({', '.join(s.id for s in candidates)}): they have no manifest, so they cannot be trusted")
    raise _not_found(store, typed)


def describe_candidate(summary: catalog.BackupSummary) -> str:
    """One line naming a backup, its kind of backup and when it started."""
    state = "complete" if summary.complete else "legacy (old tool)" if summary.legacy else "incomplete"
    return f"  {summary.id}   {state}, started {summary.started_at or 'at an unknown time'}"


def _nested_form(wanted: str) -> str | None:
    """`scheduled-06-04-10` -> `scheduled/06-04-10`: a nested legacy id typed with a '-'."""
    kind = layout.id_kind(wanted)
    if kind is None:
        return None
    stamp = wanted[len(kind) + 1:]
    return f"{kind}/{stamp}" if layout.is_valid_legacy_part(stamp) else None


def _listings(wanted: str) -> list[str] | None:
    """What to list under `backups/` to see `wanted` and every candidate; None for no id at all."""
    if "/" in wanted:
        parts = wanted.split("/")
        ok = len(parts) == 2 and all(layout.is_valid_legacy_part(p) for p in parts)
        return [wanted] if ok else None  # a plain prefix: cut-short stamps are candidates too
    nested = _nested_form(wanted)
    listings = [wanted] if layout.is_valid_backup_id(wanted) else []  # the id and its suffixed siblings
    if nested is not None:
        listings.append(nested + "/")
    return listings or None


def _could_mean(wanted: str):
    """Whether a listed id is a candidate of `wanted` (see the module docstring)."""
    if "/" in wanted:
        return lambda backup_id: "/" in backup_id and backup_id.startswith(wanted)
    nested = _nested_form(wanted)
    suffixed = _suffixed_pattern(wanted)
    return lambda backup_id: backup_id == nested or bool(suffixed and suffixed.fullmatch(backup_id))


def _suffixed_pattern(typed: str) -> re.Pattern | None:
    """`typed` with an allocation suffix, only for ids in a known format."""
    kind = layout.id_kind(typed)
    if kind is None:
        return None
    try:
        datetime.strptime(typed, layout.ID_FORMATS[kind])
    except ValueError:
        return None
    return re.compile(re.escape(typed) + r"-([2-9]|[1-9][0-9]+)")


def _found(summary: catalog.BackupSummary, objects: list[ObjectInfo], *, typed_as: str = "",
           others: tuple[str, ...] = ()) -> FoundBackup:
    prefix = layout.backup_prefix(summary.id)
    if summary.complete:
        return FoundBackup(summary.id, prefix, summary.manifest, typed_as=typed_as, others=others)
    return FoundBackup(summary.id, prefix, None, legacy_tables(summary.id, objects), typed_as=typed_as,
                       others=others)


def resolution(found: FoundBackup, typed: str) -> dict:
    """Fields of a `<step>.id_resolved` warning: what was typed, what it means and what it does not;
    empty when the typed id is the backup's own and no other backup answers to it."""
    if not found.typed_as and not found.others:
        return {}
    return {"typed": typed, "chosen": found.id, "exact": not found.typed_as, "not_chosen": list(found.others)}


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


def _incomplete(store: ObjectStore, wanted: str, message: str,
                usable: Sequence[catalog.BackupSummary] = ()) -> BackupNotFoundError:
    also = "".join(f"another backup this id could stand for:\n{describe_candidate(s)}\n" for s in usable)
    return BackupNotFoundError(message, detail=also + _nearest_detail(store, wanted),
                               hint="choose a complete backup ('python -m service list')")


def _not_found(store: ObjectStore, typed: str) -> BackupNotFoundError:
    return BackupNotFoundError(
        f"no backup matches {typed!r}",
        detail=_nearest_detail(store, typed),
        hint="run 'python -m service list' and pass one of its ids",
    )
