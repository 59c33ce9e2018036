"""Triggers over the real control socket into the daemon's Runner: one run per job at a time."""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from service import jobs
from service.control import ControlServer, send_request
from service.daemon import build_control_handler
from service.daemon_runs import Runner
from service.metrics import Metrics
from service.scheduler import JobScheduler
from tests.unit.test_requests import config  # noqa: F401 - the fixture

TRIALS = 30
CLIENTS = 16


class HeldStep:
    """A step that runs until released, so a run stays active while the triggers arrive."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, ctx) -> dict:
        with self._lock:
            self.calls.append(ctx.run_id)
        assert self.release.wait(60), "the test never released the step"
        return {}


@pytest.fixture
def daemon(config, monkeypatch):  # noqa: F811 - the fixture
    step = HeldStep()
    monkeypatch.setitem(jobs.STEPS, "row_count", step)
    monkeypatch.setitem(jobs.STEPS, "prune_backups", step)
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    runner = Runner(config, metrics)
    scheduler = JobScheduler(ZoneInfo("UTC"), lambda job: None)
    with tempfile.TemporaryDirectory(prefix="trg-", dir="/tmp") as tmp:
        server = ControlServer(Path(tmp) / "c.sock", build_control_handler(runner, scheduler, metrics),
                               max_connections=CLIENTS).start()  # every client served, none told busy
        try:
            yield server, runner, step, metrics
        finally:
            step.release.set()
            runner.wait_idle(10)
            server.close()


def wait_for(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def trigger(path: Path, job: str, options: dict | None = None) -> dict:
    return send_request(path, {"command": "trigger", "job": job, "args": [], "options": options or {}})


def test_simultaneous_triggers_start_exactly_one_run(daemon):
    """Sixteen `trigger row_count` released together by a barrier, thirty times: each time exactly one
    is accepted, the others are refused as already running, and the step runs once. Threads switch
    far more often than by default, so a check and a registration made in two steps interleave."""
    server, runner, step, _ = daemon
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        fire_trials(server, runner, step)
    finally:
        sys.setswitchinterval(previous)


def fire_together(path: Path, job: str, clients: int) -> list[dict]:
    """`clients` triggers of `job`, each on its own thread and connection, released by one barrier."""
    barrier, replies, lock = threading.Barrier(clients), [], threading.Lock()

    def fire() -> None:
        barrier.wait(10)
        reply = trigger(path, job)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=fire) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return replies


def fire_trials(server, runner, step) -> None:
    for trial in range(TRIALS):
        replies = fire_together(server.path, "row_count", CLIENTS)
        accepted = [r for r in replies if r["ok"]]
        assert len(replies) == CLIENTS
        assert len(accepted) == 1, f"trial {trial}: {len(accepted)} runs accepted"
        assert all("already running" in r["error"] for r in replies if not r["ok"])
        step.release.set()
        assert runner.wait_idle(10)
        step.release.clear()
        assert len(step.calls) == trial + 1


def test_a_scheduled_fire_goes_through_the_same_guard(daemon):
    """While a socket-triggered run of a job is active, the scheduler's run of that job does not
    start: it returns at once and is counted as skipped (already_running)."""
    server, runner, step, metrics = daemon
    assert trigger(server.path, "row_count")["ok"]
    wait_for(lambda: step.calls, "the triggered run to reach its step")
    done = threading.Event()
    threading.Thread(target=lambda: (runner.run("row_count"), done.set()), daemon=True).start()
    assert done.wait(5), "the scheduled run started beside the running one"
    assert len(step.calls) == 1
    skipped = metrics.registry.get_sample_value("fac_backup_job_skipped_total",
                                                {"job": "row_count", "reason": "already_running"})
    assert skipped == 1


def test_a_string_boolean_over_the_socket_is_refused_and_nothing_runs(daemon):
    """`{"apply": "false"}` on prune_backups: refused with exit 2 naming the option; no run."""
    server, runner, step, _ = daemon
    reply = trigger(server.path, "prune_backups", {"apply": "false"})
    assert reply["ok"] is False and reply["exit_code"] == 2
    assert "'apply'" in reply["error"] and "true or false" in reply["error"]
    assert runner.status()["running"] == [] and step.calls == []
    reply = trigger(server.path, "prune_backups", {"apply": False, "dry_run": True})
    assert reply["ok"] is False and "unknown option 'dry_run'" in reply["error"]
