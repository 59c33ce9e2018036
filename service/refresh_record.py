"""The snapshot database's own record of when its data was taken.

db_to_db writes the record inside the transaction that replaces the snapshot
database's contents, so the record commits with the new data or rolls back
with it: it cannot claim a refresh that did not happen (a manifest in the
backups bucket could, when the copy after it failed), and a copy run on its
own is dated as well as one run by a backup job.

Where it lives: the comment of the snapshot database itself
(`COMMENT ON DATABASE`). A comment is transactional, needs no more than
ownership of the database (which the binding's role has on RDS), survives the
copy dropping every user schema, and is not part of anything the copy reads
back out: `pg_dump` without `--create` never dumps it, so db_restore cannot
carry it into fac-db, and no table, schema or row appears in the snapshot for
FAC or an operator to trip over. `\\l+` in psql shows it. The comment belongs
to this service: anything else written there is replaced at the next copy,
and a comment that is not ours reads as "no record" (age unknown).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

MARKER = "fac-backup snapshot"  # the first key of the JSON, so a glance at \l+ says whose it is


@dataclass(frozen=True)
class RefreshRecord:
    """What the snapshot database holds and from when."""

    data_as_of: datetime  # the moment of the source snapshot the copy was taken from
    source: str           # the binding the data came from (fac-db)
    source_database: str
    run_id: str

    def to_comment(self) -> str:
        return json.dumps({MARKER: 1, "data_as_of": self.data_as_of.isoformat(), "source": self.source,
                           "source_database": self.source_database, "run_id": self.run_id})


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
        return RefreshRecord(as_of, str(data.get("source", "")), str(data.get("source_database", "")),
                             str(data.get("run_id", "")))
    except (ValueError, KeyError, TypeError):
        return None
