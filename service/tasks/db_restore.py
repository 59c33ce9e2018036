"""db_restore: fac-snapshot-db -> fac-db, with the guarantees of s3_restore.

The operator's confirmation is checked by the job registry. Here: refuse an
empty snapshot and an unfinished one (always: copying them would empty or
half-fill the live database), a stale one (unless --force), and one that
fac-db's known storage cannot hold beside its current contents (service.space);
then take a pre-restore backup of fac-db and run the db_to_db copy with the
live database as its target. That copy is one transaction on the target whose
row counts are compared with the snapshot's before COMMIT
(tasks.snapshot.copy_database_between), so it is all or nothing.

How old and how whole is the snapshot? The refresh that wrote it keeps a
record in the snapshot database (service.refresh_record): an all-or-nothing
copy commits it with the data, an in-place refresh says `refreshing` until it
writes `complete` at the very end, and `failed` when it stopped. An unfinished
snapshot is refused naming the S3 backup the same job run took before the
refresh. A snapshot without a record (refreshed before the record existed, or
by another tool) has an unknown age, treated as too old.
"""

from __future__ import annotations

import time

from service import clients, space
from service.database import connect, list_user_tables, translated_errors
from service.errors import SafetyError
from service.refresh_record import COMPLETE, UNKNOWN, describe_state, read_refresh_state
from service.tasks.restore import take_pre_restore_backup
from service.tasks.snapshot import APPLICATION_NAME, copy_database_between


def check_snapshot(ctx) -> dict:
    """Refuse an empty or unfinished snapshot, and a stale or undated one unless options['force'];
    return what was seen."""
    config, settings = ctx.config, ctx.config.settings
    snapshot = config.snapshot_db.name
    with connect(config.snapshot_db, sslmode=settings.pg_sslmode, autocommit=True) as conn:
        tables = list_user_tables(conn)
        with translated_errors(f"reading the refresh record of {snapshot}"):
            state, record = read_refresh_state(conn, APPLICATION_NAME)
        size = space.read_server_space(conn).database_bytes
    if not tables:
        raise SafetyError(
            f"{snapshot} has no user tables; restoring it would empty {config.fac_db.name}",
            hint="restore from a backup instead: run s3_restore BACKUP_ID (see 'python -m service list')")
    if state not in (COMPLETE, UNKNOWN):
        confirm = ctx.options.get("confirm") or config.fac_db.name
        instead = (f"run s3_restore {record.backup_id} --confirm {confirm}: the backup the same run took just "
                   "before this refresh" if record.backup_id else
                   f"run s3_restore BACKUP_ID --confirm {confirm} (see 'python -m service list')")
        raise SafetyError(
            f"{snapshot} is not a whole copy, so it cannot be restored (--force does not change that); "
            "nothing was touched",
            detail=f"{snapshot}: {describe_state(state, record)}",
            hint=f"restore from S3 instead: {instead}; or refresh the snapshot with db_to_db first")
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
            "snapshot_data_as_of": record.data_as_of.isoformat() if record else "", "snapshot_bytes": size}


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
    seen.update(space.check_restore_room(ctx, f"{source} (the snapshot)",
                                         (seen["snapshot_bytes"], False, "the snapshot database's size")))
    ctx.scope.check()
    pre_restore = take_pre_restore_backup(ctx, source)
    ctx.figures_on_failure = {"pre_restore_backup": pre_restore or ""}
    ctx.scope.check()
    figures = copy_database_between(ctx, ctx.config.snapshot_db, ctx.config.fac_db, allow_live_target=True)
    result = {**seen, **{k: v for k, v in figures.items() if isinstance(v, (int, float, str, bool))},
              "pre_restore_backup": pre_restore or "", "seconds": round(time.monotonic() - started, 3)}
    ctx.log.info("db_restore.finished", **result)
    return result
