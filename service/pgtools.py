"""Pure builders of pg_dump / pg_restore / psql command lines and environments.

Secrets reach the programs only through the environment (PGPASSWORD), never
argv or a connection URL, so `ps` shows nothing sensitive. The environment
given to a child is built from scratch: it does not inherit VCAP_SERVICES.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from service.vcap import DatabaseBinding

INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "LD_LIBRARY_PATH", "PGSSLROOTCERT")

# Network deadlines of every session, safe for honest long work. The server probes an idle
# peer after 30 s, gives up after three unanswered probes 10 s apart, drops a connection
# whose sent data stays unacknowledged for 60 s, and checks every 2 s during a statement
# that its client is still there (so a killed psql's index build or COPY stops at once,
# and its transaction rolls back). None of these can end a statement that is working: a
# live peer's kernel answers probes and acknowledges data whatever the program is doing.
CONNECT_TIMEOUT_SECONDS = 30
SESSION_LIMITS = ("-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3 "
                  "-c tcp_user_timeout=60000 -c client_connection_check_interval=2000")
# The client's side of the same, for psycopg's connections (libpq has no environment
# variable for them; the programs' own sockets keep the system's keepalives, and the
# stall watchdog ends them).
CLIENT_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                     "keepalives_count": 3, "tcp_user_timeout": 60000}
# A program's session idle inside its transaction this long is ended by the server: far
# beyond any honest gap (a restore's psql waits only for the next bytes from S3) and beyond
# FAC_BACKUP_STALL_SECONDS, it bounds a transaction whose client is gone without a trace.
IDLE_IN_TRANSACTION_SECONDS = 900


def build_program_path(pg_bin_dir: str | None, program: str) -> str:
    """The program inside FAC_BACKUP_PG_BIN when set, else the name for PATH lookup."""
    return str(Path(pg_bin_dir) / program) if pg_bin_dir else program


def build_pg_env(
    db: DatabaseBinding,
    *,
    sslmode: str = "prefer",
    base: Mapping[str, str] | None = None,
    application_name: str = "fac-backup",
) -> dict[str, str]:
    """libpq environment for `db`, plus the few inherited variables a program needs."""
    base = os.environ if base is None else base
    env = {k: base[k] for k in INHERITED_ENV if k in base}
    env.update(
        PGHOST=db.host,
        PGPORT=str(db.port),
        PGDATABASE=db.dbname,
        PGUSER=db.username,
        PGPASSWORD=db.password,
        PGSSLMODE=sslmode,
        PGAPPNAME=application_name,
        PGCONNECT_TIMEOUT=str(CONNECT_TIMEOUT_SECONDS),
        PGOPTIONS="-c statement_timeout=0 -c lock_timeout=0 "
                  f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_SECONDS}s {SESSION_LIMITS}",
    )
    return env


def build_table_pattern(schema: str, table: str) -> str:
    """A pg_dump -t pattern matching exactly one table, whatever its name holds.

    Inside double quotes pattern characters (* ? . and regex ones) are literal;
    a double quote is written twice.
    """
    return '"{}"."{}"'.format(schema.replace('"', '""'), table.replace('"', '""'))


def build_pg_dump_command(
    program: str,
    *,
    snapshot: str | None = None,
    table: tuple[str, str] | None = None,
    schema_only: bool = False,
    compression: int | str = 1,
    fmt: str = "custom",
    lock_wait_seconds: int | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """pg_dump argv: one table (data and definition) or the whole schema, no owners or grants.

    `lock_wait_seconds` bounds the wait for a table lock (a migration holding one):
    the dump fails clearly instead of hanging, and its own lock request stops
    queueing the application's queries behind it.
    """
    argv = [program, f"--format={fmt}", "--no-owner", "--no-privileges", "--no-password"]
    if lock_wait_seconds:
        argv.append(f"--lock-wait-timeout={int(lock_wait_seconds)}s")
    if fmt == "custom":
        argv.append(f"--compress={compression}")
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    if table is not None:
        argv += ["--strict-names", f"--table={build_table_pattern(*table)}"]
    if schema_only:
        argv.append("--schema-only")
    return argv + list(extra)


def build_pg_restore_command(
    program: str,
    *,
    list_only: bool = False,
    sections: tuple[str, ...] = (),
    use_list: str | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """pg_restore argv reading an archive from stdin (to stdout as SQL unless told otherwise)."""
    argv = [program, "--no-owner", "--no-privileges"]
    if list_only:
        argv.append("--list")
    for section in sections:
        argv.append(f"--section={section}")
    if use_list:
        argv.append(f"--use-list={use_list}")
    return argv + list(extra)


def build_psql_command(program: str, *, single_transaction: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
    """psql argv that stops at the first error and, by default, runs all input as one transaction."""
    argv = [program, "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1"]
    if single_transaction:
        argv.append("--single-transaction")
    return argv + list(extra)


_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def parse_program_version(text: str) -> tuple[int, str]:
    """('pg_dump (PostgreSQL) 15.20 (Debian ...)') -> (15, '15.20')."""
    match = _VERSION.search(text)
    if not match:
        raise ValueError(f"unrecognised version output: {text.strip()[:80]!r}")
    major = int(match.group(1))
    full = match.group(1) + (f".{match.group(2)}" if match.group(2) else "")
    return major, full
