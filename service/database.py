"""psycopg connections for control and introspection (the PostgreSQL programs move the data).

Identifiers always go through psycopg.sql.Identifier, so names with quotes,
spaces, capitals, non-ASCII letters or reserved words are safe. Driver errors
become DatabaseError with the server's message and no secret.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from service.errors import DatabaseError
from service.log import scrub
from service.pgtools import CLIENT_KEEPALIVES, CONNECT_TIMEOUT_SECONDS, SESSION_LIMITS
from service.vcap import DatabaseBinding

# Catalog only: no lock is taken on the tables (pg_total_relation_size would take one,
# wait behind a migration's lock, and queue the application behind it). The size is
# the planner's page count of the heap and its TOAST table, as of the last VACUUM or
# ANALYZE: an estimate, which is all that choosing a multipart part size needs.
USER_TABLES_SQL = """
SELECT n.nspname, c.relname,
       (c.relpages::bigint + coalesce(t.relpages, 0)) * current_setting('block_size')::bigint
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
WHERE c.relkind IN ('r', 'p')
  AND n.nspname <> 'information_schema'
  AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""


@dataclass(frozen=True, order=True)
class TableInfo:
    """One user table and its estimated data size (heap and TOAST pages, from the catalog)."""

    schema: str
    name: str
    total_bytes: int = 0

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


def connect(db: DatabaseBinding, *, sslmode: str = "prefer", autocommit: bool = False,
            lock_timeout_seconds: int | None = None, application_name: str = "fac-backup",
            connect_timeout: int = CONNECT_TIMEOUT_SECONDS,
            statement_timeout_seconds: int | None = None) -> psycopg.Connection:
    """Open a connection; raise DatabaseError naming the binding, never the password.

    `lock_timeout_seconds` makes a statement that waits for a table lock (held by
    a migration) fail instead of hanging and queueing the application behind it.
    Both ends watch the connection (TCP keepalives, a user timeout, the server's
    check of its client during a statement: pgtools.SESSION_LIMITS), so a peer
    that vanished is noticed within about a minute, while a statement that
    honestly runs for hours is never cut.
    """
    options = SESSION_LIMITS
    if lock_timeout_seconds:
        options += f" -c lock_timeout={int(lock_timeout_seconds)}s"
    if statement_timeout_seconds:
        options += f" -c statement_timeout={int(statement_timeout_seconds)}s"
    try:
        return psycopg.connect(
            options=options,
            host=db.host,
            port=db.port,
            dbname=db.dbname,
            user=db.username,
            password=db.password,
            sslmode=sslmode,
            application_name=application_name,
            connect_timeout=connect_timeout,
            autocommit=autocommit,
            **CLIENT_KEEPALIVES,
        )
    except psycopg.Error as exc:
        raise DatabaseError(
            f"cannot connect to {db.name} ({db.host}:{db.port}/{db.dbname})",
            detail=scrub(str(exc).strip()),
            hint="check that the service binding is current and the database is reachable",
        ) from exc


def describe_endpoint(db: DatabaseBinding) -> str:
    """'fac-db (host:port)', for messages about where something waited."""
    return f"{db.name} ({db.host}:{db.port})"


def sever(conn: psycopg.Connection) -> None:
    """Cut `conn`'s socket in both directions, from any thread; never raises.

    A thread blocked on the connection (a statement, a COPY) wakes at once with
    an error, and the server, seeing the connection end, rolls back its
    transaction and ends the session: a cancel that does not depend on the
    server answering (psycopg's cancel needs a second connection, and a silent
    network delivers neither).
    """
    try:
        fd = conn.fileno()
    except (psycopg.Error, OSError, ValueError):
        return  # closed already
    try:
        with socket.socket(fileno=os.dup(fd)) as cut:
            cut.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


@contextlib.contextmanager
def translated_errors(what: str) -> Iterator[None]:
    """Turn psycopg errors inside the block into DatabaseError('<what> failed')."""
    try:
        yield
    except psycopg.Error as exc:
        raise DatabaseError(f"{what} failed", detail=scrub(str(exc).strip())) from exc


def server_version(conn: psycopg.Connection) -> tuple[int, str]:
    """(major, 'major.minor') of the server."""
    num = conn.info.server_version
    return num // 10000, f"{num // 10000}.{num % 10000}"


def list_user_tables(conn: psycopg.Connection) -> list[TableInfo]:
    """Every ordinary and partitioned table outside the system schemas and extensions,
    with its estimated size; takes no lock on the tables."""
    with translated_errors("listing tables"):
        rows = conn.execute(USER_TABLES_SQL).fetchall()
    return [TableInfo(schema, name, max(int(size or 0), 0)) for schema, name, size in rows]


def count_rows(conn: psycopg.Connection, schema: str, table: str) -> int:
    """Exact row count, identifiers quoted."""
    query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    with translated_errors(f"counting rows of {schema}.{table}"):
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def export_snapshot(conn: psycopg.Connection) -> str:
    """Open a REPEATABLE READ READ ONLY transaction and export its snapshot.

    The transaction must stay open until every importer has started.
    """
    with translated_errors("exporting a snapshot"):
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None
    return str(row[0])


def import_snapshot(conn: psycopg.Connection, snapshot: str) -> None:
    """Make `conn` see exactly the exported snapshot (REPEATABLE READ, read only)."""
    with translated_errors("importing the backup snapshot"):
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))


def database_size(conn: psycopg.Connection) -> int:
    """pg_database_size of the connection's database in bytes (0 when it cannot be read: the
    figure feeds the report's growth chart, never a decision)."""
    try:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row and row[0] else 0
