"""How the lifecycle jobs are scheduled and what they export as metrics."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry

from service import jobs
from service.config import load_settings
from service.metrics import Metrics
from service.scheduler import follow_up, parse_schedules


def test_the_restore_drill_runs_weekly_by_default_and_can_be_switched_off():
    """verify_backup is scheduled on Sundays at 03:00 in the service's zone; 'off' removes it."""
    settings = load_settings({}, [])
    trigger = parse_schedules(settings)["verify_backup"]
    start = datetime(2026, 11, 23, 12, 0, tzinfo=settings.timezone)  # a Monday
    fire = trigger.get_next_fire_time(None, start)
    assert (fire.weekday(), fire.hour, fire.minute, fire.day) == (6, 3, 0, 29)
    assert "verify_backup" not in parse_schedules(load_settings({"FAC_BACKUP_VERIFY_CRON": "off"}, []))


def test_prune_with_apply_follows_only_a_successful_daily_backup():
    """A successful daily_backup is followed by prune_backups --apply; a failed one, or any other job, is not."""
    settings = load_settings({}, [])
    assert follow_up("daily_backup", "success", settings) == ("prune_backups", {"apply": True})
    for outcome in ("failure", "aborted", "skipped", ""):
        assert follow_up("daily_backup", outcome, settings) is None
    assert follow_up("scheduled_backup", "success", settings) is None
    off = load_settings({"FAC_BACKUP_PRUNE_AFTER_DAILY": "false"}, [])
    assert follow_up("daily_backup", "success", off) is None


def test_prune_and_drill_figures_become_metrics():
    """An applied prune sets kept/deleted counts and bytes; a dry run leaves them; a drill sets the
    verified backup's start time."""
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    value = metrics.registry.get_sample_value
    dry = {"applied": False, "kept": 9, "kept_bytes": 900, "deleted": 4, "deleted_bytes": 400}
    metrics.observe_steps([jobs.StepResult("prune_backups", "success", 1.0, dry)])
    assert value("fac_backup_prune_backups", {"decision": "delete"}) == 0
    metrics.observe_steps([jobs.StepResult("prune_backups", "success", 1.0, {**dry, "applied": True})])
    assert value("fac_backup_prune_backups", {"decision": "keep"}) == 9
    assert value("fac_backup_prune_backups", {"decision": "delete"}) == 4
    assert value("fac_backup_prune_bytes", {"decision": "delete"}) == 400
    assert value("fac_backup_last_verified_backup_timestamp_seconds") == 0
    started = "2026-11-22T03:00:00-08:00"
    metrics.observe_steps([jobs.StepResult("verify_backup", "success", 1.0, {"backup_started_at": started})])
    assert value("fac_backup_last_verified_backup_timestamp_seconds") == datetime.fromisoformat(started).timestamp()
