"""The moving parts of a database-to-database copy: what to copy, and a byte pump.

Data moves as PostgreSQL binary COPY streams: a source `psql` (importing the
exported snapshot) writes `COPY ... TO STDOUT (FORMAT binary)` to a pipe, and
the pump hands that pipe, 1 MiB at a time, to `COPY ... FROM STDIN` on the
target connection. Python never looks at rows, so the copy runs at the speed
of the two servers (see FACTS: per-row Python work is what makes COPY slow).

A stream is trusted only when it is whole: it must start with the binary COPY
signature and end with the file trailer, its producer must exit 0, and the
row count must match the source's (checked by the caller). A producer that
died halfway may leave the consumer a clean EOF; the trailer and the exit
status catch that.
"""

from __future__ import annotations

import queue
import re
import threading
from dataclasses import dataclass

import psycopg
from psycopg import sql

from service.errors import CopyError

CHUNK_BYTES = 1024 * 1024
QUEUE_DEPTH = 4
BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
BINARY_TRAILER = b"\xff\xff"

# Everything a user made, outside the system schemas and what extensions own.
_USER_RELATION = """
  n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
"""

# Only relkind 'r': partitions are copied one by one, and a partitioned parent
# has no rows of its own (copying it too would load every row twice).
TABLES_SQL = f"""
SELECT n.nspname, c.relname,
       coalesce(array_agg(a.attname ORDER BY a.attnum)
                FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{{}}'),
       pg_total_relation_size(c.oid)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid
WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {_USER_RELATION}
GROUP BY n.nspname, c.relname, c.oid
ORDER BY n.nspname, c.relname
"""

SEQUENCES_SQL = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND {_USER_RELATION} ORDER BY n.nspname, c.relname
"""

# Creation order is the best cheap guess at dependency order between matviews.
MATVIEWS_SQL = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND c.relispopulated AND {_USER_RELATION} ORDER BY c.oid
"""

USER_SCHEMAS_SQL = """
SELECT nspname FROM pg_namespace
WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%' ORDER BY nspname
"""


@dataclass(frozen=True)
class TableCopy:
    """One table to copy and the columns that carry data (generated ones are recomputed)."""

    schema: str
    name: str
    columns: tuple[str, ...]
    total_bytes: int = 0

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def copy_statement(self, direction: str) -> sql.Composed:
        """`COPY "s"."t" ("a", "b") TO STDOUT|FROM STDIN (FORMAT binary)`, every name quoted.

        Loads use FREEZE: the table was created in the loading transaction, so
        its rows can be written frozen and readers need no later hint-bit pass.
        """
        options = {"TO STDOUT": "FORMAT binary", "FROM STDIN": "FORMAT binary, FREEZE"}[direction]
        columns = sql.SQL("")
        if self.columns:
            columns = sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, self.columns)))
        return sql.SQL("COPY {}{} {} ({})").format(
            sql.Identifier(self.schema, self.name), columns, sql.SQL(direction), sql.SQL(options))


def read_tables(conn: psycopg.Connection) -> list[TableCopy]:
    """Every user table with data (ordinary tables and partitions), largest first."""
    rows = conn.execute(TABLES_SQL).fetchall()
    tables = [TableCopy(s, n, tuple(cols), int(size or 0)) for s, n, cols, size in rows]
    return sorted(tables, key=lambda t: (-t.total_bytes, t.schema, t.name))


def read_sequence_values(conn: psycopg.Connection) -> list[tuple[str, str, int, bool]]:
    """(schema, name, last_value, is_called) of every user sequence, as the connection sees it."""
    values = []
    for schema, name in conn.execute(SEQUENCES_SQL).fetchall():
        query = sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
        last_value, is_called = conn.execute(query).fetchone()
        values.append((schema, name, int(last_value), bool(is_called)))
    return values


def read_populated_matviews(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Materialized views holding data at the source (a schema-only dump creates them empty)."""
    return [(s, n) for s, n in conn.execute(MATVIEWS_SQL).fetchall()]


def build_copy_out_command(psql: str, snapshot: str, table: TableCopy) -> list[str]:
    """psql argv that streams one table, as of the exported snapshot, in binary COPY format.

    row_security off makes a policy an error instead of a silent filter.
    """
    literal = "'" + snapshot.replace("'", "''") + "'"
    return [
        psql, "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1",
        "-c", "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "-c", f"SET TRANSACTION SNAPSHOT {literal}",
        "-c", "SET row_security = off",
        "-c", table.copy_statement("TO STDOUT").as_string(None),
        "-c", "COMMIT",
    ]


_PSQL_RESTRICT = re.compile(r"^\\(un)?restrict\b.*$", re.MULTILINE)


def clean_ddl(script: str) -> str:
    """A pg_dump plain script made executable by the server: drop psql's \\restrict lines.

    pg_dump (15.14 and later) brackets plain output with `\\restrict KEY` and
    `\\unrestrict KEY`; they are psql meta-commands the server cannot run.
    """
    return _PSQL_RESTRICT.sub("", script)


class StreamGuard:
    """Watches a binary COPY stream go by; `finish()` raises unless it was whole."""

    def __init__(self) -> None:
        self.bytes = 0
        self._head = b""
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if len(self._head) < len(BINARY_SIGNATURE):
            self._head += chunk[: len(BINARY_SIGNATURE) - len(self._head)]
        self._tail = (self._tail + chunk[-len(BINARY_TRAILER):])[-len(BINARY_TRAILER):]
        self.bytes += len(chunk)

    def finish(self, what: str) -> None:
        if self._head != BINARY_SIGNATURE[: len(self._head)] or len(self._head) < len(BINARY_SIGNATURE):
            raise CopyError(f"the data stream of {what} is not a binary COPY stream",
                            detail=f"{self.bytes} bytes received")
        if self._tail != BINARY_TRAILER:
            raise CopyError(f"the data stream of {what} ended before its end marker (truncated)",
                            detail=f"{self.bytes} bytes received",
                            hint="the source program stopped early; nothing was committed")


def pump(stream, copy, what: str, *, producer_check=lambda: None, chunk_bytes: int = CHUNK_BYTES,
         depth: int = QUEUE_DEPTH) -> int:
    """Move `stream` into a psycopg Copy in large chunks; return the bytes moved.

    A reader thread fills a small bounded queue while this thread writes to
    the server, so reading the pipe and writing the socket overlap (a third
    faster than alternating, measured) with at most `depth` chunks in memory.
    Call this inside the `cursor.copy()` block: after EOF it runs
    `producer_check` (the producer's exit status) and then checks the stream
    is whole, so any failure raises before the COPY can end cleanly.
    """
    chunks: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                chunk = stream.read(chunk_bytes)
                _put(chunks, chunk, stop)
                if not chunk:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
            _put(chunks, exc, stop)

    reader = threading.Thread(target=read, name="copy-reader", daemon=True)
    reader.start()
    guard = StreamGuard()
    try:
        while (chunk := chunks.get()) != b"":
            if isinstance(chunk, BaseException):
                raise chunk
            guard.feed(chunk)
            copy.write(chunk)
    except BaseException:
        # The reader may be blocked on a stalled producer: it ends when the caller closes it.
        stop.set()
        raise
    reader.join()
    producer_check()
    guard.finish(what)
    return guard.bytes


def _put(chunks: queue.Queue, item, stop: threading.Event) -> None:
    """Put unless the writer gave up (it stops reading the queue when it fails)."""
    while not stop.is_set():
        try:
            chunks.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
