"""The schedule's promise against what happened: slots, their outcomes, the recovery point.

Pure functions of a history (service.history.History): no storage, no clock.
service.evidence builds the rest of the report's figures on top of these.

- A slot is a fire time of a schedule (service.cron: DST-exact, the same times
  the daemon fires) inside the period. Its window runs to the next slot.
- A slot is met when a complete backup of the job's kind started in its window
  (the manifest is the proof; a drill's slot needs a successful run). Otherwise
  the journal tells why: the run failed, was aborted or skipped (lock busy,
  still running, missed), or, with no record at all, the slot was missed (the
  daemon was not running). A slot less than SLOT_GRACE old with no outcome yet
  is not counted.
- The recovery point is the longest gap between consecutive successful
  backups (the data a disaster at the worst moment would lose): overall, and
  inside the scheduled hours (from each day's first slot of scheduled_backup to
  one interval after its last: 06:00 to 20:00 by default), beside the longest
  gap the schedule itself allows.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime, timedelta

from service import kinds, layout
from service.cron import next_fire_time, normalize_cron

SLOT_GRACE = timedelta(hours=1)  # a run of this age may still be going: not yet missed
SLOTTED_JOBS = ("scheduled_backup", "daily_backup", "verify_backup")
FAILED = {"failure": "failed", "aborted": "aborted", "skipped": "skipped", "rejected": "failed"}


@dataclass(frozen=True)
class Slot:
    """One fire time of a schedule and what became of it."""

    job: str
    at: datetime
    status: str  # ok, failed, aborted, skipped, missed
    reason: str = ""
    run_id: str = ""
    backup_id: str = ""


@dataclass(frozen=True)
class Gap:
    """The longest interval without a new successful backup, and the schedule's own longest."""

    seconds: float | None  # None: no backup to measure from
    start: datetime | None = None
    end: datetime | None = None
    open_end: bool = False  # the gap runs to the end of the period (no backup since)
    promise_seconds: float | None = None


def parse_time(text: str) -> datetime | None:
    """An aware datetime from ISO text, or None."""
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else None


def schedule_slots(expr: str, tz, since: datetime, until: datetime) -> list[datetime]:
    """Every fire time of cron `expr` in `tz` in [since, until), as the daemon fires them."""
    cron = normalize_cron(expr)
    slots, cursor = [], since
    while True:
        slot = next_fire_time(cron, tz, cursor)
        if slot is None or slot >= until:
            return slots
        slots.append(slot)
        cursor = slot + timedelta(seconds=1)


def successful_backups(history) -> list[tuple[datetime, object]]:
    """(start, manifest) of every complete backup, oldest first."""
    found = [(parse_time(m.started_at), m) for m in history.backups]
    return sorted(((t, m) for t, m in found if t is not None), key=lambda p: p[0])


def run_time(record: dict) -> datetime | None:
    return parse_time(record.get("started_at", ""))


def slot_results(history, job: str) -> list[Slot]:
    """Each slot of `job`'s schedule in the period and what became of it (module docstring)."""
    expr = history.schedules.get(job)
    if not expr:
        return []
    slots = schedule_slots(expr, history.tz, history.since, history.until)
    if not slots:
        return []
    after = next_fire_time(normalize_cron(expr), history.tz, slots[-1] + timedelta(seconds=1))
    ends = [*slots[1:], after or history.until]
    kind = kinds.backup_kind(job) if job in kinds.BACKUP_JOBS else None
    made = [(t, m) for t, m in successful_backups(history) if kind and layout.id_kind(m.id) == kind]
    runs = sorted(((run_time(r), r) for r in history.runs if r.get("job") == job and r.get("trigger") == "scheduler"
                   and run_time(r) is not None), key=lambda p: p[0])
    made_at, run_at = [t for t, _ in made], [t for t, _ in runs]
    results = []
    for slot, end in zip(slots, ends, strict=True):
        # Both lists are sorted by time: each window is a slice (a year of slots stays linear).
        first = bisect_left(made_at, slot)
        backup = made[first][1] if first < len(made) and made_at[first] < end else None
        inside = [r for _, r in runs[bisect_left(run_at, slot):bisect_left(run_at, end)]]
        if backup is not None:
            results.append(Slot(job, slot, "ok", backup_id=backup.id,
                                run_id=next((r["run_id"] for r in inside if r.get("outcome") == "success"), "")))
            continue
        succeeded = next((r for r in inside if r.get("outcome") == "success"), None)
        if succeeded is not None and kind is None:
            results.append(Slot(job, slot, "ok", run_id=succeeded["run_id"]))
            continue
        if inside:
            last = inside[-1]
            results.append(Slot(job, slot, FAILED.get(last.get("outcome", ""), "failed"), run_reason(last),
                                run_id=last.get("run_id", "")))
            continue
        if slot > history.now - SLOT_GRACE:
            continue  # may still be running, or its record not yet written
        results.append(Slot(job, slot, "missed", "no run recorded: the daemon was not running at this time "
                                                 "(stopped, restaging, or crashed)"))
    return results


def run_reason(record: dict) -> str:
    """Why a run did not produce what it should: its error, or its skip reason."""
    reason = record.get("reason") or ""
    error = record.get("error") or {}
    if record.get("outcome") == "success":
        return "succeeded, but no complete backup of its kind was found (deleted since?)"
    if reason == "lock_busy":
        return "skipped: another run held the service lock" + (f" ({error['message']})" if error.get("message") else "")
    if reason == "already_running":
        return "skipped: the previous run was still going"
    if reason == "missed":
        return "skipped: the daemon was too busy to start it within the grace time"
    text = error.get("message") or record.get("outcome", "")
    return f"{text} (hint: {error['hint']})" if error.get("hint") else text


def _longest(pairs, clip=None) -> Gap:
    best = Gap(None)
    for start, end, open_end in pairs:
        for lo, hi in (clip(start, end) if clip else [(start, end)]):
            seconds = (hi - lo).total_seconds()
            if seconds > 0 and (best.seconds is None or seconds > best.seconds):
                best = Gap(seconds, lo, hi, open_end and hi == end)
    return best


def recovery_point(history) -> tuple[Gap, Gap]:
    """(overall, inside the scheduled hours): the longest gaps between consecutive successful
    backups in the period (the last one before it included; an open gap runs to its end)."""
    times = [t for t, _ in successful_backups(history)]
    end = min(history.until, history.now)
    before = [t for t in times if t < history.since]
    inside = [t for t in times if history.since <= t < end]
    series = before[-1:] + inside
    pairs = [(a, b, False) for a, b in zip(series, series[1:], strict=False)]
    if series:
        pairs.append((series[-1], end, True))
    scheduled = schedule_slots(history.schedules["scheduled_backup"], history.tz, history.since, end) \
        if history.schedules.get("scheduled_backup") else []
    windows = working_windows(scheduled, history.tz)

    def clip(start, stop):
        return [(max(start, ws), min(stop, we)) for ws, we in windows if ws < stop and we > start]

    overall = _longest(pairs)
    in_hours = _longest(pairs, clip) if windows else Gap(None)
    # The schedule's promise: its longest interval between slots that touches the period (the night
    # before the period's first morning included), from a day either side.
    wide = (history.since - timedelta(days=2), end + timedelta(days=2))
    union = sorted(slot for job in ("scheduled_backup", "daily_backup") if history.schedules.get(job)
                   for slot in schedule_slots(history.schedules[job], history.tz, *wide))
    promise = max(((b - a).total_seconds() for a, b in zip(union, union[1:], strict=False)
                   if b > history.since and a < end), default=None)
    by_day: dict = {}
    for slot in scheduled:
        by_day.setdefault(slot.astimezone(history.tz).date(), []).append(slot)
    hours_promise = max(((b - a).total_seconds() for day in by_day.values()
                         for a, b in zip(day, day[1:], strict=False)), default=None)
    return (Gap(overall.seconds, overall.start, overall.end, overall.open_end, promise),
            Gap(in_hours.seconds, in_hours.start, in_hours.end, in_hours.open_end, hours_promise))


def working_windows(slots: list[datetime], tz) -> list[tuple[datetime, datetime]]:
    """The scheduled hours of each local day: from its first slot of scheduled_backup to one interval
    after its last (each slot promises a backup until the next one; the last, until as long again)."""
    by_day: dict = {}
    for slot in slots:
        by_day.setdefault(slot.astimezone(tz).date(), []).append(slot)
    return [(day[0], day[-1] + (day[-1] - day[-2])) for day in (sorted(d) for d in by_day.values()) if len(day) > 1]
