"""One runner at a time, across containers: a PostgreSQL advisory lock on fac-db.

The daemon, a `cf run-task` in its own container and a second copy of the app
during a rolling deploy share nothing but the databases, so the lock lives
there. It is a session-level advisory lock taken with `pg_try_advisory_lock`
on a dedicated connection that stays open for the whole job: when the job ends,
or the process dies, the connection closes and PostgreSQL releases the lock
(a session lock cannot outlive its holder). Advisory locks are scoped to one
database, so every run that points at the same fac-db competes for the same
lock. It does not survive a transaction-mode PgBouncer: bind fac-db directly.

Scheduled runs only try once (a busy lock means another backup is running, so
this slot is skipped and counted); one-off runs wait, polling, up to
FAC_BACKUP_LOCK_WAIT_SECONDS and say so in the log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from service.database import connect, translated_errors
from service.errors import LockBusyError

# The fixed key of the service lock: the ASCII bytes of "fac-back" read as a
# signed 64-bit integer. Documented in docs/operations.md so an operator can look for it
# in pg_locks (classid = key >> 32, objid = key & 0xffffffff, objsubid = 1).
LOCK_KEY = int.from_bytes(b"fac-back", "big", signed=True)
POLL_SECONDS = 1.0
SCHEDULED_TRIGGERS = ("scheduler",)

HOLDER_SQL = """
SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
      SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s AND l.objid = %s AND l.objsubid = 1
"""


def _lock_parts() -> tuple[int, int]:
    unsigned = LOCK_KEY & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def _try_lock(conn) -> bool:
    with translated_errors("taking the service lock"):
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def describe_holder(conn) -> str:
    """Who holds the lock, for the operator ('' when it cannot be told)."""
    try:
        row = conn.execute(HOLDER_SQL, _lock_parts()).fetchone()
    except Exception:  # noqa: BLE001 - only a courtesy for the message
        return ""
    if not row:
        return ""
    pid, app, addr, since = row
    return f"held by server process {pid} ({app or 'unknown'} from {addr or 'local'}) since {since}"


@contextlib.contextmanager
def hold_service_lock(ctx, *, wait_seconds: float,
                      poll_seconds: float = POLL_SECONDS) -> Iterator[None]:
    """Hold the service lock for the block; LockBusyError if it stays taken.

    `wait_seconds` 0 tries once. Waiting is cancellable through the run's scope.
    """
    settings = ctx.config.settings
    conn = connect(ctx.config.fac_db, sslmode=settings.pg_sslmode, autocommit=True)
    try:
        if not _try_lock(conn):
            holder = describe_holder(conn)
            if wait_seconds <= 0:
                raise LockBusyError(
                    "another run holds the service lock; nothing was done",
                    detail=holder,
                    hint="a scheduled run simply waits for its next slot; "
                    "see what runs with python -m service ctl status",
                )
            ctx.log.info("lock.waiting", wait_seconds=wait_seconds, holder=holder)
            started = time.monotonic()
            deadline = started + wait_seconds
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockBusyError(
                        f"another run held the service lock for {wait_seconds:.0f} s; "
                        "nothing was done",
                        detail=describe_holder(conn) or holder,
                        hint="wait for the running job to finish (python -m service ctl status), "
                        "then start this one again, or raise FAC_BACKUP_LOCK_WAIT_SECONDS",
                    )
                if ctx.scope.wait(min(poll_seconds, remaining)):
                    ctx.scope.check()
                if _try_lock(conn):
                    break
            ctx.log.info("lock.acquired", waited_seconds=round(time.monotonic() - started, 3))
        yield
    finally:
        # Closing the session releases the lock; an explicit unlock would add nothing.
        conn.close()


def default_lock_guard(trigger: str):
    """The lock policy of a trigger: scheduled runs try once, every other run waits."""
    def guard(ctx):
        wait = 0.0 if trigger in SCHEDULED_TRIGGERS else ctx.config.settings.lock_wait_seconds
        return hold_service_lock(ctx, wait_seconds=wait)
    return guard
