"""db_to_db: fac-db -> fac-snapshot-db, in place or all or nothing.

1. The source exports a snapshot; the definitions (pg_dump pre-data and
   post-data), the rows, the row counts and the sequence values all come from
   it, so every table shows the same moment.
2. The target's contents are replaced: drop every user schema (public too,
   then recreated), create the source's definitions, load each table through
   a binary COPY byte pump (service.copier), build indexes and constraints,
   refresh materialized views, then set sequences (a refresh may draw from
   them), grant the source's privileges (service.privileges), and compare
   every table's loaded rows with the count taken in the source snapshot.
3. How (service.tasks.refresh): a restore into fac-db, and a snapshot refresh
   whose target's storage holds both copies with headroom, do it in ONE
   transaction that commits only when every producer exited 0, every stream
   was whole and every count matched; anything else (a lost connection, a
   dying producer, a cancel, a bad row) rolls back, and the target stays
   exactly as it was. Any other snapshot refresh goes in place, committing
   step by step so it needs room for one copy, under a refresh record that
   says `refreshing` until the end and `complete` only after every check.

Because the target is rebuilt from the source's definitions each time, a
column added at the source appears and a table dropped there disappears,
with no mode flag. Nothing here needs superuser rights.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from service import catalog, clients, copier, privileges, space
from service.commands import RunningCommand, run_command
from service.database import (
    connect,
    describe_endpoint,
    export_snapshot,
    list_user_tables,
    sever,
    translated_errors,
)
from service.errors import CopyError, JobAbortedError, SafetyError, ServiceError
from service.loader import build_lock_timeout_sql
from service.log import scrub
from service.pgtools import build_pg_dump_command, build_pg_env, build_pg_restore_command
from service.refresh_record import COMPLETE, REFRESHING, RefreshRecord, write_refresh_record
from service.tasks.refresh import Replacement, choose_method, record_failure, split_post_data
from service.vcap import DatabaseBinding
from service.watchdog import watch_sessions

APPLICATION_NAME = "fac-backup-db_to_db"
DDL_OPTIONS = ("--schema-only", "--no-publications", "--no-subscriptions")
PRODUCERS_AHEAD = 3  # source psql programs started before their turn
ANALYZE_FROM_BYTES = 1024 * 1024  # smaller tables plan well without statistics


@dataclass(frozen=True)
class SourcePlan:
    """What one copy moves, fixed at the source snapshot."""

    snapshot: str
    taken_at: datetime  # the source transaction's start: the moment the copy shows, or a little before
    tables: tuple[copier.TableCopy, ...]
    sequences: tuple[tuple[str, str, int, bool], ...]
    matviews: tuple[tuple[str, str], ...]
    pre_data: str
    post_data: str  # in place: what is left of it once the large tables have their own
    privileges: dict
    psql: str = "psql"  # reads the source (service.clients: the source's major)
    # In place: each large table's indexes and constraints, built right after its load
    table_post_data: dict = field(default_factory=dict)


def copy_database(ctx) -> dict:
    """The db_to_db step: copy fac-db into fac-snapshot-db (see copy_database_between) by the method
    its room allows, and record the refresh in the snapshot (service.refresh_record)."""
    return copy_database_between(ctx, ctx.config.fac_db, ctx.config.snapshot_db, record_refresh=True)


def copy_database_between(ctx, source: DatabaseBinding, target: DatabaseBinding, *,
                          allow_live_target: bool = False, record_refresh: bool = False) -> dict:
    """Replace everything in `target`'s user schemas with `source`'s.

    Refuses (SafetyError, before touching anything) a target that is fac-db
    unless `allow_live_target=True`; a restore of fac-db from the snapshot,
    after an operator's confirmation, is the one caller that passes it. A
    target equal to the source is always refused. Returns the figures
    (tables, rows, bytes, sequences, method, seconds); raises CopyError or
    JobAbortedError.

    `record_refresh=True` is the snapshot refresh: the method is chosen by the
    target's room (service.tasks.refresh; SafetyError when even one copy cannot
    fit), and the target's refresh record says `refreshing` until the copy is
    whole and `complete` after. Without it (a restore into fac-db) the copy is
    one transaction, nothing is recorded, and a failure leaves the target
    exactly as it was.
    """
    _refuse_unsafe_target(ctx, source, target, allow_live_target)
    settings, log = ctx.config.settings, ctx.log
    programs = clients.plan_copy(settings, source, target)  # both ends, before anything is touched
    env = build_pg_env(source, sslmode=settings.pg_sslmode, application_name=APPLICATION_NAME)
    env["PGCLIENTENCODING"] = "UTF8"  # text in binary COPY travels in the client encoding
    started = time.monotonic()
    log.info("db_to_db.started", source=source.name, target=target.name, client=programs.source.version)
    with connect(source, sslmode=settings.pg_sslmode, autocommit=True, application_name=APPLICATION_NAME) as control:
        # A cancel cuts the snapshot's session (and the count running on it) at once.
        token = ctx.scope.add_cleanup(lambda: sever(control))
        chosen = choose_method(ctx, control, source, target) if record_refresh else None
        replacement = Replacement(ctx, target.name, in_place=chosen is not None and chosen.method == space.IN_PLACE)
        with _stage(ctx, f"reading the source {source.name}"):
            plan = _read_plan(ctx, control, env, programs.source, replacement.in_place)
            # Binary COPY moves about the heap and TOAST size: the catalog's estimate, no lock taken.
            ctx.progress.expect(bytes=sum(t.total_bytes for t in list_user_tables(control)),
                                items=len(plan.tables), unit="tables")
        # The exporting transaction counts the rows while the target loads them.
        counter = _Counter(control, plan.tables)
        try:
            record = RefreshRecord(
                plan.taken_at, source.name, source.dbname, ctx.run_id, state=REFRESHING,
                method=replacement.method, started_at=catalog.now_iso(settings.timezone),
                backup_id=ctx.backup_id or "") if record_refresh else None
            # Both ends' sessions at work (an index build, a count) are the copy moving.
            with watch_sessions(ctx.progress, source, settings.pg_sslmode, APPLICATION_NAME), \
                    watch_sessions(ctx.progress, target, settings.pg_sslmode, APPLICATION_NAME):
                figures = _replace_target(ctx, source, target, plan, env, counter, record, replacement)
            figures.update(chosen.figures() if chosen else {"method": replacement.method})
            if record is not None:
                figures["data_as_of"] = record.data_as_of.isoformat()
        finally:
            counter.stop()
            ctx.scope.remove_cleanup(token)
        with translated_errors("ending the source snapshot"):
            control.execute("COMMIT")
    figures["seconds"] = round(time.monotonic() - started, 3)
    log.info("db_to_db.finished", source=source.name, target=target.name, **figures)
    return figures


def _refuse_unsafe_target(ctx, source, target, allow_live_target: bool) -> None:
    if target.same_database_as(source):
        raise SafetyError(
            f"refusing to copy {source.name} onto itself ({target.host}:{target.port}/{target.dbname})",
            hint="the source and the target of a copy must be different databases")
    if target.same_database_as(ctx.config.fac_db) and not allow_live_target:
        raise SafetyError(
            f"refusing to overwrite {ctx.config.fac_db.name}, the live database, with a copy; "
            "nothing was touched",
            detail=f"target {target.name} is {target.host}:{target.port}/{target.dbname}",
            hint="only a confirmed restore may write into the live database")


def _read_plan(ctx, control: psycopg.Connection, env: dict, client: clients.Client,
               in_place: bool = False) -> SourcePlan:
    """Export the snapshot and read everything the copy needs from it, DDL included (in place, the
    large tables' own indexes and constraints apart: service.tasks.refresh.split_post_data)."""
    pg_dump, pg_restore = client.program("pg_dump"), client.program("pg_restore")
    snapshot = export_snapshot(control)
    with translated_errors("reading the source's tables and sequences"):
        taken_at = control.execute("SELECT now()").fetchone()[0]
        tables = copier.read_tables(control)
        sequences = copier.read_sequence_values(control)
        matviews = copier.read_populated_matviews(control)
        grants = privileges.read_privileges(control)
    # One schema-only archive, split into its sections by pg_restore (no server work twice).
    archive = run_command(
        build_pg_dump_command(pg_dump, snapshot=snapshot, compression=0, extra=DDL_OPTIONS),
        env, scope=ctx.scope)
    ddl, per_table = {}, {}
    for section in ("pre-data",) if in_place else ("pre-data", "post-data"):
        argv = build_pg_restore_command(pg_restore, sections=(section,), extra=("--file=-",))
        ddl[section] = copier.clean_ddl(run_command(argv, env, input_bytes=archive, scope=ctx.scope).decode("utf-8"))
    if in_place:
        large = {(t.schema, t.name) for t in tables if t.total_bytes >= ANALYZE_FROM_BYTES}
        per_table, ddl["post-data"] = split_post_data(ctx, control, archive, pg_restore, env, large)
    return SourcePlan(snapshot, taken_at, tuple(tables), tuple(sequences), tuple(matviews),
                      ddl["pre-data"], ddl["post-data"], grants, client.program("psql"), per_table)


class _Counter:
    """Counts every table's rows in the source snapshot on a background thread."""

    def __init__(self, control: psycopg.Connection, tables) -> None:
        self.control, self.tables = control, tables
        self.counts: dict[tuple[str, str], int] = {}
        self.error: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db_to_db-count", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for t in self.tables:
                if self._stopped.is_set():
                    return
                query = sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(t.schema, t.name))
                self.counts[(t.schema, t.name)] = int(self.control.execute(query).fetchone()[0])
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread by result()
            self.error = exc

    def result(self) -> dict[tuple[str, str], int]:
        self._thread.join()
        if self.error is not None:
            raise CopyError("counting the source rows failed", detail=scrub(str(self.error).strip()))
        return self.counts

    def stop(self) -> None:
        """Stop early (after a failure) and wait, so the control connection is free again."""
        if self._thread.is_alive():
            self._stopped.set()
            self.control.cancel_safe(timeout=5)
            self._thread.join(5)
            if self._thread.is_alive():
                sever(self.control)  # the cancel got no answer: the source is silent
            self._thread.join()


def _replace_target(ctx, source: DatabaseBinding, target: DatabaseBinding, plan: SourcePlan, env: dict,
                    counter: _Counter, record: RefreshRecord | None, run: Replacement) -> dict:
    """The target's side: one transaction that commits only when everything checked out, or
    (in place) one per step, the `complete` record in the last (service.tasks.refresh)."""
    settings = ctx.config.settings
    psql = plan.psql
    conn = connect(target, sslmode=settings.pg_sslmode, autocommit=False, application_name=APPLICATION_NAME)
    # A cancel cuts the connection, whatever the target (or the network) is doing: the server
    # rolls the transaction back when it sees the connection end (within seconds even mid-statement,
    # pgtools.SESSION_LIMITS), and no second connection is needed to ask it.
    token = ctx.scope.add_cleanup(lambda: sever(conn))
    loaded: dict[tuple[str, str], int] = {}
    total_bytes = 0
    try:
        with _stage(ctx, f"clearing the user schemas of {target.name}", run):
            conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(APPLICATION_NAME)))
            # Sessions of the application (or anyone reading the snapshot) may hold locks the DROP
            # needs: give up after the restore's lock wait rather than queue everyone behind us.
            conn.execute(build_lock_timeout_sql(settings.restore_lock_wait_seconds))
            if record is not None:
                # First, so that a role that may not comment (not the database's owner) fails
                # before anything is dropped; in place it commits with the drop.
                write_refresh_record(conn, record)
            dropped = [r[0] for r in conn.execute(copier.USER_SCHEMAS_SQL).fetchall()]
            if dropped:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(
                    sql.SQL(", ").join(map(sql.Identifier, dropped))))
            conn.execute("CREATE SCHEMA public; GRANT USAGE ON SCHEMA public TO PUBLIC")
            conn.execute(privileges.build_clear_defaults_sql())
            run.step_done(conn)
        with _stage(ctx, f"creating the definitions in {target.name}", run):
            conn.execute(plan.pre_data)
            run.step_done(conn)
        for table, rows, nbytes in _load_tables(ctx, conn, psql, env, plan, source, target, run):
            loaded[(table.schema, table.name)] = rows
            total_bytes += nbytes
            ctx.log.info("db_to_db.table_copied", table=table.qualified, rows=rows, bytes=nbytes)
            ctx.progress.item_done()
        with _stage(ctx, f"building indexes and constraints in {target.name}", run):
            # Fresh tables have no statistics. The snapshot must stand in for fac-db
            # the moment it commits, with plans as good as the source's, rather than
            # wait for autovacuum; the foreign-key checks of post-data plan with them
            # too. (About 0.5 s on the 1.2 GB benchmark database.)
            large = [t for t in plan.tables if t.total_bytes >= ANALYZE_FROM_BYTES and not run.in_place]
            if large:  # (in place, each was analyzed after its load)
                conn.execute(sql.SQL("ANALYZE {}").format(
                    sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in large)))
            if plan.post_data.strip():
                conn.execute(plan.post_data)
            run.step_done(conn)
        with _stage(ctx, f"setting sequences and materialized views in {target.name}", run):
            _finish_objects(conn, plan)
        with _stage(ctx, f"granting privileges in {target.name}", run):
            replay = privileges.build_replay_sql(plan.privileges, *privileges.read_target_roles(conn))
            if replay.sql:
                conn.execute(replay.sql)
        _verify_counts(counter.result(), loaded, run)
        ctx.scope.check()
        with _stage(ctx, f"committing {target.name}", run):
            if record is not None:
                write_refresh_record(conn, record.with_state(COMPLETE))
            conn.commit()
    except BaseException as exc:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        if record is not None and run.touched:
            record_failure(ctx, conn, target, record, exc)
        raise
    finally:
        ctx.scope.remove_cleanup(token)
        conn.close()
    privileges.report(ctx.log, replay, target.name)
    return {"tables": len(loaded), "rows": sum(loaded.values()), "bytes": total_bytes,
            "sequences": len(plan.sequences), "schemas_replaced": len(dropped), **replay.figures()}


def _load_tables(ctx, conn, psql: str, env: dict, plan: SourcePlan, source: DatabaseBinding,
                 target: DatabaseBinding, run: Replacement):
    """Yield (table, rows loaded, bytes) for each table, one COPY at a time on the target.

    The next few producers are started ahead, so their start-up (a process, a
    connection, the snapshot import) overlaps the current load instead of
    adding to it; each blocks on its pipe until its turn. In place, each table
    is emptied first (a table truncated in its loading transaction may be
    loaded frozen, as one created in it) and committed after.
    """
    upcoming = iter(plan.tables)
    waiting: deque = deque()
    with contextlib.ExitStack() as running:
        def start_next() -> None:
            table = next(upcoming, None)
            if table is not None:
                argv = copier.build_copy_out_command(psql, plan.snapshot, table)
                waiting.append((table, running.enter_context(RunningCommand(argv, env, scope=ctx.scope))))

        for _ in range(PRODUCERS_AHEAD + 1):
            start_next()
        while waiting:
            ctx.scope.check()
            table, producer = waiting.popleft()
            start_next()
            what = (f"copy of table {table.qualified} from {describe_endpoint(source)} "
                    f"into {describe_endpoint(target)}")
            with _stage(ctx, f"loading {table.qualified} into {target.name}", run), conn.cursor() as cur, \
                    ctx.progress.activity(what) as activity:
                if run.in_place:  # ONLY: an inheritance child loaded before must keep its rows
                    cur.execute(sql.SQL("TRUNCATE ONLY {}").format(sql.Identifier(table.schema, table.name)))
                with cur.copy(table.copy_statement("FROM STDIN")) as copy:
                    nbytes = copier.pump(ctx.progress.counting(producer.stdout, activity), copy, table.qualified,
                                         producer_check=producer.check)
                rows = cur.rowcount
                if run.in_place and table.total_bytes >= ANALYZE_FROM_BYTES:
                    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table.schema, table.name)))
                    if plan.table_post_data.get((table.schema, table.name)):
                        cur.execute(plan.table_post_data[(table.schema, table.name)])
                run.step_done(conn)
            producer.close()
            yield table, rows, nbytes


def _finish_objects(conn: psycopg.Connection, plan: SourcePlan) -> None:
    """Matview contents and sequence values: a schema-only dump carries neither.

    Sequences last: a materialized view whose query calls nextval (FAC's draw their
    ids that way) advances its sequence on every refresh, and the copy must end
    with the source's value, not the source's value plus the refresh's draws.
    """
    for schema, name in plan.matviews:
        conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(schema, name)))
    for schema, name, value, is_called in plan.sequences:
        regclass = sql.Literal(sql.Identifier(schema, name).as_string(conn))
        conn.execute(sql.SQL("SELECT pg_catalog.setval({}::regclass, {}, {})").format(
            regclass, sql.Literal(value), sql.Literal(is_called)))


def _verify_counts(source: dict, loaded: dict, run: Replacement) -> None:
    """Every table's loaded rows must equal the count in the source snapshot."""
    wrong = [f"{s}.{t}: source {source.get((s, t))}, loaded {n}"
             for (s, t), n in sorted(loaded.items()) if source.get((s, t)) != n]
    if wrong or set(source) != set(loaded):
        left = run.left_behind() if run.touched else "nothing was committed"
        raise CopyError(f"row counts of the copy do not match the source; {left}",
                        detail="; ".join(wrong[:10]) or "the table lists differ",
                        hint=run.hint("run the copy again; if it repeats, compare the two databases by hand"))


@contextlib.contextmanager
def _stage(ctx, what: str, run: Replacement | None = None):
    """Name the stage in any failure and say what the target was left as."""
    ctx.progress.set_doing(what)
    left = (lambda: run.left_behind()) if run is not None else (lambda: "the target was left as it was")
    hint = run.hint if run is not None else (lambda usual: usual)
    try:
        yield
    except (JobAbortedError, SafetyError):
        raise
    except psycopg.Error as exc:
        ctx.scope.check()  # a cancel shows up as a cancelled statement: report the cancel
        lost = isinstance(exc, psycopg.OperationalError) or _session_ended(exc)
        raise CopyError(
            f"db_to_db failed while {what}; {left()}",
            detail=scrub(str(exc).strip()),
            hint=hint("the connection to the target was lost; check the database and run the copy again"
                      if lost else "fix the cause and run the copy again"),
        ) from exc
    except ServiceError as exc:
        ctx.scope.check()
        raise CopyError(
            f"db_to_db failed while {what}: {exc.message}; {left()}",
            detail=exc.detail, hint=hint(exc.hint or "fix the cause and run the copy again")) from exc


def _session_ended(exc: psycopg.Error) -> bool:
    """True when the error means the server ended the session (terminated, shut down)."""
    return isinstance(exc, (psycopg.errors.AdminShutdown, psycopg.errors.ConnectionFailure))
