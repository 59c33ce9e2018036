"""The snapshot refresh's method, chosen by the room there is, and what a failure leaves behind.

db_to_db (service.tasks.snapshot) replaces fac-snapshot-db's contents in one
of two ways (service.space has the figures):

- all or nothing: one transaction, the old copy kept until COMMIT. Chosen
  when FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB is known to hold both copies with
  the headroom; a failure leaves the old snapshot exactly as it was.
- in place: the transactions follow the order that keeps free space
  highest. (1) The `refreshing` record and the drop of every user schema
  commit together, so the old copy's files are freed before anything is
  loaded and the snapshot never passes for complete while it is not.
  (2) The definitions. (3) Each table, largest first, in a transaction of
  its own: emptied, loaded frozen, and, when it is large, analyzed and given
  its indexes and its primary-key, unique and exclusion constraints
  (split_post_data). (4) The rest of post-data: foreign keys, triggers,
  policies, the small tables' indexes. (5) Materialized views, sequences,
  grants, the row counts compared with the source snapshot, and the
  `complete` record. Measured, the peak is one copy plus the WAL: building a
  large table's indexes right after its load puts their sort files on the
  disk while the smaller tables are not loaded yet, where building them all
  at the end put the largest index's sort files on top of the whole copy.
  Chosen when both copies would not fit, and when the storage is unknown.

A refresh stopped in place tries to write `failed` with its error; one
killed leaves `refreshing`. db_restore refuses both (service.tasks.db_restore).
"""

from __future__ import annotations

import contextlib
import re
import tempfile

import psycopg

from service import copier, space
from service.commands import run_command
from service.database import connect, translated_errors
from service.errors import ServiceError
from service.loader import build_lock_timeout_sql
from service.log import scrub
from service.pgtools import build_pg_restore_command
from service.refresh_record import FAILED, REFRESHING, RefreshRecord, write_refresh_record

FAILURE_WRITE_SECONDS = 10  # writing the failed record must not hold up a cancelled job's exit
FAILURE_CONNECT_SECONDS = 3  # ...nor opening a connection for it, after a cancel cut the copy's own

# `pg_restore --list` lines: "3316; 2606 16414 CONSTRAINT public t t_pkey owner" (dump id, the
# catalog and the object's OID at the source, then its type): the OIDs say whose entry it is.
LIST_ENTRY = re.compile(r"^\d+; (\d+) (\d+) (INDEX|CONSTRAINT) ")
CONSTRAINTS, INDEXES = 2606, 1259  # pg_constraint, pg_class
OWNING_TABLES_SQL = """
SELECT x.catalog, x.oid, n.nspname, t.relname FROM (
    SELECT 2606 AS catalog, oid, conrelid AS rel FROM pg_constraint
    WHERE oid = ANY(%(constraints)s::oid[]) AND contype IN ('p', 'u', 'x')
  UNION ALL
    SELECT 1259, indexrelid, indrelid FROM pg_index WHERE indexrelid = ANY(%(indexes)s::oid[])) x
JOIN pg_class t ON t.oid = x.rel AND t.relkind = 'r'
JOIN pg_namespace n ON n.oid = t.relnamespace
"""


def split_post_data(ctx, control: psycopg.Connection, archive: bytes, pg_restore: str, env: dict,
                    tables: set[tuple[str, str]]) -> tuple[dict[tuple[str, str], str], str]:
    """The post-data of a schema-only `archive` as ({table: the SQL of its indexes and its primary-key,
    unique and exclusion constraints}, for each of `tables` that has any, and the SQL of the rest in
    the archive's order). `control` is in the source snapshot the archive was dumped from."""
    listing = run_command(build_pg_restore_command(pg_restore, list_only=True, sections=("post-data",)),
                          env, input_bytes=archive, scope=ctx.scope).decode("utf-8").splitlines()
    found = [(line, LIST_ENTRY.match(line)) for line in listing if not line.startswith(";")]
    wanted = {"constraints": [], "indexes": []}
    for _, m in found:
        if m:
            wanted["constraints" if int(m.group(1)) == CONSTRAINTS else "indexes"].append(int(m.group(2)))
    with translated_errors("reading which tables the indexes and constraints belong to"):
        owners = {(catalog, oid): (schema, name)
                  for catalog, oid, schema, name in control.execute(OWNING_TABLES_SQL, wanted).fetchall()}
    per_table: dict[tuple[str, str], list[str]] = {}
    rest = []
    for line, m in found:
        owner = owners.get((int(m.group(1)), int(m.group(2)))) if m else None
        if owner in tables:
            per_table.setdefault(owner, []).append(line)
        else:
            rest.append(line)

    def restore(lines: list[str]) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".list", encoding="utf-8") as chosen:
            chosen.write("\n".join(lines) + "\n")
            chosen.flush()
            argv = build_pg_restore_command(pg_restore, use_list=chosen.name, extra=("--file=-",))
            return copier.clean_ddl(run_command(argv, env, input_bytes=archive, scope=ctx.scope).decode("utf-8"))

    return {table: restore(lines) for table, lines in per_table.items()}, restore(rest) if rest else ""


def choose_method(ctx, control: psycopg.Connection, source, target) -> space.RefreshPlan:
    """The refresh's method from the source's size and the target's room (no lock taken on
    either); SafetyError when the target's known storage cannot hold one copy. Logs why."""
    settings = ctx.config.settings
    copy_bytes = space.read_server_space(control).database_bytes
    largest_index = space.read_largest_index(control)
    with connect(target, sslmode=settings.pg_sslmode, autocommit=True) as conn:
        room = space.read_server_space(conn)
    chosen = space.plan_refresh(space.storage_bytes(settings.snapshot_db_storage_gb), room, copy_bytes,
                                largest_index, target_name=target.name)
    ctx.log.info("db_to_db.method", target=target.name, method=chosen.method, reason=chosen.reason,
                 **{k: v for k, v in chosen.figures().items() if k not in ("method", "space_reason")})
    return chosen


class Replacement:
    """How far a replacement of the target got, so that a failure says what it left behind."""

    def __init__(self, ctx, target_name: str, in_place: bool) -> None:
        self.ctx, self.target_name, self.in_place = ctx, target_name, in_place
        self.touched = False  # in place: something committed, the old copy is gone

    @property
    def method(self) -> str:
        return space.IN_PLACE if self.in_place else space.ALL_OR_NOTHING

    def step_done(self, conn: psycopg.Connection) -> None:
        """In place, end this step's transaction (its space is freed or kept for good) and open the
        next with the same lock wait; all or nothing, nothing."""
        if not self.in_place:
            return
        conn.commit()
        self.touched = True
        conn.execute(build_lock_timeout_sql(self.ctx.config.settings.restore_lock_wait_seconds))

    def left_behind(self) -> str:
        if self.touched:
            return (f"{self.target_name} is left unfinished (refreshed in place, its refresh record says so) "
                    "and db_restore refuses it")
        return "the target was left as it was"

    def hint(self, usual: str) -> str:
        if self.touched:
            return (f"{usual}: db_to_db replaces the unfinished copy; until then restore fac-db from a backup "
                    "(s3_restore), not from the snapshot")
        return usual


def record_failure(ctx, conn: psycopg.Connection, target, record: RefreshRecord, exc: BaseException) -> str:
    """After an in-place refresh failed: write `failed` with the error, on `conn` or a new connection;
    return the state the record is left in (`refreshing` when even that failed)."""
    # A stall's or a signal's own words say why better than the error the cut connection raised.
    failed = record.with_state(FAILED, _reason(ctx.scope.failure or exc if ctx.scope.cancelled else exc))
    written = False
    with contextlib.suppress(psycopg.Error):
        if not conn.closed and not conn.broken:
            conn.rollback()
            conn.execute(f"SET LOCAL statement_timeout = '{FAILURE_WRITE_SECONDS}s'")
            write_refresh_record(conn, failed)
            conn.commit()
            written = True
    if not written:
        # A cancel cut `conn` (a stall elsewhere, SIGTERM): the target itself usually answers, and a
        # few seconds' bound keeps a silent one from holding up the exit (`interrupted` then tells).
        with contextlib.suppress(psycopg.Error, ServiceError), \
                connect(target, sslmode=ctx.config.settings.pg_sslmode, autocommit=True,
                        connect_timeout=FAILURE_CONNECT_SECONDS,
                        statement_timeout_seconds=FAILURE_CONNECT_SECONDS) as fresh:
            write_refresh_record(fresh, failed)
            written = True
    state = FAILED if written else REFRESHING
    ctx.log.warning("db_to_db.left_unfinished", target=target.name, state=state, error=failed.error,
                    backup_id=record.backup_id, run_id=record.run_id,
                    hint="db_restore refuses this snapshot; run db_to_db again, or restore from S3 with s3_restore")
    return state


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ServiceError):
        return scrub(" ".join(p for p in (exc.message, exc.detail) if p))
    return scrub(f"{type(exc).__name__}: {exc}")
