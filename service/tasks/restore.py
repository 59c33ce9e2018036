"""s3_restore: bring fac-db back to a backup, all or nothing.

1. Find the backup (finder) and verify it before touching anything: every dump
   present with its recorded size and sha256, streamed and hashed from S3.
2. Take a pre-restore backup of fac-db, so the restore can be undone.
3. One psql session, one transaction (loader.Session): drop the user schemas
   of fac-db, then pump `pg_restore -f -` output into it: schema.dump's
   pre-data, every table's data (each streamed from S3 while the next one is
   already downloading), the sequence values, schema.dump's post-data, and a
   DO block comparing every table's rows with the manifest. COMMIT is sent
   only when every producer exited 0 and every stream matched its manifest;
   otherwise psql is killed mid-transaction and PostgreSQL rolls back.
Legacy backups (no manifest) cannot be verified: the log says so, and each
table is replaced (definition and data) inside the same single transaction.
"""

from __future__ import annotations

import os
import tempfile
import time

from service import kinds, layout
from service.database import connect, list_user_tables, translated_errors
from service.errors import JobAbortedError, RestoreError, SafetyError, ServiceError
from service.finder import FoundBackup, find_backup
from service.loader import (
    LOCK_TIMEOUT,
    Session,
    build_count_check_sql,
    build_reset_sql,
    load_archive,
    quote_ident,
    quote_literal,
)
from service.pgtools import build_pg_env, build_pg_restore_command, build_program_path, build_psql_command
from service.streams import ObjectReader
from service.tasks.backup import backup_database
from service.verify import check_listing, read_toc, verify_backup

APPLICATION_NAME = "fac-backup-restore"  # how an operator (or a test) finds the restore's session

USER_SCHEMAS_SQL = """
SELECT n.nspname FROM pg_namespace n
WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
ORDER BY n.nspname
"""


# What DROP TABLE ... CASCADE of the given tables (oids) would take with it that a legacy
# backup cannot bring back: views and materialized views built on them (and views on those),
# and foreign keys of tables the backup does not hold. Legacy dumps carry one table each.
LEGACY_CASUALTIES_SQL = """
WITH RECURSIVE doomed(oid) AS (
    SELECT unnest(%(tables)s::oid[])
    UNION
    SELECT r.ev_class
    FROM doomed
    JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = doomed.oid
                     AND d.classid = 'pg_rewrite'::regclass
    JOIN pg_rewrite r ON r.oid = d.objid
    WHERE r.ev_class <> doomed.oid
)
SELECT CASE c.relkind WHEN 'm' THEN 'materialized view ' ELSE 'view ' END
       || quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM doomed JOIN pg_class c ON c.oid = doomed.oid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm')
UNION
SELECT 'foreign key ' || quote_ident(k.conname) || ' of ' || k.conrelid::regclass::text
FROM pg_constraint k
WHERE k.contype = 'f' AND k.confrelid = ANY(%(tables)s::oid[]) AND NOT k.conrelid = ANY(%(tables)s::oid[])
ORDER BY 1
"""


def legacy_casualties(db, tables, sslmode: str) -> list[str]:
    """Objects of `db` that replacing `tables` (LegacyTable) would drop and not recreate."""
    names = [f"{quote_ident(t.schema)}.{quote_ident(t.table)}" for t in tables]
    with connect(db, sslmode=sslmode, autocommit=True) as conn, \
            translated_errors("finding what depends on the tables to restore"):
        oids = [row[0] for row in conn.execute(
            "SELECT to_regclass(n)::oid FROM unnest(%s::text[]) AS n", (names,)).fetchall() if row[0]]
        return [row[0] for row in conn.execute(LEGACY_CASUALTIES_SQL, {"tables": oids}).fetchall()]


def refuse_legacy_casualties(ctx, found: FoundBackup, target) -> list[str]:
    """A legacy restore drops, with each table, the views and other tables' foreign keys that
    point at it, and its dumps cannot recreate them: refuse unless options['force'], before
    anything is touched. Returns what will be dropped (empty when nothing)."""
    casualties = legacy_casualties(target, found.legacy_tables, ctx.config.settings.pg_sslmode)
    if not casualties:
        return []
    named = ", ".join(casualties[:10]) + (f" and {len(casualties) - 10} more" if len(casualties) > 10 else "")
    if not ctx.options.get("force"):
        raise SafetyError(
            f"restoring legacy backup {found.id} would drop {len(casualties)} object(s) of {target.name} "
            f"that its dumps cannot recreate: {named}; nothing was changed",
            detail="\n".join(casualties),
            hint="restore a backup made by this service (it carries every object), or repeat with --force "
                 "and recreate them afterwards (FAC's deploy recreates its API views)")
    ctx.log.warning("restore.legacy_drops_dependents", backup_id=found.id, objects=casualties)
    return casualties


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


def open_target_session(ctx) -> Session:
    """psql on fac-db, in one explicit transaction, under a recognisable application_name."""
    settings, target = ctx.config.settings, ctx.config.fac_db
    env = build_pg_env(target, sslmode=settings.pg_sslmode, application_name=APPLICATION_NAME)
    argv = build_psql_command(build_program_path(settings.pg_bin_dir, "psql"), single_transaction=False)
    return Session(argv, env, scope=ctx.scope, target=target.name)


def restore_from_s3(ctx) -> dict:
    """The s3_restore step: verify, back up fac-db, replace it with the backup in one transaction."""
    settings, target = ctx.config.settings, ctx.config.fac_db
    store = ctx.backups_store()
    started = time.monotonic()
    dropped: list[str] = []
    found = find_backup(store, ctx.args[0])
    if len(found.matched) > 1:
        ctx.log.warning("restore.several_matched", typed=ctx.args[0], chosen=found.id, matched=list(found.matched))
    ctx.log.info("restore.started", backup_id=found.id, target=target.name, legacy=found.legacy,
                 **(ctx.confirmation or {}))
    if found.legacy:
        ctx.log.warning("restore.legacy_unverifiable", backup_id=found.id, tables=len(found.legacy_tables),
                        reason="a legacy backup has no manifest: no checksums and no row counts can be verified")
        check_listing(store, found)
        dropped = refuse_legacy_casualties(ctx, found, target)
    else:
        verify_backup(store, found, parallel=settings.parallel)
    ctx.log.info("restore.verified", backup_id=found.id)
    ctx.scope.check()
    pre_restore = take_pre_restore_backup(ctx, found.id)
    ctx.figures_on_failure = {"pre_restore_backup": pre_restore or ""}
    ctx.scope.check()
    env = build_pg_env(target, sslmode=settings.pg_sslmode, application_name=APPLICATION_NAME)
    with open_target_session(ctx) as session:
        tables = load_backup(ctx, session, store, found, target, env)
        ctx.scope.check()
        session.commit()
    figures = {"backup_id": found.id, "tables": tables, "legacy": found.legacy,
               "pre_restore_backup": pre_restore or "", "seconds": round(time.monotonic() - started, 3)}
    if found.manifest is not None:
        figures["rows"] = found.manifest.total_rows
    if dropped:
        figures["dropped_dependents"] = dropped
    ctx.log.info("restore.finished", **figures)
    return figures


def load_backup(ctx, session: Session, store, found: FoundBackup, target, env: dict) -> int:
    """Replace `target`'s contents with `found` inside `session`'s open transaction; return the
    tables loaded. Never commits: the caller commits (s3_restore) or rolls back (the restore drill).

    A backup of this service first clears every user schema, then loads schema.dump's
    definitions, each table, and the constraints and indexes last. A legacy backup (table
    dumps only) replaces just the tables it holds.
    """
    pg_restore = build_program_path(ctx.config.settings.pg_bin_dir, "pg_restore")
    if found.legacy:
        return _load_legacy(ctx, session, store, found, pg_restore, env)
    session.execute(build_reset_sql(list_user_schemas(target, ctx.config.settings.pg_sslmode)))
    return _load_complete(ctx, session, store, found, pg_restore, env)


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
            if i + 1 < len(readers):
                readers[i + 1].start()
            _load_object(ctx, session, readers[i], _restore_argv(pg_restore, "--data-only"), env,
                         (table.bytes, table.sha256), f"table {table.schema}.{table.table}")
            ctx.log.info("restore.table_loaded", table=f"{table.schema}.{table.table}", rows=table.rows)
        if sequence_entries:
            # Only the SEQUENCE SET entries of schema.dump's data section: their values as backed up.
            with tempfile.NamedTemporaryFile("w", suffix=".list", encoding="utf-8") as listing:
                listing.write("\n".join(sequence_entries) + "\n")
                listing.flush()
                _load_object(ctx, session, ObjectReader(store, schema["key"]).start(),
                             _restore_argv(pg_restore, use_list=listing.name), env, schema_expect,
                             "schema.dump (sequence values)")
        # Fresh tables have no statistics: the foreign-key checks of post-data would plan blind.
        session.execute("".join(f"ANALYZE {quote_ident(t.schema)}.{quote_ident(t.table)};\n" for t in tables))
        ctx.log.info("restore.building_indexes_and_constraints")
        _load_object(ctx, session, ObjectReader(store, schema["key"]).start(),
                     _restore_argv(pg_restore, sections=("post-data",)), env, schema_expect,
                     "schema.dump (post-data)")
        ctx.log.info("restore.checking_row_counts")
    finally:
        for reader in readers:
            reader.close()
    session.execute(build_count_check_sql([(t.schema, t.table, t.rows) for t in manifest.tables]))
    return len(manifest.tables)


def _load_legacy(ctx, session: Session, store, found: FoundBackup, pg_restore: str, env: dict) -> int:
    """Each table replaced with its own definition, data and indexes; foreign keys last, once
    every table (and the unique constraint a key points at) exists."""
    session.execute(f"SET LOCAL lock_timeout = {quote_literal(LOCK_TIMEOUT)};\n")
    with tempfile.TemporaryDirectory(prefix="fac-backup-restore-") as lists:
        foreign_keys = []
        for n, table in enumerate(found.legacy_tables):
            ctx.scope.check()
            toc, _ = read_toc(store, table.key, pg_restore, env, scope=ctx.scope)
            entries = [line for line in toc.splitlines() if line and not line.startswith(";")]
            main = _write_list(lists, f"{n}.list", [e for e in entries if " FK CONSTRAINT " not in e])
            fks = [e for e in entries if " FK CONSTRAINT " in e]
            if fks:
                foreign_keys.append((table, _write_list(lists, f"{n}.fk.list", fks)))
            name = f"{quote_ident(table.schema)}.{quote_ident(table.table)}"
            # CASCADE: the old dumps cannot say which foreign keys or views of other tables point here.
            session.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table.schema)};\n"
                            f"DROP TABLE IF EXISTS {name} CASCADE;\n")
            _load_object(ctx, session, ObjectReader(store, table.key).start(),
                         _restore_argv(pg_restore, "--clean", "--if-exists", use_list=main),
                         env, None, f"table {table.qualified}")
            ctx.log.info("restore.table_loaded", table=table.qualified)
        for table, fk_list in foreign_keys:
            _load_object(ctx, session, ObjectReader(store, table.key).start(),
                         _restore_argv(pg_restore, use_list=fk_list), env, None,
                         f"table {table.qualified} (foreign keys)")
    return len(found.legacy_tables)


def _write_list(directory: str, name: str, entries: list[str]) -> str:
    """A pg_restore --use-list file (table-of-contents lines, in archive order)."""
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(entries) + "\n")
    return path
