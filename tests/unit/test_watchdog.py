"""The stall watchdog's decisions (service.watchdog, service.progress) and the run boundary's verdict."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from structlog.testing import capture_logs

from service import jobs
from service.commands import CancelScope
from service.config import load_config
from service.errors import JobAbortedError, StallError, StorageError
from service.log import get_logger
from service.progress import Progress, watch_step
from service.tasks.sync import SyncReport
from service.watchdog import StallWatch, build_stall_error
from tests.unit.test_config import vcap


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Probe:
    def __init__(self, busy_at: float, text: str = "fac-db: busy", silent: bool = False) -> None:
        self.busy_at, self.text, self.silent = busy_at, text, silent

    def describe(self) -> str:
        return self.text


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def progress(clock):
    p = Progress(clock=clock)
    p.begin("db_to_s3")
    return p


def test_bytes_items_and_answers_are_motion_and_time_without_them_is_idle(progress, clock):
    """Idle time counts from the last byte, finished item or answered request, and only from then."""
    clock.now += 5
    assert progress.idle_seconds() == 5
    progress.add(10)
    clock.now += 1
    assert progress.idle_seconds() == 1
    with progress.activity("S3 LIST of s3://b/backups/") as listing:
        clock.now += 3
        listing.moved()  # the page arrived
        assert progress.idle_seconds() == 0
    clock.now += 3
    progress.item_done()
    assert progress.idle_seconds() == 0


def test_an_allowance_covers_a_late_answer_and_then_runs_out(progress, clock):
    """A request with an allowance (a 5 GB server-side copy) may be quiet that much longer, no more;
    once it ended without an answer, its allowance is gone."""
    with progress.activity("S3 COPY of s3://b/big", allowance=30):
        clock.now += 29
        assert progress.idle_seconds() == 0
        clock.now += 11
        assert progress.idle_seconds() == 10
    assert progress.idle_seconds() == 40
    with progress.activity("S3 HEAD of s3://b/k"):  # an ordinary request is no motion by itself
        clock.now += 4
        assert progress.idle_seconds() == 44


def test_requests_that_keep_starting_and_failing_are_no_motion(progress, clock):
    """A media sync on a silent S3: 16 copies at a time, each failing after its read timeout and the
    next one starting, for ten minutes. Idle time keeps growing: the watchdog is not masked."""
    for _ in range(20):
        with contextlib.suppress(TimeoutError), progress.activity("S3 COPY of s3://b/k", allowance=1.2):
            clock.now += 30
            raise TimeoutError
    assert progress.idle_seconds() == 600


def test_a_busy_probe_is_motion_and_a_stale_one_is_not(progress, clock):
    """An index build reported busy by the server keeps the step moving; once the probe stops
    reporting (the server went silent), idle time grows from its last report."""
    probe = Probe(busy_at=clock.now)
    token = progress.add_probe(probe)
    clock.now += 50
    probe.busy_at = clock.now - 1
    assert progress.idle_seconds() == 1
    clock.now += 9
    assert progress.idle_seconds() == 10
    progress.remove_probe(token)
    assert progress.idle_seconds() == 10  # the work it saw stays seen


def test_the_error_names_the_longest_quiet_transfer_its_endpoint_and_how_long(progress, clock):
    """The culprit is the transfer quiet the longest; the detail lists the others, the servers and the limit."""
    with progress.activity("upload of s3://b/backups/x/public-big.dump to https://s3.example") as up:
        clock.now += 1
        with progress.activity("download of s3://b/k from https://s3.example"):
            clock.now += 1
            up.moved(5)  # the upload moved last: the download is the quietest
            clock.now += 6
            error = build_stall_error("s3_restore", progress.idle_seconds(), 5, progress.in_flight(),
                                      "loading table public.x into fac-db", [Probe(0, "fac-db: idle in transaction")])
    assert isinstance(error, StallError) and error.exit_code == 1
    assert error.message == ("s3_restore stalled and was stopped after 6 s without motion: download of "
                             "s3://b/k from https://s3.example (waiting 7.0 s)")
    assert "public-big.dump" in error.detail and "fac-db: idle in transaction" in error.detail
    assert "stage: loading table public.x into fac-db" in error.detail
    assert "FAC_BACKUP_STALL_SECONDS=5" in error.detail


def test_without_a_transfer_a_silent_database_is_the_culprit():
    """Nothing in flight but a probe that gets no answer: the database is named."""
    error = build_stall_error("db_to_db", 9, 5, [], "building indexes",
                              [Probe(0, "fac-db (h:5432) did not answer the watchdog for 9 s", silent=True)])
    assert "fac-db (h:5432) did not answer the watchdog" in error.message


def test_the_watch_fires_once_past_the_limit_and_logs_step_stalled(progress, clock):
    """Below the limit nothing happens; past it, one `step.stalled`, one count, one call."""
    calls, counted = [], []

    class Metrics:
        def step_stalled(self, job):
            counted.append(job)

    with capture_logs() as logs:
        watch = StallWatch(progress, 5, calls.append, log=get_logger(), metrics=Metrics(), job="daily_backup")
        clock.now += 4.9
        watch.check()
        assert calls == []
        clock.now += 0.2
        watch.check()
        watch.check()
    assert len(calls) == 1 and counted == ["daily_backup"]
    stalled = [e for e in logs if e["event"] == "step.stalled"]
    assert len(stalled) == 1 and stalled[0]["limit_seconds"] == 5 and stalled[0]["step"] == "db_to_s3"


def test_a_cancel_that_came_first_wins_over_a_stall():
    """`fail` after `cancel` changes nothing: a run being stopped by SIGTERM stays aborted."""
    scope = CancelScope()
    scope.cancel("received SIGTERM")
    scope.fail(StallError("x stalled"))
    assert scope.failure is None and scope.reason == "received SIGTERM"


def test_cleanups_run_latest_first():
    """A resource taken inside another is let go first (the snapshot's session before the stores)."""
    scope, order = CancelScope(), []
    scope.add_cleanup(lambda: order.append("store"))
    scope.add_cleanup(lambda: order.append("snapshot session"))
    scope.cancel()
    assert order == ["snapshot session", "store"]


def test_a_failed_object_of_the_sync_is_not_progress(clock):
    """Objects failing one by one (each after its timeouts) must not look like a moving sync."""
    progress = Progress(clock=clock)
    progress.begin("media_sync")
    report = SyncReport("a", "b", "server-side", progress=progress)
    clock.now += 30
    report.add("failed", 100, "k", "S3 COPY of s3://b/k failed: timeout")
    assert progress.idle_seconds() == 30 and progress.items == 0
    report.add("copy", 100)
    assert progress.idle_seconds() == 0 and progress.items == 1


# --- watch_step and run_job: the real thread, a short limit ------------------------------------------

def test_watch_step_stops_a_silent_step_and_spares_a_slow_moving_one():
    """With a 0.4 s limit, a step moving a byte every 0.1 s for 1 s is left alone, and a step
    moving nothing is stopped once, within the limit plus a sample."""
    log, stalls = get_logger(), []
    progress = Progress()
    watch = StallWatch(progress, 0.4, stalls.append, log=log)
    with watch_step(progress, "media_sync", interval=0, log=log, watchdog=watch):
        for _ in range(10):
            time.sleep(0.1)
            progress.add(1)
    assert stalls == []
    progress = Progress()
    watch = StallWatch(progress, 0.4, stalls.append, log=log)
    started = time.monotonic()
    with watch_step(progress, "media_sync", interval=0, log=log, watchdog=watch):
        while not stalls and time.monotonic() - started < 10:
            time.sleep(0.02)
    assert len(stalls) == 1 and 0.4 <= time.monotonic() - started < 3


@pytest.fixture
def config():
    return load_config({"VCAP_SERVICES": vcap(), "FAC_BACKUP_STALL_SECONDS": "0.4"})


def run(config, name):
    return jobs.run_job(config, name, lock_guard=lambda ctx: contextlib.nullcontext())


def blocked_step(raise_after_cancel):
    """A step that waits until its run is cancelled (as a request on a silent network would),
    then fails the way interrupted work does."""
    def step(ctx):
        assert ctx.scope.wait(20), "never cancelled"
        raise raise_after_cancel
    return step


@pytest.mark.parametrize("collateral", [JobAbortedError("the upload was cancelled"),
                                        StorageError("S3 GET of s3://b/k failed", detail="connection closed"),
                                        OSError("socket shut down")])
def test_a_stalled_run_ends_as_a_failure_with_the_watchdogs_error(config, monkeypatch, collateral):
    """Whatever the interrupted work raises on its way out, the run fails (exit 1) with the stall's
    error, not `aborted` and not a crash."""
    monkeypatch.setitem(jobs.STEPS, "media_sync", blocked_step(collateral))
    started = time.monotonic()
    result = run(config, "media_sync")
    assert result.outcome == "failure" and result.exit_code == 1 and not result.crashed
    assert isinstance(result.error, StallError) and "media_sync stalled" in result.error.message
    assert time.monotonic() - started < 5


def test_a_signal_during_interrupted_work_still_ends_as_aborted(config, monkeypatch):
    """A cancel (SIGTERM) whose interrupted request raised a StorageError: aborted, exit 5."""
    monkeypatch.setitem(jobs.STEPS, "media_sync", blocked_step(StorageError("S3 COPY failed")))
    scope = CancelScope()
    threading.Timer(0.1, scope.cancel, args=("received SIGTERM",)).start()
    result = jobs.run_job(config, "media_sync", scope=scope, lock_guard=lambda ctx: contextlib.nullcontext())
    assert result.outcome == "aborted" and result.exit_code == 5


def test_short_steps_are_not_watched(config, monkeypatch):
    """row_count moves no byte it counts: it is never stopped by the watchdog."""
    monkeypatch.setitem(jobs.STEPS, "row_count", lambda ctx: time.sleep(1.0) or {"tables": 1})
    result = run(config, "row_count")
    assert result.outcome == "success", result.error
