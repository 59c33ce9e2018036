"""One runner at a time: the advisory lock on fac-db, against a real PostgreSQL server."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from service import catalog, jobs, journal
from service.commands import CancelScope
from service.daemon_runs import Runner
from service.errors import LockBusyError
from service.locking import LOCK_KEY, hold_service_lock
from service.metrics import Metrics

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def forget_failures():
    """These tests fail and abort runs on purpose: leave no memory of them to later tests."""
    yield
    from service import notify

    notify.forget_outcomes()


@pytest.fixture
def other_holder(sandbox):
    """A second session on fac-db that holds the service lock, as another container would."""
    conn = sandbox.connect()
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    yield conn
    conn.close()


def lock_is_free(sandbox) -> bool:
    with sandbox.connect() as conn:
        free = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]
        if free:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return free


def sample_value(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels)


def test_lock_is_held_for_the_block_and_released_after(sandbox):
    """Inside hold_service_lock no other session gets the lock; after it, one does."""
    ctx = SimpleNamespace(config=sandbox.config(), scope=CancelScope(), log=None)
    with hold_service_lock(ctx, wait_seconds=0):
        assert not lock_is_free(sandbox)
    assert lock_is_free(sandbox)


def test_scheduled_run_is_skipped_and_counted_when_the_lock_is_taken(sample_db, other_holder):
    """A scheduler run finding the lock taken ends `skipped`, counted as lock_busy, writes nothing."""
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    result = Runner(sample_db.config(), metrics).run("db_to_s3", trigger="scheduler")
    assert result.outcome == "skipped"
    assert isinstance(result.error, LockBusyError)
    assert "held by server process" in result.error.detail
    assert sample_value(metrics, "fac_backup_job_runs_total", job="db_to_s3", outcome="skipped") == 1
    assert sample_value(metrics, "fac_backup_job_skipped_total", job="db_to_s3", reason="lock_busy") == 1
    assert list(catalog.list_backup_objects(sample_db.store())) == []
    # The run journal shows the skip, so the contingency report can name the slot and its reason.
    records = journal.read_records(sample_db.store(), datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC))
    assert [(r["job"], r["outcome"], r["reason"], r["trigger"]) for r in records] == \
        [("db_to_s3", "skipped", "lock_busy", "scheduler")]


def test_one_off_run_waits_says_so_then_fails_with_exit_4(sample_db, other_holder):
    """A one-off run waits up to lock_wait_seconds, logs lock.waiting, then fails with exit 4."""
    config = sample_db.config(FAC_BACKUP_LOCK_WAIT_SECONDS="1.5")
    started = time.monotonic()
    with capture_logs() as events:
        result = jobs.run_job(config, "db_to_s3", trigger="cli")
    assert time.monotonic() - started >= 1.5
    assert result.outcome == "failure" and result.exit_code == 4
    assert isinstance(result.error, LockBusyError)
    assert any(e["event"] == "lock.waiting" for e in events)
    assert list(catalog.list_backup_objects(sample_db.store())) == []


def test_one_off_run_proceeds_as_soon_as_the_lock_is_released(sample_db, other_holder):
    """A waiting one-off run takes the lock when the holder lets go, and completes."""
    config = sample_db.config(FAC_BACKUP_LOCK_WAIT_SECONDS="60")
    results = []
    with capture_logs() as events:
        worker = threading.Thread(target=lambda: results.append(
            jobs.run_job(config, "db_to_s3", trigger="cli")))
        worker.start()
        deadline = time.monotonic() + 10
        while not any(e["event"] == "lock.waiting" for e in events) and time.monotonic() < deadline:
            worker.join(0.02)
        assert any(e["event"] == "lock.waiting" for e in events)
        other_holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        worker.join(60)
    assert results[0].outcome == "success"
    assert any(e["event"] == "lock.acquired" for e in events)


def test_waiting_for_the_lock_is_cancellable(sample_db, other_holder):
    """A cancel (SIGTERM) while waiting for the lock ends the run `aborted` at once."""
    config = sample_db.config(FAC_BACKUP_LOCK_WAIT_SECONDS="60")
    scope = CancelScope()
    threading.Timer(0.5, scope.cancel, args=("received SIGTERM",)).start()
    started = time.monotonic()
    result = jobs.run_job(config, "db_to_s3", trigger="cli", scope=scope)
    assert result.outcome == "aborted" and result.exit_code == 5
    assert time.monotonic() - started < 3


def test_jobs_that_take_no_lock_run_while_it_is_held(sample_db, other_holder):
    """row_count (takes_lock=False) is not held up by a running backup."""
    result = jobs.run_job(sample_db.config(), "row_count", trigger="scheduler")
    assert result.outcome == "success"
