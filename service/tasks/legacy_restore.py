"""Restore a legacy backup (the old tool's): keep the live definitions, replace the data.

The old tool's dumps hold one public table each and none of the types, views,
functions or other tables they depend on, so they cannot replace definitions.
A legacy restore does what REFERENCE section 5 says the team meant: empty the
tables, then load each dump's rows with `pg_restore --data-only`.

1. `plan_restore` touches nothing. It reads each dump's table definition from
   the head of its archive (pg_restore stops before the rows, and so does the
   download) and refuses, naming what is wrong, when the target has no tables
   at all (the application's migrations must run first), a dumped table is
   missing or its columns are not the dump's (a migration since), a sequence
   the dump sets is missing, a foreign key from a table outside the backup
   could not hold while the rows are replaced, or the restoring role may not
   do what the restore must (own the tables with triggers, the sequences and
   the materialized views it refreshes).
2. `load_rows` runs inside the restore's one transaction (loader.Session): it
   locks the tables, defers the deferrable foreign keys, gives the dumps'
   sequences new storage (setval is not transactional, but a rollback discards
   storage made in its transaction), switches off the tables' enabled user
   triggers (FAC's curation audit triggers fire on INSERT and TRUNCATE and
   would write a history row per restored row; the tables' owner may do this
   without superuser rights), empties the tables (TRUNCATE together; DELETE
   where another table's foreign key forbids it), loads each dump's rows and
   sequence values parents first, checks every deferred foreign key, puts
   every trigger back in its own state, and refreshes the populated
   materialized views that read the tables (else they would go on serving
   the replaced rows). The caller commits.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass

from service import clients, legacy
from service.commands import RunningCommand
from service.database import connect, list_user_tables, translated_errors
from service.errors import (
    CommandError,
    IntegrityError,
    JobAbortedError,
    ObjectNotFoundError,
    RestoreError,
    SafetyError,
    ServiceError,
)
from service.finder import FoundBackup, LegacyTable
from service.loader import (
    DEFAULT_LOCK_WAIT_SECONDS,
    Session,
    build_lock_timeout_sql,
    load_archive,
    quote_ident,
)
from service.pgtools import build_pg_env, build_pg_restore_command
from service.streams import ObjectReader

APPLICATION_NAME = "fac-backup-restore"

TABLES_SQL = """
SELECT n, c.oid, c.relkind, pg_catalog.pg_get_userbyid(c.relowner),
       c.oid IS NOT NULL AND pg_catalog.pg_has_role(c.relowner, 'USAGE'),
       c.oid IS NOT NULL AND pg_catalog.has_table_privilege(c.oid, 'INSERT, TRUNCATE, DELETE')
FROM unnest(%s::text[]) WITH ORDINALITY AS u(n, i)
LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(n)
ORDER BY i
"""
COLUMNS_SQL = """
SELECT attrelid, attname, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute
WHERE attrelid = ANY(%s::oid[]) AND attnum > 0 AND NOT attisdropped ORDER BY attrelid, attnum
"""
SEQUENCES_SQL = """
SELECT s, c.oid::regclass::text, pg_catalog.pg_get_userbyid(c.relowner),
       c.oid IS NOT NULL AND pg_catalog.pg_has_role(c.relowner, 'USAGE')
FROM unnest(%s::text[]) AS s
LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(s) AND c.relkind = 'S'
"""
FOREIGN_KEYS_SQL = """
SELECT conname, conrelid, confrelid, conrelid::regclass::text, condeferrable, confdeltype
FROM pg_catalog.pg_constraint
WHERE contype = 'f' AND (conrelid = ANY(%(oids)s::oid[]) OR confrelid = ANY(%(oids)s::oid[]))
ORDER BY conrelid::regclass::text, conname
"""
TRIGGERS_SQL = """
SELECT tgrelid, tgname, tgenabled FROM pg_catalog.pg_trigger
WHERE tgrelid = ANY(%s::oid[]) AND NOT tgisinternal AND tgenabled <> 'D' ORDER BY tgrelid, tgname
"""
# Materialized views that read a restored table, directly or through views and other materialized
# views: a legacy restore keeps their definitions, so their rows must be computed again from the
# restored rows (FAC's search and API read them). Only populated ones: a view the team left
# unpopulated stays so. Deepest dependency last, so a view over a view is refreshed after it.
# The restoring role must own each (or hold MAINTAIN on PostgreSQL 17 and later).
MATVIEWS_SQL = """
WITH RECURSIVE readers(oid, depth) AS (
    SELECT r.ev_class, 1 FROM pg_catalog.pg_depend d
    JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
    WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = ANY(%s::oid[])
      AND r.ev_class <> d.refobjid
    UNION
    SELECT r.ev_class, readers.depth + 1 FROM readers
    JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = readers.oid
    JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
    WHERE r.ev_class <> d.refobjid AND readers.depth < 50
)
SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname), pg_catalog.pg_get_userbyid(c.relowner),
       pg_catalog.pg_has_role(c.relowner, 'USAGE') OR CASE WHEN pg_catalog.current_setting('server_version_num')::int
           >= 170000 THEN pg_catalog.has_table_privilege(c.oid, 'MAINTAIN') ELSE false END
FROM (SELECT oid, max(depth) AS depth FROM readers GROUP BY oid) m
JOIN pg_catalog.pg_class c ON c.oid = m.oid AND c.relkind = 'm' AND c.relispopulated
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
ORDER BY m.depth, 1
"""
DELETE_ACTIONS = {"c": "ON DELETE CASCADE", "n": "ON DELETE SET NULL", "d": "ON DELETE SET DEFAULT"}

MIGRATION_HINT = ("a legacy restore keeps the live definitions and replaces only the rows, so every dumped "
                  "table must exist with the dump's columns: choose a legacy backup taken since the migration, "
                  "or a backup of this service (it carries the definitions)")


@dataclass(frozen=True)
class LegacyPlan:
    """How to replace the rows: every name quoted, in the order it is used."""

    tables: tuple[tuple[str, LegacyTable], ...]  # (quoted name, dump), referenced tables first
    truncate: tuple[str, ...]
    delete: tuple[str, ...]  # referring tables first
    triggers: tuple[tuple[str, str, str], ...]  # (quoted table, trigger, pg_trigger.tgenabled)
    outside_keys: tuple[str, ...]  # foreign keys of other tables, checked before the commit
    sequences: tuple[str, ...] = ()  # the sequences the dumps set, as the server names them
    matviews: tuple[str, ...] = ()  # populated materialized views reading the tables, refreshed in this order


def _feed_head(reader: ObjectReader, stdin, errors: list) -> None:
    """Write the object into pg_restore until it stops reading (it has the definitions)."""
    try:
        for chunk in reader.chunks():
            stdin.write(chunk)
    except (BrokenPipeError, ValueError, OSError):
        pass  # pg_restore read the definitions and stopped: the rows are not needed
    except BaseException as exc:  # noqa: BLE001 - reported by the caller if pg_restore failed
        errors.append(exc)
    finally:
        try:
            stdin.close()
        except OSError:
            pass


def read_definition(store, table: LegacyTable, backup_id: str, pg_restore: str, env: dict,
                    scope=None) -> legacy.DumpDefinition | None:
    """The dump's table definition from the head of its archive; the download stops with pg_restore."""
    reader = ObjectReader(store, table.key).start()
    argv = build_pg_restore_command(pg_restore, sections=("pre-data",), extra=("-f", "-"))
    errors: list[BaseException] = []
    feeder = None
    try:
        with RunningCommand(argv, env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, scope=scope) as program:
            feeder = threading.Thread(target=_feed_head, args=(reader, program.stdin, errors),
                                      name=f"definition {table.key}", daemon=True)
            feeder.start()
            sql = program.stdout.read().decode("utf-8", "replace")
            try:
                program.check()
            except CommandError as exc:
                if errors:
                    raise errors[0] from None  # the download failed: that is why pg_restore did
                raise IntegrityError(f"the dump of table {table.qualified} in backup {backup_id} is not "
                                     "readable by pg_restore", detail=exc.detail,
                                     hint="choose another backup; nothing was changed") from exc
    except ObjectNotFoundError as exc:
        raise IntegrityError(f"backup {backup_id} is missing the dump of table {table.qualified}",
                             detail=exc.message, hint="choose another backup; nothing was changed") from exc
    finally:
        reader.close()
        if feeder is not None:
            feeder.join(timeout=10)
    return legacy.parse_definition(sql)


def plan_restore(ctx, store, found: FoundBackup, target) -> LegacyPlan:
    """Check that `found`'s rows can replace `target`'s and decide how; SafetyError (or
    IntegrityError for an unreadable dump) naming every problem. Touches nothing."""
    settings = ctx.config.settings
    pg_restore = clients.check_dump_client(settings, target).program("pg_restore")  # the target's major
    env = build_pg_env(target, sslmode=settings.pg_sslmode, application_name=APPLICATION_NAME)
    named = {f"{quote_ident(t.schema)}.{quote_ident(t.table)}": t for t in found.legacy_tables}
    with connect(target, sslmode=settings.pg_sslmode, autocommit=True) as conn, \
            translated_errors(f"checking {target.name} against legacy backup {found.id}"):
        conn.execute("SELECT pg_catalog.set_config('search_path', '', false)")  # qualified names, as pg_dump
        if not list_user_tables(conn):
            raise SafetyError(
                f"{target.name} has no tables: legacy backup {found.id} holds data only (the rows of each "
                "table, no types, views or functions), so it cannot build the schema; nothing was changed",
                hint=f"run the application's migrations on {target.name} first (FAC: python manage.py "
                     "migrate), then repeat the restore")
        live = conn.execute(TABLES_SQL, (list(named),)).fetchall()
        problems: list[tuple[str, str]] = []
        oids: dict[str, int] = {}
        owners: dict[str, tuple[str, bool]] = {}
        for name, oid, relkind, owner, owned, allowed in live:
            what = named[name].qualified
            if oid is None or relkind not in ("r", "p"):
                problems.append((f"table {what} does not exist in {target.name}", MIGRATION_HINT))
                continue
            oids[name], owners[name] = oid, (owner, owned)
            if not allowed:
                problems.append((f"the restoring role may not INSERT, TRUNCATE and DELETE in {what}",
                                 f"restore as the tables' owner ({owner})"))
        columns: dict[int, list[tuple[str, str]]] = {}
        for relid, column, kind in conn.execute(COLUMNS_SQL, (list(oids.values()),)).fetchall():
            columns.setdefault(relid, []).append((column, kind))
        sequences = []
        for name, oid in oids.items():
            ctx.scope.check()
            table = named[name]
            definition = read_definition(store, table, found.id, pg_restore, env, ctx.scope)
            if definition is None:
                problems.append((f"the dump of {table.qualified} holds no column list", MIGRATION_HINT))
                continue
            sequences += definition.sequences
            problems += [(f"{table.qualified}: {p}", MIGRATION_HINT)
                         for p in legacy.column_differences(definition.columns, columns.get(oid, []))]
        restart = []
        for dumped, live_name, owner, owned in conn.execute(SEQUENCES_SQL, (sequences,)).fetchall():
            if live_name is None:
                problems.append((f"sequence {dumped}, whose value a dump sets, does not exist in {target.name}",
                                 MIGRATION_HINT))
            elif not owned:
                problems.append((f"only the owner ({owner}) of sequence {live_name} may reset it in a "
                                 "transaction", f"restore as the tables' owner ({owner})"))
            else:
                restart.append(live_name)
        names_of = {oid: name for name, oid in oids.items()}
        references, outside, outside_keys = [], set(), []
        for key, child, parent, child_name, deferrable, action in conn.execute(
                FOREIGN_KEYS_SQL, {"oids": list(oids.values())}).fetchall():
            if child in names_of and parent in names_of:
                references.append((names_of[child], names_of[parent]))
                continue
            if child in names_of:
                continue  # the backup's rows must match the other table: checked before the commit
            outside.add(names_of[parent])
            outside_keys.append(f"foreign key {key} of {child_name}")
            if not conn.execute(f"SELECT EXISTS (SELECT 1 FROM {child_name})").fetchone()[0]:
                continue  # no rows refer to the table: nothing can break
            if action in DELETE_ACTIONS:
                problems.append((f"foreign key {key} of {child_name} ({DELETE_ACTIONS[action]}) would change "
                                 f"{child_name}'s rows when {named[names_of[parent]].qualified} is emptied",
                                 f"empty {child_name} first, or restore a backup that holds it too"))
            elif not deferrable:
                problems.append((f"foreign key {key} of {child_name} is not deferrable: its rows would refer "
                                 f"to nothing while {named[names_of[parent]].qualified} is replaced",
                                 f"make {key} DEFERRABLE, or empty {child_name} first"))
        triggers = [(names_of[relid], trigger, mode)
                    for relid, trigger, mode in conn.execute(TRIGGERS_SQL, (list(oids.values()),)).fetchall()]
        matviews = []
        for matview, owner, allowed in conn.execute(MATVIEWS_SQL, (list(oids.values()),)).fetchall():
            matviews.append(matview)
            if not allowed:
                problems.append((f"materialized view {matview} reads the restored tables and must be refreshed "
                                 f"from their rows, and only its owner ({owner}) may refresh it",
                                 f"restore as its owner ({owner})"))
    for name in dict.fromkeys(table for table, _, _ in triggers):
        owner, owned = owners[name]
        if not owned:  # ALTER TABLE ... DISABLE TRIGGER is the owner's right
            problems.append((f"{named[name].qualified} has triggers that must be off while its rows are "
                             f"replaced, and only its owner ({owner}) may switch them off",
                             f"restore as the tables' owner ({owner})"))
    if problems:
        shown = "; ".join(p for p, _ in problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3
                                                         else "")
        raise SafetyError(f"legacy backup {found.id} does not fit {target.name}: {shown}; nothing was changed",
                          detail="\n".join(p for p, _ in problems),
                          hint="; ".join(dict.fromkeys(h for _, h in problems)))
    truncate, delete = legacy.split_emptying(list(oids), references, outside)
    order = legacy.load_order(list(oids), references)
    return LegacyPlan(tuple((n, named[n]) for n in order), tuple(truncate), tuple(delete), tuple(triggers),
                      tuple(outside_keys), tuple(dict.fromkeys(restart)), tuple(matviews))


def build_prepare_sql(plan: LegacyPlan, lock_wait_seconds: int = DEFAULT_LOCK_WAIT_SECONDS) -> str:
    """Lock, defer, make the sequences transactional, switch the user triggers off, empty: the
    statements before the rows load."""
    names = [name for name, _ in plan.tables]
    lines = [build_lock_timeout_sql(lock_wait_seconds).rstrip("\n"),
             f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE;",
             "SET CONSTRAINTS ALL DEFERRED;"]
    # setval is not undone by a rollback, but a sequence altered in this transaction gets new storage,
    # which a rollback discards: after RESTART the dumps' setval calls are all or nothing too.
    lines += [f"ALTER SEQUENCE {sequence} RESTART;" for sequence in plan.sequences]
    lines += [f"ALTER TABLE {table} DISABLE TRIGGER {quote_ident(trigger)};" for table, trigger, _ in plan.triggers]
    if plan.truncate:
        lines.append(f"TRUNCATE TABLE {', '.join(plan.truncate)};")
    lines += [f"DELETE FROM {table};" for table in plan.delete]
    return "\n".join(lines) + "\n"


def build_finish_sql(plan: LegacyPlan) -> str:
    """Every deferred foreign key checked now, then every trigger back in its own state (a table
    with foreign-key checks still pending cannot be altered), then the materialized views that
    read the tables computed again from the restored rows, in the same transaction."""
    lines = [f"ALTER TABLE {table} {legacy.TRIGGER_MODES.get(mode, 'ENABLE TRIGGER')} {quote_ident(trigger)};"
             for table, trigger, mode in plan.triggers]
    lines += [f"REFRESH MATERIALIZED VIEW {matview};" for matview in plan.matviews]
    return "\n".join(["SET CONSTRAINTS ALL IMMEDIATE;", *lines]) + "\n"


def load_rows(ctx, session: Session, store, found: FoundBackup, plan: LegacyPlan, env: dict, *,
              pg_restore: str) -> int:
    """Replace the rows of `plan`'s tables inside `session`'s transaction; never commits.
    `pg_restore` is the program service.clients chose for the target."""
    argv = build_pg_restore_command(pg_restore, extra=("--data-only", "-f", "-"))
    ctx.log.info("restore.legacy_plan", backup_id=found.id, truncated=len(plan.truncate), deleted=len(plan.delete),
                 triggers_off=len(plan.triggers), outside_foreign_keys=list(plan.outside_keys),
                 matviews_refreshed=list(plan.matviews))
    session.execute(build_prepare_sql(plan, ctx.config.settings.restore_lock_wait_seconds))
    # The next dump downloads while the current one loads (one reader ahead, bounded queues).
    readers = [ObjectReader(store, table.key) for _, table in plan.tables]
    try:
        if readers:
            readers[0].start()
        for i, (_, table) in enumerate(plan.tables):
            ctx.scope.check()
            if i + 1 < len(readers):
                readers[i + 1].start()
            try:
                load_archive(session, readers[i], argv, env, scope=ctx.scope)
            except (RestoreError, JobAbortedError):
                raise
            except ServiceError as exc:  # pg_restore failed, or the download did: say which dump
                raise RestoreError(f"restoring the rows of table {table.qualified} failed: {exc.message}",
                                   detail=exc.detail,
                                   hint="nothing was committed; the target is as it was before the restore") from exc
            finally:
                readers[i].close()
            ctx.log.info("restore.table_loaded", table=table.qualified, bytes=readers[i].size)
            ctx.progress.item_done()
    finally:
        for reader in readers:
            reader.close()
    session.execute(build_finish_sql(plan))
    return len(plan.tables)
