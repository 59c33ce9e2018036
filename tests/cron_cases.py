"""Expressions and start times for comparing the schedule with the reference across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

ZONES = (ZoneInfo("America/Los_Angeles"), ZoneInfo("Europe/Berlin"))  # second Sunday of March / last Sunday
YEARS = range(2025, 2031)

EXPRESSIONS = (
    *(f"0 {hour} * * *" for hour in range(24)),             # every hour of the day
    *(f"30 {hour} * * *" for hour in range(24)),
    "0 * * * *", "30 * * * *", "*/15 * * * *", "*/20 1-3 * * *",   # ranges and steps
    "0 6-18/2 * * *", "0 */3 * * *", "0,30 2 * * *", "10-40/10 2 * * *", "5 1 * * *",
    "59 1 * * *", "0 1-4 * * *", "45 5 * * *",
    "0 9 * * 1-5", "30 2 * * mon-fri", "0 2 * * 1/2", "0 1 * * */2",     # weekdays
    "0 3 * * 0", "0 3 * * 7", "30 2 * * sun", "0 2 * * SUN", "0 2 * * 5-7", "0 2 * * 0,6",
    "30 2 * * 6-7",
    "0 0 * * *", "0 2 8 * *", "30 2 25-31 * *", "0 3 31 * *",           # day of month
    "0 0 1 * *", "30 2 1 * *",                                          # monthly
    "0 2 1 */3 *", "0 3 1 jan,apr,jul,oct *", "30 2 25 3,6,9,12 *", "0 2 * mar,oct,nov *",
)

STEPS = (timedelta(days=-20), timedelta(days=-1), timedelta(hours=-3), timedelta(hours=-1),
         timedelta(minutes=-30), timedelta(seconds=-1), timedelta(0), timedelta(seconds=5),
         timedelta(minutes=30), timedelta(minutes=61), timedelta(hours=3), timedelta(days=1))


def transitions(tz: ZoneInfo, year: int) -> list[datetime]:
    """The instants (UTC) at which `tz` changes its offset during `year`."""
    found = []
    t = datetime(year, 1, 1, tzinfo=UTC)
    while t.year == year:
        if (t + timedelta(hours=1)).astimezone(tz).utcoffset() != t.astimezone(tz).utcoffset():
            found.append(t + timedelta(hours=1))
        t += timedelta(hours=1)
    return found


def start_times(tz: ZoneInfo) -> list[datetime]:
    """Start moments spread around every DST change of YEARS, as aware local times."""
    return [(change + step).astimezone(tz) for year in YEARS for change in transitions(tz, year)
            for step in STEPS]
