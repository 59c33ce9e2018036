"""The schedule: cron expressions mean what they mean to cron, across DST, with safe defaults."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from service.config import load_settings
from service.errors import ConfigError
from service.scheduler import (
    JOB_DEFAULTS,
    JobScheduler,
    build_cron_trigger,
    needs_catch_up,
    parse_schedules,
)

PACIFIC = ZoneInfo("America/Los_Angeles")


def fire_times(expr: str, start: datetime, count: int, tz=PACIFIC) -> list[datetime]:
    trigger = build_cron_trigger(expr, tz)
    times, previous, now = [], None, start
    for _ in range(count):
        nxt = trigger.get_next_fire_time(previous, now)
        times.append(nxt)
        previous, now = nxt, nxt + timedelta(seconds=1)
    return times


def test_weekday_range_fires_monday_to_friday():
    """'0 9 * * 1-5' fires Monday to Friday at 09:00, as in cron (not Tuesday to Saturday)."""
    sunday = datetime(2026, 3, 1, 0, 0, tzinfo=PACIFIC)
    times = fire_times("0 9 * * 1-5", sunday, 10)
    assert [t.strftime("%a") for t in times] == ["Mon", "Tue", "Wed", "Thu", "Fri"] * 2
    assert {t.hour for t in times} == {9}


@pytest.mark.parametrize("field", ["0", "7", "sun", "SUN"])
def test_zero_and_seven_are_sunday(field):
    """Day 0 and day 7 both mean Sunday."""
    times = fire_times(f"30 4 * * {field}", datetime(2026, 5, 4, tzinfo=PACIFIC), 3)
    assert {t.strftime("%a") for t in times} == {"Sun"}


@pytest.mark.parametrize("field, days", [
    ("1-5", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
    ("mon-fri", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
    ("5-7", ["Fri", "Sat", "Sun"]),
    ("*/2", ["Tue", "Thu", "Sat", "Sun"]),
    ("1/2", ["Mon", "Wed", "Fri", "Sun"]),  # cron reads "1/2" as "1-7/2"
    ("0,6", ["Sat", "Sun"]),
])
def test_weekday_fields_mean_what_they_mean_to_cron(field, days):
    """Ranges, lists, steps and names select cron's days (0 = Sunday), not APScheduler's."""
    times = fire_times(f"0 9 * * {field}", datetime(2026, 3, 1, 0, 0, tzinfo=PACIFIC), 14)
    week = {t.strftime("%a") for t in times}
    assert week == set(days)


@pytest.mark.parametrize("expr", ["0 9 * *", "0 9 * * 8", "0 9 * * 5-1", "0 25 * * *",
                                  "0 9 1 * 1", "0 9 * * 1/0", "0 9 L * *", "0 9 * * 1#2",
                                  "0 9 * * monday", "0 9 * foo *", "0 0 9 * * *"])
def test_invalid_cron_is_a_config_error(expr):
    """A malformed or ambiguous cron expression is refused with ConfigError, naming it."""
    with pytest.raises(ConfigError) as info:
        build_cron_trigger(expr, PACIFIC)
    assert expr in info.value.message


def test_default_schedule_every_two_hours_in_pacific_working_hours_across_spring_forward():
    """The default fires at even hours 06-18 Pacific, also on the day clocks spring forward."""
    settings = load_settings({}, [])
    start = datetime(2026, 3, 7, 17, 0, tzinfo=PACIFIC)  # DST starts 2026-03-08 02:00
    times = fire_times(settings.scheduled_cron, start, 9)
    local = [(t.day, t.hour) for t in times]
    assert local == [(7, 18), (8, 6), (8, 8), (8, 10), (8, 12), (8, 14), (8, 16), (8, 18), (9, 6)]
    assert times[0].utcoffset() == timedelta(hours=-8)
    assert times[1].utcoffset() == timedelta(hours=-7)
    assert times[1].timestamp() - times[0].timestamp() == 11 * 3600  # 18:00 PST -> 06:00 PDT


def test_default_schedule_across_fall_back_fires_once_per_slot():
    """On the day clocks fall back each slot fires once, at the same local hours."""
    settings = load_settings({}, [])
    start = datetime(2026, 10, 31, 19, 0, tzinfo=PACIFIC)  # DST ends 2026-11-01 02:00
    times = fire_times(settings.scheduled_cron, start, 8)
    assert [t.hour for t in times] == [6, 8, 10, 12, 14, 16, 18, 6]
    assert len(set(times)) == len(times)
    assert times[0].utcoffset() == timedelta(hours=-8)
    eighteen = datetime(2026, 10, 31, 18, 0, tzinfo=PACIFIC)
    assert times[0].timestamp() - eighteen.timestamp() == 13 * 3600  # 18:00 PDT -> 06:00 PST


def test_daily_default_is_once_a_day_outside_working_hours():
    """daily_backup fires once a day, after 18:00 Pacific."""
    settings = load_settings({}, [])
    times = fire_times(settings.daily_cron, datetime(2026, 6, 1, tzinfo=PACIFIC), 3)
    assert [t.day for t in times] == [1, 2, 3]
    assert all(t.hour >= 19 for t in times)


def test_schedules_can_be_switched_off_and_errors_are_listed_together():
    """'off' disables a schedule; every bad expression is named in one ConfigError."""
    settings = load_settings({"FAC_BACKUP_CHECK_CRON": "off", "FAC_BACKUP_VERIFY_CRON": "off"}, [])
    assert set(parse_schedules(settings)) == {"scheduled_backup", "daily_backup", "contingency_report"}
    settings = load_settings({"FAC_BACKUP_CHECK_CRON": "off", "FAC_BACKUP_VERIFY_CRON": "off",
                              "FAC_BACKUP_REPORT_CRON": "off"}, [])
    assert set(parse_schedules(settings)) == {"scheduled_backup", "daily_backup"}
    bad = load_settings({"FAC_BACKUP_SCHEDULED_CRON": "nope", "FAC_BACKUP_DAILY_CRON": "0 99 * * *"}, [])
    with pytest.raises(ConfigError) as info:
        parse_schedules(bad)
    assert "FAC_BACKUP_SCHEDULED_CRON" in info.value.detail
    assert "FAC_BACKUP_DAILY_CRON" in info.value.detail


def test_scheduler_job_defaults_are_explicit():
    """No two runs of one job at once, missed runs coalesced, an hour of misfire grace."""
    calls = []
    sched = JobScheduler(PACIFIC, calls.append)
    sched.add_cron("scheduled_backup", build_cron_trigger("0 6-18/2 * * *", PACIFIC))
    sched.start()  # APScheduler applies job defaults when the scheduler starts
    try:
        job = sched.scheduler.get_job("scheduled_backup")
        assert JOB_DEFAULTS == {"max_instances": 1, "coalesce": True, "misfire_grace_time": 3600}
        assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 3600)
        assert str(sched.scheduler.timezone) == "America/Los_Angeles"
    finally:
        sched.shutdown()


def test_pause_and_resume_clear_and_restore_next_runs():
    """Pausing leaves no next run time; resuming brings it back."""
    sched = JobScheduler(PACIFIC, lambda job: None)
    sched.add_cron("daily_backup", build_cron_trigger("0 20 * * *", PACIFIC))
    sched.start()
    try:
        assert sched.next_runs()["daily_backup"] is not None
        sched.pause()
        assert sched.next_runs() == {"daily_backup": None}
        sched.resume()
        assert sched.next_runs()["daily_backup"].hour == 20
    finally:
        sched.shutdown()


def test_a_fire_while_the_previous_run_goes_on_is_reported_as_skipped():
    """A fire that finds the job still running is reported to on_skip as already_running."""
    import threading

    release, started, skipped = threading.Event(), threading.Event(), []

    def slow(job):
        started.set()
        release.wait(10)

    sched = JobScheduler(PACIFIC, slow, lambda job, reason: skipped.append((job, reason)))
    sched.add_cron("scheduled_backup", build_cron_trigger("0 6 * * *", PACIFIC))
    sched.start()
    try:
        sched.scheduler.modify_job("scheduled_backup", next_run_time=datetime.now(PACIFIC))
        assert started.wait(5)
        sched.scheduler.modify_job("scheduled_backup", next_run_time=datetime.now(PACIFIC))
        deadline = datetime.now() + timedelta(seconds=5)
        while not skipped and datetime.now() < deadline:
            release.wait(0.02)
        assert skipped == [("scheduled_backup", "already_running")]
    finally:
        release.set()
        sched.shutdown()


def test_catch_up_only_when_a_slot_was_missed():
    """A catch-up runs when a slot passed since the newest backup, or none exists; not otherwise."""
    trigger = build_cron_trigger("0 6-18/2 * * *", PACIFIC)
    at = datetime(2026, 6, 10, 0, 0, tzinfo=PACIFIC)
    assert needs_catch_up(trigger, None, at.replace(hour=3))
    # 16:00 backup, restarted at 18:30 after missing 18:00: catch up.
    assert needs_catch_up(trigger, at.replace(hour=16, second=4), at.replace(hour=18, minute=30))
    # 16:00 backup, restarted at 17:00: the 18:00 slot is still to come.
    assert not needs_catch_up(trigger, at.replace(hour=16, second=4), at.replace(hour=17))
    # 18:00 backup, restarted at 03:00 the next night: no slot was missed.
    assert not needs_catch_up(trigger, at.replace(hour=18), at.replace(hour=3) + timedelta(days=1))
