"""The job registry and the run_safe boundary."""

from __future__ import annotations

import contextlib
import json

import pytest
from structlog.testing import capture_logs

from service import jobs
from service.config import load_config
from service.errors import CheckError
from service.storage import MemoryObjectStore
from tests.unit.test_config import vcap

REFERENCE_STEPS = {
    "initial_backup": ("db_to_s3", "db_to_db", "media_sync"),
    "deploy_backup": ("db_to_s3", "db_to_db", "media_sync"),
    "scheduled_backup": ("row_count", "db_to_s3", "media_sync"),
    "daily_backup": ("row_count", "db_to_s3", "media_sync"),
    "on_demand_backup": ("row_count", "db_to_s3", "db_to_db", "media_sync"),
    "media_sync": ("media_sync",),
    "check_tables": ("check_tables",),
}


@pytest.fixture
def config():
    return load_config({"VCAP_SERVICES": vcap()})


def run(config, name, args=()):
    """Run without the service lock: these tests have no database to hold it on (and the run
    journal goes to a bucket in memory: the configuration names AWS's endpoints)."""
    return jobs.run_job(config, name, args, lock_guard=lambda ctx: contextlib.nullcontext(),
                        store_factory=lambda binding: MemoryObjectStore("backups"))


def test_registry_has_every_job_with_the_reference_steps():
    """Each job of the reference runs exactly its steps, in order; every step is a job too."""
    for name, steps in REFERENCE_STEPS.items():
        assert jobs.JOBS[name].steps == steps
    for step in ("db_to_s3", "db_to_db", "row_count", "media_sync", "check_tables"):
        assert step in jobs.JOBS and step in jobs.STEPS


def test_backup_kinds_name_exactly_the_jobs_that_make_backups():
    """service.kinds lists every job with a db_to_s3 step (and no other), each with an id format."""
    from service import kinds, layout

    assert kinds.BACKUP_JOBS == {name for name, spec in jobs.JOBS.items() if "db_to_s3" in spec.steps}
    assert set(kinds.BACKUP_KINDS.values()) | {kinds.PRE_RESTORE} <= set(layout.ID_FORMATS)
    assert kinds.backup_kind("scheduled_backup") == "scheduled" and kinds.backup_kind("daily_backup") == "daily"


def test_daily_backup_never_touches_the_snapshot():
    """daily_backup holds no db_to_db step (the snapshot keeps the pre-deploy copy)."""
    assert "db_to_db" not in jobs.JOBS["daily_backup"].steps


def test_a_job_stops_at_its_first_failed_step(config, monkeypatch):
    """Steps after a failure do not run; the summary names the failed step."""
    ran = []
    monkeypatch.setitem(jobs.STEPS, "row_count", lambda ctx: ran.append("row_count") or {"rows": 1})
    monkeypatch.setitem(jobs.STEPS, "db_to_s3", lambda ctx: (_ for _ in ()).throw(CheckError("dump failed")))
    monkeypatch.setitem(jobs.STEPS, "media_sync", lambda ctx: ran.append("media_sync") or {})
    with capture_logs() as logs:
        result = run(config, "scheduled_backup")
    assert ran == ["row_count"]
    assert result.outcome == "failure" and result.exit_code == 1
    summary = [e for e in logs if e["event"] == "job.failed"]
    assert len(summary) == 1 and summary[0]["failed_step"] == "db_to_s3"
    assert [s["step"] for s in summary[0]["steps"]] == ["row_count", "db_to_s3"]


def test_an_unexpected_exception_is_contained(config, monkeypatch):
    """A bug inside a step becomes a crashed failure (exit 70) with a traceback, never an exception."""
    monkeypatch.setitem(jobs.STEPS, "media_sync", lambda ctx: {}["missing"])
    with capture_logs() as logs:
        result = run(config, "media_sync")
    assert result.outcome == "failure" and result.crashed and result.exit_code == 70
    assert any(e["event"] == "job.crashed" for e in logs)


def test_success_logs_one_summary_with_figures(config, monkeypatch):
    """One job.finished event carries outcome, duration and per-step figures."""
    monkeypatch.setitem(jobs.STEPS, "media_sync", lambda ctx: {"copied": 4, "keys": ["a"]})
    with capture_logs() as logs:
        result = run(config, "media_sync")
    assert result.outcome == "success" and result.exit_code == 0
    (summary,) = [e for e in logs if e["event"] == "job.finished"]
    assert summary["outcome"] == "success" and "duration_seconds" in summary
    assert summary["steps"] == [{"step": "media_sync", "outcome": "success", "seconds": summary["steps"][0]["seconds"],
                                 "copied": 4}]
    json.dumps(summary)


def test_unknown_job_is_a_usage_error(config):
    """An unknown job name fails with exit 2 and lists the known jobs."""
    result = run(config, "nightly_backup")
    assert result.exit_code == 2 and "scheduled_backup" in result.error.hint


def test_wrong_number_of_arguments_is_refused(config):
    """A job given arguments it does not take is refused before anything runs."""
    result = run(config, "db_to_s3", ("extra",))
    assert result.exit_code == 2 and "usage" in result.error.hint
