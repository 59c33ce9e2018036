"""The snapshot database's own record of its refresh: when its data was taken, and whether it is whole.

Where it lives: the comment of the snapshot database itself (`COMMENT ON
DATABASE`). A comment is transactional, needs no more than ownership of the
database (which the binding's role has on RDS), survives the copy dropping
every user schema, and is not part of anything the copy reads back out:
`pg_dump` without `--create` never dumps it, so db_restore cannot carry it
into fac-db, and no table, schema or row appears in the snapshot for FAC or
an operator to trip over. `\\l+` in psql shows it. The comment belongs to
this service: anything else written there is replaced at the next copy, and
a comment that is not ours reads as "no record" (age unknown).

The record has a state:

- `complete`: the data is a whole copy of the source as of `data_as_of`.
  An all-or-nothing copy writes it inside the transaction that replaces the
  data, so it commits with the new data or rolls back with it; the in-place
  refresh writes it in its last transaction, after every check passed.
  Records written before states existed are complete.
- `refreshing`: an in-place refresh committed it together with dropping the
  old contents, before anything else; left behind by a refresh that was
  killed, it stays, and counts as unfinished (`interrupted` once no session
  of the copy is connected any more).
- `failed`: an in-place refresh stopped at an ordinary failure and wrote
  the error here. Its contents are partly loaded.

Anything but `complete` is refused by db_restore, and shown by `show
fac-snapshot-db`, `ctl status` and fac_backup_snapshot_refresh_state.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

MARKER = "fac-backup snapshot"  # the first key of the JSON, so a glance at \l+ says whose it is
COMPLETE, REFRESHING, FAILED = "complete", "refreshing", "failed"
INTERRUPTED, UNKNOWN = "interrupted", "unknown"  # what a reader concludes; never written
STATES = (COMPLETE, REFRESHING, INTERRUPTED, FAILED, UNKNOWN)
ERROR_CHARS = 400  # a database comment is no place for a whole stderr tail


@dataclass(frozen=True)
class RefreshRecord:
    """What the snapshot database holds and from when."""

    data_as_of: datetime  # the moment of the source snapshot the copy was (or is being) taken from
    source: str           # the binding the data came from (fac-db)
    source_database: str
    run_id: str
    state: str = COMPLETE
    method: str = ""      # in_place or all_or_nothing (empty in records older than the methods)
    started_at: str = ""  # when the refresh began (ISO 8601, the service's clock)
    backup_id: str = ""   # the S3 backup the same job run wrote before the refresh, if any
    error: str = ""       # why a failed refresh stopped

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE

    def with_state(self, state: str, error: str = "") -> RefreshRecord:
        return dataclasses.replace(self, state=state, error=" ".join(error.split())[:ERROR_CHARS])

    def to_comment(self) -> str:
        data = {MARKER: 1, "state": self.state, "data_as_of": self.data_as_of.isoformat(),
                "source": self.source, "source_database": self.source_database, "run_id": self.run_id,
                "method": self.method, "started_at": self.started_at, "backup_id": self.backup_id}
        if self.error:
            data["error"] = self.error
        return json.dumps(data)


def write_refresh_record(conn: psycopg.Connection, record: RefreshRecord) -> None:
    """Set the record inside `conn`'s open transaction (it commits or rolls back with it)."""
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(conn.info.dbname), sql.Literal(record.to_comment())))


def read_refresh_record(conn: psycopg.Connection) -> RefreshRecord | None:
    """The committed record of the database `conn` is on; None when there is none (a snapshot
    copied before the record existed, by another tool, or a comment someone else wrote)."""
    row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                       "WHERE datname = current_database()").fetchone()
    return parse_refresh_record(row[0] if row else None)


def parse_refresh_record(comment: str | None) -> RefreshRecord | None:
    """The record in a database comment, or None when the comment is not one of ours."""
    try:
        data = json.loads(comment or "")
        if not isinstance(data, dict) or data.get(MARKER) != 1:
            return None
        as_of = datetime.fromisoformat(data["data_as_of"])
        if as_of.tzinfo is None:
            return None
        state = str(data.get("state") or COMPLETE)
        # A state this version does not know is not one it may trust as whole.
        state = state if state in (COMPLETE, REFRESHING, FAILED) else FAILED
        return RefreshRecord(as_of, *(str(data.get(k) or "") for k in ("source", "source_database", "run_id")),
                             state=state, **{k: str(data.get(k) or "") for k in
                                             ("method", "started_at", "backup_id", "error")})
    except (ValueError, KeyError, TypeError):
        return None


# Another session of the copy on the snapshot database: a `refreshing` record is then a
# refresh in progress, not one left behind (the copy holds one connection to the end).
COPY_SESSIONS_SQL = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()
"""


def read_refresh_state(conn: psycopg.Connection, copy_application: str) -> tuple[str, RefreshRecord | None]:
    """(state, record) of the snapshot database `conn` is on: one of STATES.

    `refreshing` with no session named `copy_application` connected reads as `interrupted`.
    """
    record = read_refresh_record(conn)
    if record is None:
        return UNKNOWN, None
    if record.state == REFRESHING:
        running = conn.execute(COPY_SESSIONS_SQL, (copy_application,)).fetchone()[0]
        return (REFRESHING if running else INTERRUPTED), record
    return record.state, record


def describe_state(state: str, record: RefreshRecord | None) -> str:
    """One line for an operator: what the snapshot's refresh record says."""
    if record is None:
        return "no refresh record (refreshed by an older version or another tool): its age and completeness are unknown"
    run = f"run {record.run_id}" + (f", {record.method.replace('_', ' ')}" if record.method else "")
    if state == COMPLETE:
        return f"complete: data as of {record.data_as_of.isoformat()} ({run})"
    since = f" since {record.started_at}" if record.started_at else ""
    if state == REFRESHING:
        return f"UNFINISHED: a refresh is in progress{since} ({run}); its copy is not whole yet"
    if state == INTERRUPTED:
        return (f"UNFINISHED: the refresh that started{since or ' earlier'} ({run}) was interrupted (no session of "
                "it is connected); the copy is partly loaded")
    error = record.error or "no error recorded"
    return f"UNFINISHED: the refresh that started{since or ' earlier'} ({run}) failed: {error}"
