"""The integrity watch: does a backup hold fewer rows than the one before it?

A backup of damaged data succeeds like any other: after a bad migration or a
buggy admin action every later backup is "successful", and 60 days on the
bucket's expiry has removed every backup made before the damage. So each
backup compares its per-table row counts with the previous complete backup of
the same database (the newest manifest written before it, whatever its kind)
and records the comparison in its manifest (`integrity`). FAC's data is
mostly append-only: a table that lost more than FAC_BACKUP_SHRINK_THRESHOLD_PERCENT
of its rows (any loss at 0), or that is gone, is flagged, unless it is one of
FAC_BACKUP_SHRINK_ALLOWED_TABLES (sessions, revoked access: recorded as
`allowed`, never flagged). A flag is one `backup.rows_dropped` warning naming
each table with before and after, the manifest's record (shown by `show` and
the report), the metric `fac_backup_rows_dropped_tables` and a line in the
run's notification.

A legitimate purge must not page forever: the next clean comparison clears
the metric (it reads the newest backup only), and `acknowledge_drop BACKUP_ID
[NOTE]` records `acknowledged.json` beside the flagged backup, which clears it
at once. Until it is acknowledged, the retention keeps the flagged backup's
baseline (the newest backup taken before the drop), whatever its age: the
bucket's own expiry still deletes it (docs/evidence.md: The integrity watch).

After a restore the next backup compares with the pre-restore backup: rows the
restore took away are flagged too, and the flag says its baseline was taken
before a restore.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from service import catalog, layout
from service.errors import ObjectNotFoundError, ServiceError, UsageError
from service.finder import find_backup

MAX_BASELINE_READS = 20  # manifests read, newest first, to find one of the same database


def compare_tables(previous: catalog.Manifest, tables, *, allowed: tuple[str, ...] | frozenset,
                   threshold_percent: float) -> dict:
    """The manifest's `integrity` record: `tables` (catalog.TableEntry) against `previous`.

    Pure. A table is flagged (`dropped`) when its rows fell by more than
    `threshold_percent` of the previous count and by at least one row, or when
    it is gone; a shrunk table of `allowed` goes to `allowed` instead.
    """
    now = {f"{t.schema}.{t.table}": t.rows for t in tables}
    dropped, shrunk_allowed = [], []
    for before in previous.tables:
        name = f"{before.schema}.{before.table}"
        after = now.get(name)
        lost = before.rows - (after or 0)
        if lost <= 0:
            continue
        entry = {"table": name, "before": before.rows, "after": after,
                 "percent": round(100.0 * lost / before.rows, 2) if before.rows else 100.0}
        if name in allowed:
            shrunk_allowed.append(entry)
        elif after is None or lost > before.rows * threshold_percent / 100.0:
            dropped.append(entry)
    return {"baseline": previous.id, "baseline_started_at": previous.started_at,
            "baseline_before_restore": bool(previous.before_restore),
            "tables_compared": len(previous.tables), "threshold_percent": threshold_percent,
            "dropped": dropped, "allowed": shrunk_allowed}


def dropped_tables(manifest: catalog.Manifest | None) -> list[dict]:
    """The tables a backup flagged (empty for a clean one, or one with nothing to compare)."""
    if manifest is None:
        return []
    return list((manifest.integrity or {}).get("dropped") or [])


def find_baseline(store, database: str) -> catalog.Manifest | None:
    """The newest complete backup of `database`, or None (a first backup)."""
    for read, manifest in enumerate(catalog.newest_manifests(store)):
        if manifest.database == database:
            return manifest
        if read + 1 >= MAX_BASELINE_READS:
            break
    return None


def read_baseline(ctx, store) -> catalog.Manifest | None:
    """The baseline a backup starting now compares with (find_baseline), read once per backup: its
    progress estimate uses it too. None for a first backup, or when it cannot be read (a warning).
    Never raises: the watch must not fail a backup."""
    try:
        return find_baseline(store, ctx.config.fac_db.dbname)
    except ServiceError as exc:
        ctx.log.warning("backup.integrity_check_failed", error=exc.message, detail=exc.detail,
                        hint="the backup is written without a comparison; the next one compares again")
    except Exception:  # noqa: BLE001 - the watch must never fail the backup it watches
        ctx.log.exception("backup.integrity_check_failed")
    return None


def check_backup(ctx, baseline: catalog.Manifest | None, tables) -> dict:
    """The comparison of a backup about to be written (its TableEntry list) with `baseline`; {} when
    there is nothing to compare with or the comparison could not run. Never raises."""
    if baseline is None:
        return {}
    settings = ctx.config.settings
    try:
        record = compare_tables(baseline, tables, allowed=settings.shrink_allowed_tables,
                                threshold_percent=settings.shrink_threshold_percent)
    except Exception:  # noqa: BLE001 - the watch must never fail the backup it watches
        ctx.log.exception("backup.integrity_check_failed")
        return {}
    if record["dropped"]:
        ctx.log.warning("backup.rows_dropped", baseline=record["baseline"],
                        tables=[f"{d['table']}: {d['before']} -> {d['after'] if d['after'] is not None else 'gone'}"
                                for d in record["dropped"]],
                        threshold_percent=record["threshold_percent"],
                        baseline_before_restore=record["baseline_before_restore"],
                        hint="if the data was deleted by mistake, restore from the baseline (kept until the drop "
                             "is acknowledged); if it was a legitimate purge, run acknowledge_drop BACKUP_ID")
    for entry in record["allowed"]:
        ctx.log.info("backup.rows_shrunk_allowed", table=entry["table"], before=entry["before"],
                     after=entry["after"])
    return record


def read_acknowledgement(store, backup_id: str) -> dict | None:
    """The acknowledgement recorded beside `backup_id`, or None."""
    try:
        return json.loads(store.get_bytes(layout.acknowledged_key(backup_id)))
    except ObjectNotFoundError:
        return None
    except ValueError:
        return {"unreadable": True}  # someone wrote it: an acknowledgement all the same


def acknowledge_drop_step(ctx) -> dict:
    """The acknowledge_drop step: record that a flagged backup's drop was legitimate."""
    store = ctx.backups_store()
    found = find_backup(store, ctx.args[0])
    dropped = dropped_tables(found.manifest)
    if not dropped:
        raise UsageError(f"backup {found.id} flagged no dropped rows; nothing to acknowledge",
                         hint="'python -m service show BACKUP_ID' shows a backup's comparison")
    note = ctx.args[1] if len(ctx.args) > 1 else ""
    record = {"backup_id": found.id, "acknowledged_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "note": note, "run_id": ctx.run_id, "baseline": found.manifest.integrity.get("baseline", ""),
              "tables": [d["table"] for d in dropped], "space": ctx.config.space or ""}
    try:
        store.head(layout.manifest_key(found.id))  # pruned meanwhile: leave the prefix alone
    except ObjectNotFoundError as exc:
        raise UsageError(f"backup {found.id} was deleted meanwhile; nothing was recorded") from exc
    store.put_bytes(layout.acknowledged_key(found.id), json.dumps(record, indent=2).encode("utf-8"),
                    content_type="application/json")
    ctx.log.info("integrity.acknowledged", backup_id=found.id, tables=record["tables"], note=note,
                 baseline=record["baseline"])
    return {"backup_id": found.id, "tables": len(dropped), "baseline": record["baseline"], "note": note}
