"""A brute-force reference for the schedule's DST policy, independent of any cron library.

It reads the five cron fields with its own small parser, walks the local calendar
day by day, and turns each matching wall-clock minute into an instant by trying
every UTC offset the zone uses and keeping the first that reads back as that wall
time. A wall time no offset produces is in a spring-forward gap: the reference
then walks real time minute by minute until the clock reads past it. The trigger
computes the same thing with cronsim and fold arithmetic; agreement of the two is
what the tests count.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
LIMITS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _value(text: str, index: int) -> int:
    if index == 3 and text[:3] in MONTH_NAMES:
        return MONTH_NAMES.index(text[:3]) + 1
    if index == 4 and text[:3] in DAY_NAMES:
        return DAY_NAMES.index(text[:3])
    return int(text)


def _field(text: str, index: int) -> set[int]:
    low_limit, high_limit = LIMITS[index]
    values: set[int] = set()
    for part in text.lower().split(","):
        span, _, step = part.partition("/")
        if span == "*":
            low, high = low_limit, high_limit
        elif "-" in span:
            first, last = span.split("-")
            low, high = _value(first, index), _value(last, index)
        else:
            low = _value(span, index)
            high = high_limit if step else low
        values.update(range(low, high + 1, int(step or 1)))
    if index == 4 and 7 in values:
        values = (values - {7}) | {0}
    return values


def parse(expr: str):
    minute, hour, day, month, weekday = expr.split()
    return (_field(minute, 0), _field(hour, 1), _field(day, 2), _field(month, 3),
            _field(weekday, 4), day != "*", weekday != "*")


def _day_matches(spec, d: date) -> bool:
    _, _, days, months, weekdays, day_set, weekday_set = spec
    if d.month not in months:
        return False
    in_days, in_weekdays = d.day in days, (d.isoweekday() % 7) in weekdays
    if day_set and weekday_set:
        return in_days or in_weekdays  # cron's rule when both are restricted
    return in_days and in_weekdays


def _offsets_near(wall: datetime, tz: tzinfo) -> set[timedelta]:
    probe = wall.replace(tzinfo=UTC)
    return {(probe + timedelta(hours=h)).astimezone(tz).utcoffset() for h in range(-30, 31, 6)}


def to_instant(wall: datetime, tz: tzinfo) -> datetime:
    """The policy, in UTC: the first instant the clock reads `wall`, else the first after it."""
    readings = []
    for offset in _offsets_near(wall, tz):
        instant = (wall - offset).replace(tzinfo=UTC)
        if instant.astimezone(tz).replace(tzinfo=None) == wall:
            readings.append(instant)
    if readings:
        return min(readings)
    instant = (wall - max(_offsets_near(wall, tz))).replace(tzinfo=UTC)
    while instant.astimezone(tz).replace(tzinfo=None) < wall:
        instant += timedelta(minutes=1)
    return instant


def fire_times(expr: str, tz: tzinfo, start: datetime, count: int, horizon_days: int = 800) -> list[datetime]:
    """The first `count` distinct policy instants at or after `start`, in UTC.

    (In UTC because Python compares two datetimes of one zone by wall time, ignoring fold.)
    """
    start = start.astimezone(UTC)
    spec = parse(expr)
    minutes, hours = sorted(spec[0]), sorted(spec[1])
    found: list[datetime] = []
    d = (start.astimezone(tz) - timedelta(days=2)).date()
    for _ in range(horizon_days):
        if _day_matches(spec, d):
            for h in hours:
                for m in minutes:
                    instant = to_instant(datetime.combine(d, time(h, m)), tz)
                    if instant >= start and (not found or instant > found[-1]):
                        found.append(instant)
                        if len(found) == count:
                            return found
        d += timedelta(days=1)
    return found
