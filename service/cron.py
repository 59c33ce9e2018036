"""Cron schedules in a local time zone, exact across daylight-saving changes.

APScheduler 3.11's own CronTrigger skips slots near a change (a daily midnight job
computed from the spring-forward day skips the next day; a monthly job skips a
month) and runs a fall-back slot twice. `CronScheduleTrigger` keeps APScheduler
as the scheduler and computes fire times itself, with the policy cron has:

- every slot that exists in local time runs exactly once;
- a slot inside the spring-forward gap runs once, at the first moment after the gap
  (02:30 on the day clocks jump from 02:00 to 03:00 runs at 03:00);
- a slot in the repeated fall-back hour runs once, at its first occurrence.

cronsim (standard five-field syntax, 0 and 7 both Sunday) enumerates the matching
wall-clock minutes on naive datetimes; this module turns each into an instant by
that policy. cronsim's own zone handling is not used: for expressions with a
wildcard minute or hour it follows Debian cron's "wildcard" rule (gap slots
dropped, repeated-hour slots run twice), which is not the policy above.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo

from apscheduler.triggers.base import BaseTrigger
from cronsim import CronSim, CronSimError

from service.errors import ConfigError

# Standard cron only: numbers, 3-letter names, * ? , - /. cronsim's extensions (L, W, #)
# are refused so that an expression means the same to any cron an operator knows.
FIELD = re.compile(r"^[0-9a-z*?,/-]+$")
NAMES = re.compile(r"[a-z]+")
DAY_NAMES = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"}
MONTH_NAMES = {"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}
FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
HINT = "use 'minute hour day-of-month month day-of-week', e.g. '0 6-18/2 * * *'"


def normalize_cron(expr: str) -> str:
    """The expression as cronsim reads it; ConfigError naming what is wrong."""
    fields = expr.lower().split()
    if len(fields) != 5:
        raise ConfigError(f"cron expression {expr!r} has {len(fields)} field(s), not 5", hint=HINT)
    for name, field in zip(FIELD_NAMES, fields, strict=True):
        allowed = DAY_NAMES if name == "day of week" else MONTH_NAMES if name == "month" else set()
        if not FIELD.match(field) or not set(NAMES.findall(field)) <= allowed:
            raise ConfigError(f"cron expression {expr!r}: {field!r} is not a valid {name} field",
                              hint=HINT)
    day, weekdays = fields[2], fields[4]
    if day not in ("*", "?") and weekdays not in ("*", "?"):
        # cron fires when EITHER field matches, which surprises most readers: refuse it.
        raise ConfigError(f"cron expression {expr!r} restricts both day of month and day of week",
                          hint="restrict only one of them")
    text = " ".join("*" if f == "?" else f for f in fields)
    try:
        CronSim(text, datetime(2026, 1, 1))
    except CronSimError as exc:
        raise ConfigError(f"cron expression {expr!r} is invalid", detail=str(exc), hint=HINT) from exc
    return text


def _reads(instant: datetime, tz: tzinfo) -> datetime:
    """What a clock in `tz` reads at `instant` (through UTC: astimezone to its own zone is a no-op)."""
    return instant.astimezone(UTC).astimezone(tz).replace(tzinfo=None)


def fire_instant(wall: datetime, tz: tzinfo) -> datetime:
    """The instant a slot at naive local `wall` runs: its first occurrence, or the end of its gap."""
    first = wall.replace(tzinfo=tz, fold=0)
    if _reads(first, tz) == wall:
        return first.astimezone(tz)  # fold=0 is the first of two readings in a repeated hour
    # In a gap, fold=1 reads the wall time with the offset after the change (an instant before
    # the change) and fold=0 with the offset before it (an instant after): bisect between them.
    low = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    high = first.astimezone(UTC)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if _reads(middle, tz) > wall:
            high = middle
        else:
            low = middle
    return high.astimezone(tz)


def next_fire_time(expr: str, tz: tzinfo, start: datetime) -> datetime | None:
    """The earliest fire instant at or after `start` (aware) for a normalized expression."""
    # Start a minute early on the wall clock: a gap slot fires at the gap's end, which reads
    # later than the slot; slots whose first occurrence is already past are skipped below.
    # Work in UTC: Python adds to and compares two datetimes of one zone by wall time, fold ignored.
    start = start.astimezone(UTC)
    walls = CronSim(expr, _reads(start - timedelta(minutes=1), tz))
    for wall in walls:
        instant = fire_instant(wall, tz)
        if instant.astimezone(UTC) >= start:
            return instant
    return None


class CronScheduleTrigger(BaseTrigger):
    """An APScheduler 3 trigger for a standard cron expression in `tz`, DST-exact (see module)."""

    def __init__(self, expr: str, tz: tzinfo) -> None:
        self.expr = expr
        self.cron = normalize_cron(expr)
        self.timezone = tz

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        # As APScheduler's CronTrigger: after a fire, the next slot after it (even if already
        # past, so coalescing and misfire handling see it); otherwise the next from now.
        now = now.astimezone(UTC)  # see next_fire_time: compare instants, not wall times
        start = now
        if previous_fire_time is not None and previous_fire_time.astimezone(UTC) <= now:
            start = previous_fire_time.astimezone(UTC) + timedelta(microseconds=1)
        return next_fire_time(self.cron, self.timezone, start)

    def __str__(self) -> str:
        return f"cron[{self.expr}]"

    def __repr__(self) -> str:
        return f"<CronScheduleTrigger ({self.expr!r}, timezone={str(self.timezone)!r})>"
