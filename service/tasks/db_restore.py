"""db_restore: fac-snapshot-db -> fac-db, with the guarantees of s3_restore.

The operator's confirmation is checked by the job registry. Here: refuse an
empty snapshot (always: copying it would empty the live database) and a stale
one (unless --force), take a pre-restore backup of fac-db, then run the
db_to_db copy with the live database as its target. That copy is one
transaction on the target whose row counts are compared with the snapshot's
before COMMIT (tasks.snapshot.copy_database_between), so it is all or nothing.

How old is the snapshot? db_to_db leaves no timestamp in the snapshot
database, so its age is measured by the newest complete backup of a job that
refreshes it (initial, deploy, on-demand: each runs db_to_s3 just before
db_to_db). No such backup -> the age is unknown, treated as too old.
"""

from __future__ import annotations

import time
from datetime import datetime

from service import catalog
from service.database import connect, list_user_tables
from service.errors import SafetyError
from service.tasks.restore import take_pre_restore_backup
from service.tasks.snapshot import copy_database_between

SNAPSHOT_REFRESHING_JOBS = ("initial_backup", "deploy_backup", "on_demand_backup")


def snapshot_refreshed_at(store) -> datetime | None:
    """When fac-snapshot-db was last refreshed, as far as the backups bucket tells."""
    newest = None
    for summary in catalog.list_backups(store):
        if not summary.complete or summary.job not in SNAPSHOT_REFRESHING_JOBS:
            continue
        try:
            finished = datetime.fromisoformat(summary.finished_at)
        except ValueError:
            continue
        if newest is None or finished > newest:
            newest = finished
    return newest


def check_snapshot(ctx) -> dict:
    """Refuse an empty snapshot, and a stale one unless options['force']; return what was seen."""
    config, settings = ctx.config, ctx.config.settings
    with connect(config.snapshot_db, sslmode=settings.pg_sslmode, autocommit=True) as conn:
        tables = list_user_tables(conn)
    if not tables:
        raise SafetyError(
            f"{config.snapshot_db.name} has no user tables; restoring it would empty {config.fac_db.name}",
            hint="restore from a backup instead: run s3_restore BACKUP_ID (see 'python -m service list')")
    refreshed = snapshot_refreshed_at(ctx.backups_store())
    limit = settings.snapshot_max_age_hours
    age = None if refreshed is None else (ctx.now() - refreshed).total_seconds() / 3600
    if age is None or age > limit:
        seen = "unknown (no initial, deploy or on-demand backup found)" if age is None else f"{age:.1f} h"
        if not ctx.options.get("force"):
            raise SafetyError(
                f"{config.snapshot_db.name} may be stale: its age is {seen}, the limit is {limit:g} h; "
                "nothing was touched",
                detail="the age is that of the newest initial, deploy or on-demand backup, "
                "since those jobs refresh the snapshot",
                hint="repeat with --force if this snapshot is what you want, or restore from a backup")
        ctx.log.warning("db_restore.stale_snapshot_forced", age=seen, limit_hours=limit)
    return {"snapshot_tables": len(tables), "snapshot_age_hours": round(age, 2) if age is not None else -1}


def restore_from_snapshot(ctx) -> dict:
    """The db_restore step: checks, a pre-restore backup, then the all-or-nothing copy."""
    started = time.monotonic()
    seen = check_snapshot(ctx)
    ctx.scope.check()
    pre_restore = take_pre_restore_backup(ctx)
    ctx.figures_on_failure = {"pre_restore_backup": pre_restore or ""}
    ctx.scope.check()
    figures = copy_database_between(ctx, ctx.config.snapshot_db, ctx.config.fac_db, allow_live_target=True)
    result = {**seen, **{k: v for k, v in figures.items() if isinstance(v, (int, float, str, bool))},
              "pre_restore_backup": pre_restore or "", "seconds": round(time.monotonic() - started, 3)}
    ctx.log.info("db_restore.finished", **result)
    return result
