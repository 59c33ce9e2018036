"""verify_backup: a restore drill that proves a backup can be restored.

1. Choose the backup: the id given (as a restore would resolve it, legacy ids
   too), or the newest complete one.
2. Check every object through service.verify (the restore's own check): each
   dump present, as long as the manifest says, with the recorded sha256, and
   readable by `pg_restore --list`.
3. With a scratch database bound (FAC_BACKUP_RESTORE_TEST_DB_SERVICE), load the
   backup into it with the restore's own code (service.tasks.restore), inside
   one transaction that ends with the restore's row-count check against the
   manifest, then ROLL BACK instead of committing: the scratch database is left
   exactly as it was, so the drill drops everything it created.
4. Record the success beside the backup, `verified.json` (when, which checks),
   so the freshness of drills (fac_backup_last_verified_backup_timestamp_seconds
   and its alert) survives a restart of the daemon. Only for a backup that still
   has its manifest (a prune may have removed it meanwhile: nothing is written
   into a prefix that is going away); legacy backups get no record.

The scratch binding can never be fac-db or fac-snapshot-db: config.py refuses
it, and the drill checks again before connecting.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

from service import catalog, clients, layout, progress
from service.errors import BackupNotFoundError, ObjectNotFoundError, RestoreError, SafetyError, ServiceError
from service.finder import FoundBackup, find_backup, resolution
from service.loader import Session
from service.pgtools import INHERITED_ENV, build_pg_env, build_psql_command
from service.storage import ObjectStore
from service.tasks import restore
from service.verify import verify_backup
from service.watchdog import watch_sessions

APPLICATION_NAME = "fac-backup-drill"


def newest_complete(store: ObjectStore) -> FoundBackup:
    """The complete backup that started last (by its manifest), as a FoundBackup."""
    def started(summary) -> datetime:
        return datetime.fromisoformat(summary.started_at)

    complete = [s for s in catalog.list_backups(store) if s.complete and s.manifest is not None]
    if not complete:
        raise BackupNotFoundError("there is no complete backup to verify",
                                  hint="run a backup first ('python -m service run on_demand_backup')")
    newest = max(complete, key=lambda s: (started(s), s.id))
    return FoundBackup(newest.id, layout.backup_prefix(newest.id), newest.manifest)


def choose_backup(store: ObjectStore, args: tuple[str, ...], log) -> FoundBackup:
    """The backup named in `args` (resolved as a restore would), or the newest complete one."""
    if not args:
        return newest_complete(store)
    found = find_backup(store, args[0])
    if resolved := resolution(found, args[0]):
        log.warning("drill.id_resolved", **resolved)
    return found


def rehearse_restore(ctx, store: ObjectStore, found: FoundBackup) -> int:
    """Load `found` into the scratch database in one transaction, check it, roll it back.

    Returns the number of tables loaded; raises RestoreError when anything,
    including the row-count check, failed.
    """
    config, settings = ctx.config, ctx.config.settings
    scratch = config.restore_test_db
    for protected in (config.fac_db, config.snapshot_db):
        if scratch.same_database_as(protected):
            raise SafetyError(f"the drill's scratch binding {scratch.name} points at {protected.name}; refused",
                              hint="bind a database of its own (FAC_BACKUP_RESTORE_TEST_DB_SERVICE)")
    env = build_pg_env(scratch, sslmode=settings.pg_sslmode, application_name=APPLICATION_NAME)
    programs = restore.choose_programs(ctx, found, scratch)
    psql = build_psql_command(programs.target.program("psql"), single_transaction=False)
    with Session(psql, env, scope=ctx.scope, target=scratch.name) as session, \
            watch_sessions(ctx.progress, scratch, settings.pg_sslmode, APPLICATION_NAME):
        tables = restore.load_backup(ctx, session, store, found, scratch, env, programs=programs)
        ctx.scope.check()
        ctx.progress.set_doing(f"rolling back the drill's restore in {scratch.name}")
        roll_back(session)
    return tables


def roll_back(session: Session) -> None:
    """End the session's transaction with ROLLBACK; psql must exit 0, proving that every
    statement before it (the row-count check included) succeeded."""
    session.execute("ROLLBACK;\n")
    try:
        session.psql.stdin.close()
    except OSError:
        pass
    code = session.psql.wait()
    if code != 0:
        raise RestoreError(f"the drill's restore into {session.target} failed (psql exited with status {code})",
                           detail=session.psql.stderr_tail(),
                           hint="the backup does not restore as recorded; nothing was kept in the scratch database")


def verify_backup_step(ctx) -> dict:
    """The verify_backup step; its figures feed fac_backup_last_verified_backup_timestamp_seconds."""
    settings = ctx.config.settings
    store = ctx.backups_store()
    started = time.monotonic()
    found = choose_backup(store, ctx.args, ctx.log)
    ctx.log.info("drill.started", backup_id=found.id, legacy=found.legacy,
                 scratch=ctx.config.restore_test_db.name if ctx.config.restore_test_db else "")
    rehearse = ctx.config.restore_test_db is not None
    tables = len(found.manifest.tables if found.manifest else found.legacy_tables)
    ctx.progress.expect(bytes=progress.expected_read_bytes(found, verify=True, load=rehearse),
                        items=tables if rehearse else None)
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}  # `--list` needs no server
    ctx.progress.set_doing(f"verifying backup {found.id}")
    figures = verify_backup(store, found, parallel=settings.parallel,
                            pg_restore=clients.archive_reader(settings, found.manifest), env=env, scope=ctx.scope)
    ctx.log.info("drill.verified", backup_id=found.id, objects=figures["objects"], bytes=figures["bytes"])
    figures["restored_tables"] = 0
    if ctx.config.restore_test_db is not None:
        ctx.scope.check()
        rehearsal = time.monotonic()
        figures["restored_tables"] = rehearse_restore(ctx, store, found)
        # The recovery time demonstrated at this size: the real (rolled-back) restore alone.
        figures["restore_seconds"] = round(time.monotonic() - rehearsal, 3)
        ctx.log.info("drill.restored", backup_id=found.id, tables=figures["restored_tables"],
                     scratch=ctx.config.restore_test_db.name)
    if found.manifest is not None:
        figures["rows"] = found.manifest.total_rows
        figures["backup_started_at"] = found.manifest.started_at
    figures["seconds"] = round(time.monotonic() - started, 3)
    if found.manifest is not None:
        figures["recorded"] = record_verified(ctx, store, found.id, figures)
    return figures


def record_verified(ctx, store: ObjectStore, backup_id: str, figures: dict) -> bool:
    """Write `verified.json` beside a backup the drill proved; False (logged) when the backup's
    manifest is gone or the write fails: the drill itself still succeeded."""
    record = {"backup_id": backup_id, "verified_at": datetime.now(UTC).isoformat(),
              "backup_started_at": figures.get("backup_started_at", ""), "objects": figures["objects"],
              "bytes": figures["bytes"], "restored_tables": figures["restored_tables"]}
    try:
        store.head(layout.manifest_key(backup_id))  # pruned meanwhile: leave the prefix alone
        store.put_bytes(layout.verified_key(backup_id), json.dumps(record, indent=2).encode(),
                        content_type="application/json")
    except ObjectNotFoundError:
        ctx.log.warning("drill.not_recorded", backup_id=backup_id, reason="the backup was deleted meanwhile")
        return False
    except ServiceError as exc:
        ctx.log.warning("drill.not_recorded", backup_id=backup_id, reason=exc.message)
        return False
    ctx.log.info("drill.recorded", backup_id=backup_id, key=layout.verified_key(backup_id))
    return True
