"""Safeguards of the service's life around the jobs: prune, notifications, the lock, the upload sweep.

Each test fails when its safeguard is removed (the docstring says which).
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from structlog.testing import capture_logs

from service import catalog, jobs, layout, notify
from service.config import load_config
from service.errors import JobAbortedError, LockBusyError
from service.locking import LOCK_KEY
from service.tasks import backup
from tests.fakes import dies_halfway, make_pg_bin
from tests.integration import test_daemon
from tests.integration.test_daemon import wait_for
from tests.integration.test_notify import Receiver, failure
from tests.integration.test_prune import history  # noqa: F401 - a fixture
from tests.unit.test_config import vcap

pytestmark = pytest.mark.integration
start_daemon = test_daemon.start_daemon  # the daemon fixture of test_daemon, used here too


@pytest.fixture(autouse=True)
def fresh_outcomes():
    notify.forget_outcomes()
    yield
    notify.forget_outcomes()


# --- prune keeps what it cannot read ------------------------------------------------------------

def test_prune_apply_keeps_a_backup_whose_manifest_is_unreadable(history):  # noqa: F811
    """An old backup whose manifest.json is not JSON: --apply keeps every object of it (it is foreign)."""
    box, store, clock = history
    bad = "daily-16"  # old enough that a readable manifest would have it deleted
    store.put_bytes(layout.backup_prefix(bad) + layout.MANIFEST_NAME, b"{ not json")
    before = {o.key for o in store.list_objects(layout.backup_prefix(bad))}
    with capture_logs() as logs:
        result = box.run("prune_backups", options={"apply": True}, clock=clock)
    assert result.outcome == "success", result.error
    assert {o.key for o in store.list_objects(layout.backup_prefix(bad))} == before
    kept = [e for e in logs if e["event"] == "prune.keep" and e.get("backup_id") == bad]
    assert kept, [e for e in logs if e.get("backup_id") == bad]
    assert "daily-15" not in {s.id for s in catalog.list_backups(store)}  # the readable neighbour went


# --- notifications: aborted runs say so, skipped runs say nothing, a dead receiver holds nothing up --

def run_check_tables(config, monkeypatch, step, **kwargs):
    monkeypatch.setitem(jobs.STEPS, "check_tables", step)
    return jobs.run_job(config, "check_tables", **kwargs)


def no_lock(_ctx):
    return contextlib.nullcontext()


def test_an_aborted_run_notifies_and_a_skipped_one_does_not(monkeypatch):
    """A run aborted by SIGTERM posts `aborted`; a scheduled run skipped on a busy lock posts nothing."""
    def aborted(_ctx):
        raise JobAbortedError("the run was cancelled", detail="SIGTERM")

    @contextlib.contextmanager
    def busy(_ctx):
        raise LockBusyError("the service lock is held by another run", detail="held by server process 1")
        yield  # pragma: no cover

    with Receiver() as receiver:
        config = load_config({"VCAP_SERVICES": vcap(), "FAC_BACKUP_WEBHOOK_URL": receiver.url})
        result = run_check_tables(config, monkeypatch, aborted, lock_guard=no_lock)
        assert result.outcome == "aborted"
        skipped = run_check_tables(config, monkeypatch, lambda _ctx: {"counts": {}}, lock_guard=busy,
                                   trigger="scheduler")
        assert skipped.outcome == "skipped"
        bodies = receiver.received()
    assert [(b["job"], b["outcome"]) for b in bodies] == [("check_tables", "aborted")]
    assert "aborted" in bodies[0]["text"]


class SilentReceiver:
    """A webhook receiver that accepts the connection and never answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                outer.got.set()
                outer.release.wait(60)

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_webhook_that_never_answers_does_not_hold_up_the_job(monkeypatch):
    """A receiver that never answers: the run still ends within seconds (3 s timeout), failure logged."""
    receiver = SilentReceiver()
    try:
        config = load_config({"VCAP_SERVICES": vcap(), "FAC_BACKUP_WEBHOOK_URL": receiver.url})
        started = time.monotonic()
        with capture_logs() as logs:
            result = run_check_tables(config, monkeypatch, lambda _ctx: (_ for _ in ()).throw(failure()),
                                      lock_guard=no_lock)
        took = time.monotonic() - started
    finally:
        receiver.close()
    assert receiver.got.is_set(), "precondition: the webhook was called"
    assert result.outcome == "failure" and took < 15, took
    assert [e for e in logs if e["event"] == "notify.failed"]


# --- the drill takes no service lock ------------------------------------------------------------

def test_verify_backup_runs_while_another_run_holds_the_lock(sample_db):
    """verify_backup never touches fac-db: it succeeds at once while another session holds the lock."""
    box = sample_db
    assert box.run("db_to_s3").outcome == "success"
    box.config(FAC_BACKUP_LOCK_WAIT_SECONDS="0")
    with box.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        started = time.monotonic()
        result = box.run("verify_backup")
        assert result.outcome == "success", result.error
        assert time.monotonic() - started < 60
        # The same settings make a job that does take the lock fail at once: the lock was held.
        assert box.run("db_to_s3").exit_code == 4


# --- stale multipart uploads are swept at the start of a backup ---------------------------------

def test_a_backup_sweeps_stale_multipart_uploads_and_only_those(sample_db, monkeypatch):
    """Uploads left open under backups/ by a killed run are aborted by the next backup once older than
    the sweep's age; younger ones (a run in progress) and uploads outside backups/ are left alone."""
    box = sample_db
    client = box.s3.client()
    stale = client.create_multipart_upload(Bucket=box.backups, Key="backups/scheduled-06-04-10/public-x.dump")
    outside = client.create_multipart_upload(Bucket=box.backups, Key="singleauditreport/upload.pdf")

    def open_keys():
        return sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=box.backups).get("Uploads", []))

    # moto dates every upload 2010-11-10: an age of 30 years makes it young, the default (6 h) stale.
    monkeypatch.setattr(backup.sweep_stale_uploads, "__defaults__", (timedelta(days=366 * 30),))
    assert box.run("db_to_s3").outcome == "success"
    assert open_keys() == ["backups/scheduled-06-04-10/public-x.dump", "singleauditreport/upload.pdf"]
    monkeypatch.undo()
    with capture_logs() as logs:
        assert box.run("db_to_s3").outcome == "success"
    assert open_keys() == ["singleauditreport/upload.pdf"]
    assert [e["count"] for e in logs if e["event"] == "backup.swept_uploads"] == [1]
    client.abort_multipart_upload(Bucket=box.backups, Key=outside["Key"], UploadId=outside["UploadId"])
    assert stale["UploadId"]


# --- the live daemon: a job already running is refused; pause and resume move the gauges ---------

def test_the_daemon_refuses_a_job_already_running_and_pause_resume_move_the_gauges(sample_db, start_daemon):
    """A second trigger of a running job is refused (nothing more starts); pause zeroes the next-run
    gauges and sets the paused gauge; resume restores both."""
    pg_bin = test_daemon.write_pg_bin(sample_db.tmp / "pgbin", "*lookup_00*", 60)
    daemon = start_daemon(FAC_BACKUP_PG_BIN=str(pg_bin))
    daemon.wait_healthy()
    next_daily = daemon.value("fac_backup_job_next_run_timestamp_seconds", job="daily_backup")
    assert next_daily and next_daily > time.time()
    first = daemon.ctl("trigger", job="db_to_s3", args=[], options={})
    assert first["ok"] and first["accepted"]
    wait_for(lambda: daemon.value("fac_backup_job_running", job="db_to_s3") == 1, 30, "db_to_s3 running")
    second = daemon.ctl("trigger", job="db_to_s3", args=[], options={})
    assert second["ok"] is False and "already running" in second["error"] and first["run_id"] in second["error"]
    assert [r["run_id"] for r in daemon.ctl("status")["running"]] == [first["run_id"]]

    assert daemon.ctl("pause")["paused"] is True
    assert daemon.value("fac_backup_schedule_paused") == 1
    assert daemon.value("fac_backup_job_next_run_timestamp_seconds", job="daily_backup") == 0
    assert daemon.ctl("status")["paused"] is True
    assert daemon.ctl("resume")["paused"] is False
    assert daemon.value("fac_backup_schedule_paused") == 0
    assert daemon.value("fac_backup_job_next_run_timestamp_seconds", job="daily_backup") == next_daily


# --- prune follows a successful scheduled daily backup, and only a successful one ----------------

@pytest.mark.parametrize("daily", ["succeeds", "fails"])
def test_a_scheduled_daily_backup_is_followed_by_prune_only_when_it_succeeds(sample_db, tmp_path, daily):
    """The daemon's scheduled fire of daily_backup: success -> prune_backups --apply runs; failure -> no prune."""
    from prometheus_client import CollectorRegistry

    from service.daemon import run_scheduled
    from service.daemon_runs import Runner
    from service.metrics import Metrics

    if daily == "fails":
        bin_dir = make_pg_bin(tmp_path / "bin", pg_dump=dies_halfway("public", "lookup_00", 10))
        sample_db.extra_env["FAC_BACKUP_PG_BIN"] = str(bin_dir)
    config = sample_db.config()
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    run_scheduled(Runner(config, metrics), "daily_backup", config.settings)

    def runs(job: str, outcome: str) -> float:
        return metrics.registry.get_sample_value("fac_backup_job_runs_total", {"job": job, "outcome": outcome})

    outcomes = ("success", "failure", "skipped", "aborted")
    if daily == "succeeds":
        assert runs("daily_backup", "success") == 1
        assert [runs("prune_backups", o) for o in outcomes] == [1, 0, 0, 0]
        assert metrics.registry.get_sample_value("fac_backup_prune_backups", {"decision": "keep"}) >= 1
    else:
        assert runs("daily_backup", "failure") == 1
        assert [runs("prune_backups", o) for o in outcomes] == [0, 0, 0, 0]
