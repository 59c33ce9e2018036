"""s3_restore: bring fac-db back to a backup, all or nothing.

1. Find the backup (finder) and verify it before touching anything: every dump
   present with its recorded size and sha256, streamed and hashed from S3.
2. Take a pre-restore backup of fac-db, so the restore can be undone.
3. One psql session, one transaction (loader.Session): drop the user schemas
   of fac-db, then pump `pg_restore -f -` output into it: schema.dump's
   pre-data, every table's data (each streamed from S3 while the next one is
   already downloading), schema.dump's post-data, the sequence values, a DO
   block comparing every table's rows with the manifest, and last the
   privileges of privileges.json (service.privileges). COMMIT is sent
   only when every producer exited 0 and every stream matched its manifest;
   otherwise psql is killed mid-transaction and PostgreSQL rolls back.
Sequence values are set after schema.dump's post-data, which refreshes the
materialized views: a view whose query draws from a sequence (FAC's do) must
not leave that sequence ahead of the value backed up.
Backups made before privileges were kept restore without grants, with a
warning (`restore.privileges_not_in_backup`).
Legacy backups (the old tool's; no manifest) cannot be verified: the log says
so. They keep fac-db's definitions and replace the rows of their tables, in
the same single transaction (service.tasks.legacy_restore).
"""

from __future__ import annotations

import hashlib
import tempfile
import time

from service import clients, kinds, layout, privileges, progress, space
from service.database import connect, describe_endpoint, list_user_tables, translated_errors
from service.errors import IntegrityError, JobAbortedError, RestoreError, ServiceError
from service.finder import FoundBackup, find_backup, resolution
from service.loader import (
    Session,
    build_count_check_sql,
    build_reset_sql,
    load_archive,
    quote_ident,
)
from service.pgtools import build_pg_env, build_pg_restore_command, build_psql_command
from service.streams import ObjectReader
from service.tasks import legacy_restore
from service.tasks.backup import backup_database
from service.verify import check_listing, read_toc, verify_backup
from service.watchdog import watch_sessions

APPLICATION_NAME = "fac-backup-restore"  # how an operator (or a test) finds the restore's session

USER_SCHEMAS_SQL = """
SELECT n.nspname FROM pg_namespace n
WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
ORDER BY n.nspname
"""


def list_user_schemas(db, sslmode: str) -> list[str]:
    """Schemas of `db` that a restore replaces (not system, not created by an extension)."""
    with connect(db, sslmode=sslmode, autocommit=True) as conn, translated_errors("listing schemas"):
        return [row[0] for row in conn.execute(USER_SCHEMAS_SQL).fetchall()]


def take_pre_restore_backup(ctx, source: str = "") -> str | None:
    """An ordinary backup of fac-db (`pre-restore-...`) whose manifest names the restore (space,
    binding, confirmation, `source`, run id); None when fac-db has no user tables (an empty
    database has nothing to undo, and db_to_s3 refuses an empty one)."""
    with connect(ctx.config.fac_db, sslmode=ctx.config.settings.pg_sslmode, autocommit=True) as conn:
        tables = list_user_tables(conn)
    if not tables:
        ctx.log.info("restore.pre_restore_skipped", reason=f"{ctx.config.fac_db.name} has no user tables")
        return None
    figures = backup_database(ctx, kinds.PRE_RESTORE, before_restore={
        **(ctx.confirmation or {}), "source": source, "run_id": ctx.run_id})
    ctx.log.info("restore.pre_restore_backup", backup_id=figures["backup_id"])
    return figures["backup_id"]


def choose_programs(ctx, found: FoundBackup, target) -> clients.CopyClients:
    """pg_restore and psql for restoring `found` into binding `target`, from both ends' versions
    (the backup's manifest, the target server); refuses a target older than the backup's source."""
    settings = ctx.config.settings
    manifest = found.manifest
    return clients.choose_restore_clients(
        clients.installed_clients(settings),
        dumped_by=manifest.pg_dump_version if manifest else None,
        source_server=manifest.server_version if manifest else None,
        target=clients.probe_server(target, settings.pg_sslmode), backup_id=found.id, target_name=target.name)


def open_target_session(ctx, programs: clients.CopyClients | None = None) -> Session:
    """psql on fac-db, in one explicit transaction, under a recognisable application_name."""
    settings, target = ctx.config.settings, ctx.config.fac_db
    env = build_pg_env(target, sslmode=settings.pg_sslmode, application_name=APPLICATION_NAME)
    psql = programs.target.program("psql") if programs else clients.check_dump_client(settings, target).program("psql")
    argv = build_psql_command(psql, single_transaction=False)
    return Session(argv, env, scope=ctx.scope, target=target.name)


def restore_from_s3(ctx) -> dict:
    """The s3_restore step: verify, back up fac-db, replace it with the backup in one transaction."""
    settings, target = ctx.config.settings, ctx.config.fac_db
    store = ctx.backups_store()
    started = time.monotonic()
    legacy_plan = None
    found = find_backup(store, ctx.args[0])  # several candidates: refused here, before anything is touched
    if resolved := resolution(found, ctx.args[0]):
        ctx.log.warning("restore.id_resolved", **resolved)
    # Both ends before anything: the restore's programs, and the pre-restore backup's pg_dump.
    programs = choose_programs(ctx, found, target)
    clients.check_dump_client(settings, target)
    ctx.log.info("restore.started", backup_id=found.id, target=target.name, legacy=found.legacy,
                 pg_restore=programs.source.version, psql=programs.target.version,
                 **(ctx.confirmation or {}))
    ctx.progress.expect(bytes=progress.expected_read_bytes(found, verify=not found.legacy, load=True),
                        items=len(found.manifest.tables if found.manifest else found.legacy_tables), unit="tables")
    # Before anything, the pre-restore backup included: does fac-db's disk hold both copies?
    room = space.check_restore_room(ctx, f"backup {found.id}", space.restored_size(found))
    ctx.progress.set_doing(f"verifying backup {found.id}")
    if found.legacy:
        ctx.log.warning("restore.legacy_unverifiable", backup_id=found.id, tables=len(found.legacy_tables),
                        reason="a legacy backup has no manifest: no checksums and no row counts can be verified")
        check_listing(store, found)
        legacy_plan = legacy_restore.plan_restore(ctx, store, found, target)
    else:
        verify_backup(store, found, parallel=settings.parallel)
    ctx.log.info("restore.verified", backup_id=found.id)
    ctx.scope.check()
    pre_restore = take_pre_restore_backup(ctx, found.id)
    ctx.figures_on_failure = {"pre_restore_backup": pre_restore or ""}
    ctx.scope.check()
    env = build_pg_env(target, sslmode=settings.pg_sslmode, application_name=APPLICATION_NAME)
    loaded: dict = {}
    with open_target_session(ctx, programs) as session, \
            watch_sessions(ctx.progress, target, settings.pg_sslmode, APPLICATION_NAME):
        tables = load_backup(ctx, session, store, found, target, env, legacy_plan=legacy_plan, figures=loaded,
                             programs=programs)
        ctx.scope.check()
        ctx.progress.set_doing(f"committing the restore into {target.name}")
        session.commit()
    ctx.restored = found
    figures = {"backup_id": found.id, "tables": tables, "legacy": found.legacy, **loaded, **room,
               "pre_restore_backup": pre_restore or "", "seconds": round(time.monotonic() - started, 3)}
    if found.manifest is not None:
        figures["rows"] = found.manifest.total_rows
    ctx.log.info("restore.finished", **figures)
    return figures


def load_backup(ctx, session: Session, store, found: FoundBackup, target, env: dict, *,
                legacy_plan: legacy_restore.LegacyPlan | None = None, figures: dict | None = None,
                programs: clients.CopyClients | None = None) -> int:
    """Replace `target`'s contents with `found` inside `session`'s open transaction; return the
    tables loaded (and add the privileges' figures to `figures`). Never commits: the caller
    commits (s3_restore) or rolls back (the restore drill).

    A backup of this service first clears every user schema, then loads schema.dump's
    definitions, each table, the constraints and indexes, the sequence values, and the
    privileges last. A legacy backup (table
    dumps only) keeps the target's definitions and replaces the rows of the tables it holds
    (service.tasks.legacy_restore; `legacy_plan` when the caller already checked it).
    """
    programs = programs or choose_programs(ctx, found, target)
    with ctx.progress.activity(f"psql session into {describe_endpoint(target)}") as activity:
        session.activity = activity
        try:
            return _load_into(ctx, session, store, found, target, env, legacy_plan, figures, programs)
        finally:
            session.activity = None


def _load_into(ctx, session: Session, store, found: FoundBackup, target, env: dict, legacy_plan,
               figures: dict | None, programs: clients.CopyClients) -> int:
    pg_restore = programs.source.program("pg_restore")
    if found.legacy:
        plan = legacy_plan or legacy_restore.plan_restore(ctx, store, found, target)
        return legacy_restore.load_rows(ctx, session, store, found, plan, env, pg_restore=pg_restore)
    sslmode = ctx.config.settings.pg_sslmode
    grants = read_recorded_privileges(ctx, store, found)
    session.execute(build_reset_sql(list_user_schemas(target, sslmode), ctx.config.settings.restore_lock_wait_seconds))
    if grants is not None:
        session.execute(privileges.build_clear_defaults_sql())
    tables = _load_complete(ctx, session, store, found, pg_restore, env)
    if grants is not None:
        with connect(target, sslmode=sslmode, autocommit=True) as conn, \
                translated_errors(f"reading the roles of {target.name}'s server"):
            roles, member_of = privileges.read_target_roles(conn)
        replay = privileges.build_replay_sql(grants, roles, member_of)
        session.execute(replay.sql)
        privileges.report(ctx.log, replay, target.name)
        if figures is not None:
            figures.update(replay.figures())
    if figures is not None:
        figures["privileges_in_backup"] = grants is not None
    return tables


def read_recorded_privileges(ctx, store, found: FoundBackup) -> dict | None:
    """The backup's privileges document, checked against its manifest entry; None (and a
    warning) for a backup made before privileges were kept."""
    entry = found.manifest.privileges if found.manifest is not None else {}
    if not entry:
        ctx.log.warning("restore.privileges_not_in_backup", backup_id=found.id,
                        reason="this backup was made before privileges were kept: the restored objects "
                               "get no GRANTs and no default privileges",
                        hint="grant them again by hand (or restore a newer backup)")
        return None
    raw = store.get_bytes(entry["key"])
    if len(raw) != int(entry["bytes"]) or hashlib.sha256(raw).hexdigest() != entry["sha256"]:
        raise IntegrityError(f"{layout.PRIVILEGES_NAME} of backup {found.id} has been altered",
                             detail=f"{entry['key']}: {len(raw)} bytes, the manifest recorded {entry['bytes']}",
                             hint="choose another backup; nothing was changed")
    try:
        return privileges.decode(raw)
    except ValueError as exc:
        raise IntegrityError(f"{layout.PRIVILEGES_NAME} of backup {found.id} is unreadable", detail=str(exc),
                             hint="a newer version of this service wrote it; restore with that version") from exc


def _restore_argv(pg_restore: str, *extra: str, sections: tuple[str, ...] = (), use_list: str | None = None):
    return build_pg_restore_command(pg_restore, sections=sections, use_list=use_list, extra=(*extra, "-f", "-"))


def _load_object(ctx, session, reader: ObjectReader, argv, env, expect: tuple[int, str] | None, what: str) -> None:
    """One archive through pg_restore into the session; then its stream must match the manifest."""
    try:
        load_archive(session, reader, argv, env, scope=ctx.scope)
    except (RestoreError, JobAbortedError):
        raise
    except ServiceError as exc:  # pg_restore failed, or the download did: say which object
        raise RestoreError(f"restoring {what} failed: {exc.message}", detail=exc.detail,
                           hint="nothing was committed; the target is as it was before the restore") from exc
    finally:
        reader.close()
    if expect is not None:
        reader.check(*expect, f"the dump of {what}")


def _load_complete(ctx, session: Session, store, found: FoundBackup, pg_restore: str, env: dict) -> int:
    manifest = found.manifest
    assert manifest is not None
    schema = manifest.schema
    schema_expect = (int(schema["bytes"]), schema["sha256"])
    toc, toc_reader = read_toc(store, schema["key"], pg_restore, env, scope=ctx.scope)
    toc_reader.check(*schema_expect, layout.SCHEMA_NAME)
    sequence_entries = [line for line in toc.splitlines() if " SEQUENCE SET " in line]
    readers: list[ObjectReader] = []
    try:
        _load_object(ctx, session, ObjectReader(store, schema["key"]).start(),
                     _restore_argv(pg_restore, sections=("pre-data",)), env, schema_expect, "schema.dump (pre-data)")
        tables = list(manifest.tables)
        # The next table downloads while the current one loads (one reader ahead, bounded queues).
        readers = [ObjectReader(store, t.key) for t in tables]
        if readers:
            readers[0].start()
        for i, table in enumerate(tables):
            ctx.scope.check()
            ctx.progress.set_doing(f"loading table {table.schema}.{table.table} into {session.target}")
            if i + 1 < len(readers):
                readers[i + 1].start()
            _load_object(ctx, session, readers[i], _restore_argv(pg_restore, "--data-only"), env,
                         (table.bytes, table.sha256), f"table {table.schema}.{table.table}")
            ctx.log.info("restore.table_loaded", table=f"{table.schema}.{table.table}", rows=table.rows)
            ctx.progress.item_done()
        # Fresh tables have no statistics: the foreign-key checks of post-data would plan blind.
        session.execute("".join(f"ANALYZE {quote_ident(t.schema)}.{quote_ident(t.table)};\n" for t in tables))
        ctx.log.info("restore.building_indexes_and_constraints")
        ctx.progress.set_doing(f"building indexes and constraints in {session.target}")
        _load_object(ctx, session, ObjectReader(store, schema["key"]).start(),
                     _restore_argv(pg_restore, sections=("post-data",)), env, schema_expect,
                     "schema.dump (post-data)")
        if sequence_entries:
            # Only the SEQUENCE SET entries of schema.dump's data section: their values as backed up,
            # set after post-data's materialized-view refreshes, which may draw from them.
            with tempfile.NamedTemporaryFile("w", suffix=".list", encoding="utf-8") as listing:
                listing.write("\n".join(sequence_entries) + "\n")
                listing.flush()
                _load_object(ctx, session, ObjectReader(store, schema["key"]).start(),
                             _restore_argv(pg_restore, use_list=listing.name), env, schema_expect,
                             "schema.dump (sequence values)")
        ctx.log.info("restore.checking_row_counts")
        ctx.progress.set_doing(f"checking row counts in {session.target}")
    finally:
        for reader in readers:
            reader.close()
    session.execute(build_count_check_sql([(t.schema, t.table, t.rows) for t in manifest.tables]))
    return len(manifest.tables)
