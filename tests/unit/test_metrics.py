"""The metrics: pre-initialised label sets, gauges rebuilt from manifests, skips by reason."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry

from service import jobs
from service.catalog import BackupSummary, Manifest, TableEntry
from service.metrics import OUTCOMES, Metrics, parse_timestamp


def make_metrics() -> Metrics:
    return Metrics(("scheduled_backup", "daily_backup", "check_tables", "media_sync"),
                   registry=CollectorRegistry())


def value(metrics: Metrics, name: str, **labels):
    return metrics.registry.get_sample_value(name, labels)


def backup(backup_id: str, job: str, finished: str, tables: int = 2) -> BackupSummary:
    entries = tuple(TableEntry("public", f"t{i}", f"backups/{backup_id}/public-t{i}.dump", 100, "x", 5)
                    for i in range(tables))
    m = Manifest(backup_id, job, finished, finished, "15.4", "15.4", "fac", entries,
                 {"key": "k", "bytes": 50, "sha256": "y"})
    return BackupSummary(backup_id, True, job, finished, finished, tables, m.total_bytes, m)


def test_every_job_and_outcome_starts_at_zero():
    """Counters exist at 0 for every job x outcome before any run; nothing is running."""
    metrics = make_metrics()
    for outcome in OUTCOMES:
        assert value(metrics, "fac_backup_job_runs_total", job="daily_backup", outcome=outcome) == 0
    assert value(metrics, "fac_backup_job_running", job="daily_backup") == 0
    assert value(metrics, "fac_backup_job_last_success_timestamp_seconds", job="daily_backup") == 0
    assert value(metrics, "fac_backup_job_skipped_total", job="daily_backup", reason="lock_busy") == 0


def test_last_success_comes_from_the_newest_manifest_of_each_job_and_never_goes_back():
    """The newest complete manifest per job sets the gauges; an older one read later does not."""
    metrics = make_metrics()
    metrics.observe_backups([backup("scheduled-01-02-08", "scheduled_backup", "2026-01-02T08:05:00-08:00", 3),
                             backup("scheduled-01-02-10", "scheduled_backup", "2026-01-02T10:05:00-08:00", 4),
                             BackupSummary("scheduled-01-02-12", False)], 1.0)
    newest = parse_timestamp("2026-01-02T10:05:00-08:00")
    assert value(metrics, "fac_backup_job_last_success_timestamp_seconds", job="scheduled_backup") == newest
    assert value(metrics, "fac_backup_last_backup_tables", job="scheduled_backup") == 4
    assert value(metrics, "fac_backup_last_backup_size_bytes", job="scheduled_backup") == 450
    metrics.job_finished("scheduled_backup", "success", 12.0, newest + 3600)
    metrics.observe_backups([backup("scheduled-01-02-10", "scheduled_backup", "2026-01-02T10:05:00-08:00")], 2.0)
    assert value(metrics, "fac_backup_job_last_success_timestamp_seconds",
                 job="scheduled_backup") == newest + 3600


def test_skips_are_counted_by_reason_and_once_as_runs():
    """A skip is counted under its reason, and as a skipped run unless run_job counted it."""
    metrics = make_metrics()
    metrics.run_skipped("scheduled_backup", "already_running", counted=False)
    metrics.job_finished("scheduled_backup", "skipped", 0.1, 0.0)
    metrics.run_skipped("scheduled_backup", "lock_busy", counted=True)
    assert value(metrics, "fac_backup_job_runs_total", job="scheduled_backup", outcome="skipped") == 2
    assert value(metrics, "fac_backup_job_skipped_total", job="scheduled_backup",
                 reason="already_running") == 1
    assert value(metrics, "fac_backup_job_skipped_total", job="scheduled_backup", reason="lock_busy") == 1


def test_check_tables_figures_even_from_a_failed_run():
    """Rows per table and missing tables come from check_tables, also when it failed."""
    metrics = make_metrics()
    metrics.observe_steps([jobs.StepResult("check_tables", "success", 1.0,
                                           {"counts": {"public.a": 3, "public.gone": 1}, "missing": []})])
    metrics.observe_steps([jobs.StepResult("check_tables", "failure", 1.0,
                                           {"counts": {"public.a": 7}, "missing": ["public.b"]})])
    assert value(metrics, "fac_backup_table_rows", table="public.a") == 7
    assert value(metrics, "fac_backup_table_rows", table="public.gone") is None
    assert value(metrics, "fac_backup_check_missing_tables") == 1


def test_media_sync_copies_and_next_runs():
    """Objects copied by the last sync are shown; a paused schedule exports next run 0."""
    metrics = make_metrics()
    metrics.observe_steps([jobs.StepResult("media_sync", "success", 1.0, {"copied": 12})])
    assert value(metrics, "fac_backup_media_sync_objects_copied") == 12
    metrics.set_next_runs({"daily_backup": None})
    assert value(metrics, "fac_backup_job_next_run_timestamp_seconds", job="daily_backup") == 0


def test_database_versions_follow_each_binding_and_drop_the_old_series():
    """One info series per binding; an upgraded server replaces its series; "none" marks no client."""
    metrics = make_metrics()
    metrics.set_database_versions({"fac-db": ("15.20", "15.20"), "fac-snapshot-db": ("15.20", "15.20")})
    metrics.set_database_versions({"fac-snapshot-db": ("18.3", "none")})
    info = "fac_backup_database_version_info"
    assert value(metrics, info, binding="fac-db", server_version="15.20", client_version="15.20") == 1
    assert value(metrics, info, binding="fac-snapshot-db", server_version="18.3", client_version="none") == 1
    assert value(metrics, info, binding="fac-snapshot-db", server_version="15.20", client_version="15.20") is None


def test_drills_recorded_in_the_bucket_set_the_verified_gauge_which_never_goes_back():
    """After a restart the newest backup with a drill's record (verified.json) sets the gauge; a drill
    of an older backup, in the bucket or in this process, does not move it back."""
    metrics = make_metrics()
    older = backup("daily-01-01", "daily_backup", "2026-01-01T03:00:00-08:00")
    newer = backup("daily-01-02", "daily_backup", "2026-01-02T03:00:00-08:00")
    unproved = backup("daily-01-03", "daily_backup", "2026-01-03T03:00:00-08:00")
    metrics.observe_backups([dataclasses.replace(older, verified_at="2026-01-05T00:00:00+00:00"),
                             dataclasses.replace(newer, verified_at="2026-01-06T00:00:00+00:00"), unproved], 1.0)
    gauge = "fac_backup_last_verified_backup_timestamp_seconds"
    assert value(metrics, gauge) == parse_timestamp("2026-01-02T03:00:00-08:00")
    metrics.observe_steps([jobs.StepResult("verify_backup", "success", 1.0,
                                           {"backup_started_at": "2026-01-01T03:00:00-08:00"})])
    assert value(metrics, gauge) == parse_timestamp("2026-01-02T03:00:00-08:00")
    metrics.observe_steps([jobs.StepResult("verify_backup", "success", 1.0,
                                           {"backup_started_at": "2026-01-03T03:00:00-08:00"})])
    assert value(metrics, gauge) == parse_timestamp("2026-01-03T03:00:00-08:00")
