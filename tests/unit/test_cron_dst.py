"""Schedules across daylight-saving changes: every local slot once, gap slots after the gap,
repeated-hour slots at their first occurrence; checked against an independent reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from service.cron import CronScheduleTrigger, fire_instant
from service.scheduler import needs_catch_up
from tests import cron_reference
from tests.cron_cases import EXPRESSIONS, ZONES, start_times

PACIFIC = ZoneInfo("America/Los_Angeles")
BERLIN = ZoneInfo("Europe/Berlin")
FIRES_PER_START = 3


def as_scheduler_would(trigger: CronScheduleTrigger, start: datetime, count: int) -> list[datetime]:
    """Fire times as APScheduler asks for them: from `start`, then from each fire as it happens."""
    times, previous, now = [], None, start
    for _ in range(count):
        nxt = trigger.get_next_fire_time(previous, now)
        times.append(nxt)
        previous, now = nxt, nxt
    return times


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize("expr, clock, expected", [
    # The measurements: APScheduler's CronTrigger skipped March 9 and April, ran 02:30
    # at 03:30 and ran 01:05 twice on the fall-back day.
    ("0 0 * * *", "2026-03-08T00:00:05-08:00", "2026-03-09T00:00:00-07:00"),
    ("0 0 1 * *", "2026-03-08T00:00:05-08:00", "2026-04-01T00:00:00-07:00"),
    ("30 2 * * *", "2026-03-07T23:30:00-08:00", "2026-03-08T03:00:00-07:00"),
    ("5 1 * * *", "2026-11-01T01:05:05-08:00", "2026-11-02T01:05:00-08:00"),
    # The fall-back slot's first occurrence; and from just after it, not its second one.
    ("5 1 * * *", "2026-11-01T00:30:00-07:00", "2026-11-01T01:05:00-07:00"),
    ("5 1 * * *", "2026-11-01T01:05:01-07:00", "2026-11-02T01:05:00-08:00"),
    # Every gap slot collapses onto the first moment after the gap, once.
    ("*/15 2 * * *", "2026-03-08T01:50:00-08:00", "2026-03-08T03:00:00-07:00"),
    ("*/15 2 * * *", "2026-03-08T03:00:01-07:00", "2026-03-09T02:00:00-07:00"),
    # Europe/Berlin jumps from 02:00 to 03:00 on the last Sunday of March.
    ("30 2 * * *", "2026-03-29T00:00:00+01:00", "2026-03-29T03:00:00+02:00"),
    ("30 2 * * *", "2026-10-25T02:40:00+01:00", "2026-10-26T02:30:00+01:00"),
])
def test_next_run_near_a_change_follows_cron(expr, clock, expected):
    """The next run from a clock near a DST change is cron's: no skipped day or month, no repeat."""
    tz = BERLIN if clock.endswith(("+01:00", "+02:00")) else PACIFIC
    trigger = CronScheduleTrigger(expr, tz)
    got = trigger.get_next_fire_time(None, datetime.fromisoformat(clock).astimezone(tz))
    assert got.astimezone(UTC) == utc(expected)
    assert got.tzinfo is tz  # shown in the service's zone


def test_a_gap_slot_runs_at_the_end_of_the_gap():
    """02:30 on the spring-forward day is run at 03:00 local, the first moment after the gap."""
    assert fire_instant(datetime(2026, 3, 8, 2, 30), PACIFIC).astimezone(UTC) == utc("2026-03-08T03:00:00-07:00")
    assert fire_instant(datetime(2026, 11, 1, 1, 30), PACIFIC).astimezone(UTC) == utc("2026-11-01T01:30:00-07:00")


def test_each_local_day_runs_once_across_both_changes_of_a_year():
    """A daily 01:30 and 02:30 job runs once per local day through a whole year of Pacific time."""
    for expr in ("30 1 * * *", "30 2 * * *"):
        times = as_scheduler_would(CronScheduleTrigger(expr, PACIFIC),
                                    datetime(2026, 1, 1, tzinfo=PACIFIC), 365)
        days = [t.date() for t in times]
        assert len(set(days)) == 365 and days[-1] == datetime(2026, 12, 31).date()


def test_catch_up_counts_instants_in_the_repeated_hour():
    """A backup at 01:05 PDT on the fall-back day was not missed at 01:30 PST (same wall hour)."""
    trigger = CronScheduleTrigger("5 1 * * *", PACIFIC)
    ran = datetime(2026, 11, 1, 1, 5, 2, tzinfo=PACIFIC)  # fold=0: PDT
    later = datetime(2026, 11, 1, 1, 30, tzinfo=PACIFIC, fold=1)  # PST, an hour later
    assert not needs_catch_up(trigger, ran, later)
    assert needs_catch_up(trigger, ran, later + timedelta(days=1))


def test_every_fire_time_agrees_with_the_reference_across_years_of_changes():
    """For ~90 expressions from starts around every change of 2025-2030 in two zones, the
    trigger's fire times equal the brute-force reference's, one by one (0 differences)."""
    compared, differences = 0, []
    for tz in ZONES:
        starts = start_times(tz)
        for expr in EXPRESSIONS:
            trigger = CronScheduleTrigger(expr, tz)
            for start in starts:
                want = cron_reference.fire_times(expr, tz, start, FIRES_PER_START)
                got = as_scheduler_would(trigger, start, FIRES_PER_START)
                compared += len(want)
                differences += [(expr, str(tz), start.isoformat(), g, w)
                                for g, w in zip(got, want, strict=True) if g.astimezone(UTC) != w]
    print(f"fire times compared: {compared}, differing: {len(differences)}")
    assert compared == len(ZONES) * len(EXPRESSIONS) * len(start_times(ZONES[0])) * FIRES_PER_START
    assert not differences, differences[:5]
