"""Safeguards the README promises, each with a test that fails when the safeguard is removed.

Faults are injected deliberately: a session holding a lock the restore needs,
a producer that sends a well-formed but shorter stream, a cancel at a chosen
moment.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.integration.test_restore import CONFIRM, database_state, take_backup

pytestmark = pytest.mark.integration

HOLD_AT_MOST = 40.0  # seconds the lock holder keeps its lock if the restore never gives up


class LockHolder:
    """A session of 'the application' inside a transaction that has read a table of fac-db:
    it holds ACCESS SHARE on it, which the restore's DROP must wait for."""

    def __init__(self, box, table: str = "public.lookup_00") -> None:
        self.conn = box.connect()
        self.conn.execute("BEGIN")
        self.conn.execute(f"SELECT count(*) FROM {table}")
        self.released = threading.Event()
        # If the restore never gives up, let it through eventually so that the test ends (and fails).
        self._timer = threading.Timer(HOLD_AT_MOST, self.release)
        self._timer.start()

    def release(self) -> None:
        if not self.released.is_set():
            self.released.set()
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self._timer.cancel()
        self.release()
        self.conn.close()


@pytest.mark.parametrize("job", ["s3_restore", "db_restore"])
def test_restore_gives_up_on_a_held_lock_after_the_configured_wait(sample_db, job):
    """A session holding a lock on fac-db: the restore waits FAC_BACKUP_RESTORE_LOCK_WAIT_SECONDS,
    then fails naming the lock timeout, and fac-db is unchanged."""
    box = sample_db
    backup_id = take_backup(box)
    if job == "db_restore":
        assert box.run("db_to_db").outcome == "success"
    with box.connect() as conn:
        conn.execute("DELETE FROM public.lookup_02")
        before = database_state(conn)
    box.config(FAC_BACKUP_RESTORE_LOCK_WAIT_SECONDS="2")
    holder = LockHolder(box)
    try:
        started = time.monotonic()
        args = (backup_id,) if job == "s3_restore" else ()
        result = box.run(job, *args, options=CONFIRM)
        waited = time.monotonic() - started
        assert not holder.released.is_set(), "the restore waited until the holder let go"
    finally:
        holder.close()
    assert result.outcome == "failure", result.error
    assert "lock timeout" in f"{result.error.message} {result.error.detail}"
    assert waited < HOLD_AT_MOST
    with box.connect() as conn:
        assert database_state(conn) == before
