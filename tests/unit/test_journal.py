"""The run journal: one record per run however it ends, written without ever failing or holding up a job."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from service import catalog, jobs, journal, layout
from service.config import load_config
from service.daemon_runs import Runner
from service.errors import CheckError, StorageError
from service.metrics import Metrics
from service.storage import MemoryObjectStore
from tests.unit.test_config import vcap


@pytest.fixture
def store():
    return MemoryObjectStore("backups")


@pytest.fixture
def config():
    return load_config({"VCAP_SERVICES": vcap()})


def run(config, store, name, args=(), **kwargs):
    return jobs.run_job(config, name, args, lock_guard=lambda ctx: contextlib.nullcontext(),
                        store_factory=lambda binding: store, **kwargs)


def records(store) -> list[dict]:
    now = datetime.now(UTC)
    return journal.read_records(store, now - timedelta(hours=1), now + timedelta(hours=1))


def test_a_failed_run_leaves_its_steps_error_and_hint(config, store, monkeypatch):
    """A run that failed at its second step: job, trigger, times, each step's figures, the error and its hint."""
    monkeypatch.setitem(jobs.STEPS, "row_count", lambda ctx: {"tables": 3, "rows": 12, "counts": {"a": 1}})
    monkeypatch.setitem(jobs.STEPS, "db_to_s3", lambda ctx: (_ for _ in ()).throw(
        CheckError("dump failed", detail="stderr tail", hint="fix it")))
    result = run(config, store, "scheduled_backup", trigger="scheduler")
    (record,) = records(store)
    assert record["run_id"] == result.run_id and record["outcome"] == "failure" and record["kind"] == "run"
    assert record["trigger"] == "scheduler" and record["job"] == "scheduled_backup"
    assert [(s["step"], s["outcome"]) for s in record["steps"]] == [("row_count", "success"), ("db_to_s3", "failure")]
    assert record["steps"][0]["figures"] == {"tables": 3, "rows": 12, "counts": {"a": 1}}
    assert record["error"] == {"message": "dump failed", "detail": "stderr tail", "hint": "fix it", "exit_code": 1}
    assert datetime.fromisoformat(record["started_at"]) <= datetime.fromisoformat(record["finished_at"])


def test_a_refused_request_is_journaled_as_rejected(config, store):
    """A restore without its confirmation never starts, and the journal says it was refused and why."""
    result = run(config, store, "db_restore")
    assert result.exit_code == 3
    (record,) = records(store)
    assert record["kind"] == "rejected" and record["outcome"] == "rejected"
    assert "confirmation" in record["error"]["message"] and record["error"]["hint"]


def test_bad_arguments_are_journaled_too(config, store):
    """An s3_restore without its BACKUP_ID is refused with a usage error and journaled."""
    run(config, store, "s3_restore")
    (record,) = records(store)
    assert record["outcome"] == "rejected" and "argument" in record["error"]["message"]


def test_an_unknown_job_is_refused_without_a_record(config, store):
    """A name no job has is a typing error, not a run: refused (exit 2), and nothing is written, so a
    hostile name never becomes part of a key in the bucket."""
    result = run(config, store, "../../catalog/evil")
    assert result.exit_code == 2 and "unknown job" in result.error.message
    assert list(store.list_objects("")) == []


def test_large_figures_are_recorded_by_their_length():
    """A prune's list of thousands of decisions would make a large record: its count is kept instead."""
    figures = {"kept": 3, "decisions": [{"id": f"scheduled-{i}"} for i in range(1000)], "note": "x"}
    assert journal.small_figures(figures) == {"kept": 3, "decisions_count": 1000, "note": "x"}


def test_a_hung_store_delays_the_run_by_the_bound_only(config, monkeypatch):
    """A store that never answers: the run ends after the write's bound, the failure is logged and counted."""
    release = threading.Event()

    class Hanging(MemoryObjectStore):
        def put_bytes(self, key, data, **kwargs):
            release.wait(30)

    monkeypatch.setattr(journal, "WRITE_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setitem(jobs.STEPS, "media_sync", lambda ctx: {})
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    started = time.monotonic()
    try:
        with capture_logs() as logs:
            result = run(config, Hanging("backups"), "media_sync", metrics=metrics)
    finally:
        release.set()
    assert result.outcome == "success"
    assert time.monotonic() - started < 10
    assert any(e["event"] == "journal.write_failed" and "no answer" in e["reason"] for e in logs)
    assert metrics.registry.get_sample_value("fac_backup_journal_writes_total", {"outcome": "failed"}) == 1


def test_a_failing_store_never_changes_how_a_run_ended(config, monkeypatch):
    """S3 refusing the write: the run still succeeds; written/failed are counted."""
    class Refusing(MemoryObjectStore):
        def put_bytes(self, key, data, **kwargs):
            raise StorageError("S3 PUT failed")

    monkeypatch.setitem(jobs.STEPS, "media_sync", lambda ctx: {})
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    with capture_logs() as logs:
        result = run(config, Refusing("backups"), "media_sync", metrics=metrics)
    assert result.outcome == "success"
    assert [e["reason"] for e in logs if e["event"] == "journal.write_failed"] == ["S3 PUT failed"]
    assert metrics.registry.get_sample_value("fac_backup_journal_writes_total", {"outcome": "written"}) == 0


def test_a_fire_that_never_became_a_run_is_journaled(config, store):
    """The scheduler's `missed` and `already_running` show in the journal with their reason."""
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    runner = Runner(config, metrics, store_factory=lambda binding: store)
    runner.record_skip("scheduled_backup", "missed")
    deadline = time.monotonic() + 30
    while not records(store) and time.monotonic() < deadline:
        time.sleep(0.02)
    (record,) = records(store)
    assert (record["kind"], record["outcome"], record["reason"]) == ("not_started", "skipped", "missed")


def test_keys_sort_by_start_and_a_month_is_one_prefix(store):
    """Records of two months: each month's listing holds its own, oldest first; a period reads both."""
    for when, run_id in ((datetime(2026, 10, 31, 23, 59, tzinfo=UTC), "b"), (datetime(2026, 10, 1, tzinfo=UTC), "a"),
                         (datetime(2026, 11, 1, tzinfo=UTC), "c")):
        record = journal.build_skip_record("daily_backup", "missed", when=when, run_id=run_id)
        assert journal.write_record(lambda: store, record)
    october = [o.key for o in store.list_objects(layout.journal_month_prefix(datetime(2026, 10, 5, tzinfo=UTC)))]
    assert [k.rsplit("_", 1)[-1] for k in october] == ["a.json", "b.json"]
    found = journal.read_records(store, datetime(2026, 10, 15, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC))
    assert [r["run_id"] for r in found] == ["b", "c"]


def test_listings_of_backups_skip_the_journal_and_the_media_versions(store):
    """catalog's listing jumps over both reserved prefixes; list, prune and finder never see them."""
    store.put_bytes("backups/daily-06-04/schema.dump", b"s")
    store.put_bytes("backups/journal/runs/2026-06/20260604T000000.000000Z_x_1.json", b"{}")
    store.put_bytes("backups/media-versions/a.pdf/20260604T000000.000000Z_20260603T000000Z", b"v")
    store.put_bytes("backups/scheduled-06-04-10/manifest.json", b"{}")
    assert [o.key for o in catalog.list_backup_objects(store)] == [
        "backups/daily-06-04/schema.dump", "backups/scheduled-06-04-10/manifest.json"]
    assert {b.id for b in catalog.list_backups(store)} == {"daily-06-04", "scheduled-06-04-10"}



def test_the_listing_jumps_over_a_long_journal_instead_of_paging_through_it():
    """A thousand journal records cost the backups' listing one object read, not a thousand."""
    seen: list[str] = []

    class Counting(MemoryObjectStore):
        def list_objects(self, prefix="", *, start_after=""):
            for obj in super().list_objects(prefix, start_after=start_after):
                seen.append(obj.key)
                yield obj

    store = Counting("backups")
    for n in range(1000):
        store.put_bytes(f"backups/journal/runs/2026-06/20260604T{n:06d}.000000Z_x_{n}.json", b"{}")
    store.put_bytes("backups/scheduled-06-04-10/manifest.json", b"{}")
    assert [o.key for o in catalog.list_backup_objects(store)] == ["backups/scheduled-06-04-10/manifest.json"]
    assert sum(k.startswith(layout.JOURNAL_PREFIX) for k in seen) == 1


def test_the_retention_deletes_records_older_than_its_keep_period(store):
    """Records and stored reports past FAC_BACKUP_JOURNAL_KEEP_DAYS go; younger ones stay; a dry run counts."""
    now = datetime(2026, 12, 1, tzinfo=UTC)
    for days, run_id in ((400, "old"), (10, "young")):
        journal.write_record(lambda: store, journal.build_skip_record("x", "missed", when=now - timedelta(days=days),
                                                                      run_id=run_id))
    store.put_bytes(layout.report_key(now, now, now - timedelta(days=500)), b"<html>")
    assert journal.prune_journal(store, now, 365, apply=False)["journal_deleted"] == 2
    assert len(list(store.list_objects(layout.JOURNAL_PREFIX))) == 3
    journal.prune_journal(store, now, 365, apply=True)
    left = [json.loads(store.get_bytes(o.key))["run_id"] for o in store.list_objects(layout.JOURNAL_PREFIX)]
    assert left == ["young"]


def test_the_monthly_report_job_covers_last_month_and_stores_the_file(config, store):
    """contingency_report on 2026-11-03: October, local midnights; the HTML lands beside the journal."""
    from service.tasks.report import choose_period, previous_month

    clock = datetime(2026, 11, 3, 15, tzinfo=UTC)
    result = run(config, store, "contingency_report", clock=lambda: clock)
    assert result.outcome == "success", result.error
    figures = result.steps[0].figures
    assert (figures["since"], figures["until"]) == ("2026-10-01T00:00:00-07:00", "2026-11-01T00:00:00-07:00")
    assert figures["report_key"].startswith("backups/journal/reports/20261001-20261031_")
    assert store.get_bytes(figures["report_key"]).startswith(b"<!DOCTYPE html>")
    tz = config.settings.timezone
    assert previous_month(datetime(2026, 1, 5, tzinfo=tz), tz)[0] == datetime(2025, 12, 1, tzinfo=tz)
    since, until = choose_period("2026-10-01", "2026-10-31", clock, tz)
    assert (since, until) == (datetime(2026, 10, 1, tzinfo=tz), datetime(2026, 11, 1, tzinfo=tz))
