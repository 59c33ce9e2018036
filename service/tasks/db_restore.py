"""db_restore: fac-snapshot-db -> fac-db, with the guarantees of s3_restore.

The operator's confirmation is checked by the job registry. Here: refuse an
empty snapshot (always: copying it would empty the live database) and a stale
one (unless --force), take a pre-restore backup of fac-db, then run the
db_to_db copy with the live database as its target. That copy is one
transaction on the target whose row counts are compared with the snapshot's
before COMMIT (tasks.snapshot.copy_database_between), so it is all or nothing.

How old is the snapshot? The copy that refreshed it dated it in its own
transaction (service.refresh_record): the record commits with the data or rolls
back with it, so a failed refresh leaves the old date beside the old data. A
snapshot without a record (refreshed before the record existed, or by another
tool) has an unknown age, treated as too old.
"""

from __future__ import annotations

import time

from service import clients
from service.database import connect, list_user_tables, translated_errors
from service.errors import SafetyError
from service.refresh_record import read_refresh_record
from service.tasks.restore import take_pre_restore_backup
from service.tasks.snapshot import copy_database_between


def check_snapshot(ctx) -> dict:
    """Refuse an empty snapshot, and a stale or undated one unless options['force']; return what was seen."""
    config, settings = ctx.config, ctx.config.settings
    snapshot = config.snapshot_db.name
    with connect(config.snapshot_db, sslmode=settings.pg_sslmode, autocommit=True) as conn:
        tables = list_user_tables(conn)
        with translated_errors(f"reading the refresh record of {snapshot}"):
            record = read_refresh_record(conn)
    if not tables:
        raise SafetyError(
            f"{snapshot} has no user tables; restoring it would empty {config.fac_db.name}",
            hint="restore from a backup instead: run s3_restore BACKUP_ID (see 'python -m service list')")
    limit = settings.snapshot_max_age_hours
    age = None if record is None else (ctx.now() - record.data_as_of).total_seconds() / 3600
    if age is None or age > limit:
        if record is None:
            problem = (f"{snapshot} carries no record of when its data was taken (it was refreshed by an "
                       "older version of this service or by another tool), so its age is unknown")
        else:
            problem = (f"{snapshot} may be stale: its data is from {record.data_as_of.isoformat()}, "
                       f"{age:.1f} h ago, and the limit is {limit:g} h")
        if not ctx.options.get("force"):
            raise SafetyError(
                f"{problem}; nothing was touched",
                detail="db_to_db dates the snapshot in the same transaction that replaces its data "
                "(the comment of the snapshot database); FAC_BACKUP_SNAPSHOT_MAX_AGE_HOURS sets the limit",
                hint="run db_to_db first to refresh (and date) the snapshot, repeat with --force if this "
                     "snapshot is what you want, or restore from a backup with s3_restore")
        ctx.log.warning("db_restore.stale_snapshot_forced", age_hours=-1 if age is None else round(age, 2),
                        data_as_of=record.data_as_of.isoformat() if record else "", limit_hours=limit)
    return {"snapshot_tables": len(tables), "snapshot_age_hours": round(age, 2) if age is not None else -1,
            "snapshot_data_as_of": record.data_as_of.isoformat() if record else ""}


def restore_from_snapshot(ctx) -> dict:
    """The db_restore step: checks, a pre-restore backup, then the all-or-nothing copy."""
    started = time.monotonic()
    source = ctx.config.snapshot_db.name
    live = ctx.config.fac_db
    if ctx.config.snapshot_db.same_database_as(live):  # configuration refuses it; never reach the backup
        raise SafetyError(f"refusing to copy {source} onto itself: it names {live.name}'s database "
                          f"({live.host}:{live.port}/{live.dbname}); nothing was touched",
                          hint=f"bind {source} to a database of its own")
    ctx.log.info("restore.started", source=source, target=live.name, **(ctx.confirmation or {}))
    # Both ends before anything: a fac-db older than the snapshot is refused, and the
    # pre-restore backup needs a pg_dump of fac-db's major.
    clients.plan_copy(ctx.config.settings, ctx.config.snapshot_db, ctx.config.fac_db, what="restore")
    clients.check_dump_client(ctx.config.settings, ctx.config.fac_db)
    seen = check_snapshot(ctx)
    ctx.scope.check()
    pre_restore = take_pre_restore_backup(ctx, source)
    ctx.figures_on_failure = {"pre_restore_backup": pre_restore or ""}
    ctx.scope.check()
    figures = copy_database_between(ctx, ctx.config.snapshot_db, ctx.config.fac_db, allow_live_target=True)
    result = {**seen, **{k: v for k, v in figures.items() if isinstance(v, (int, float, str, bool))},
              "pre_restore_backup": pre_restore or "", "seconds": round(time.monotonic() - started, 3)}
    ctx.log.info("db_restore.finished", **result)
    return result
