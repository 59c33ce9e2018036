"""Retention policy: which backups a prune keeps, which it deletes, and why.

Pure: records and `now` in, one decision per record out; no storage, no clock.
`service.tasks.prune` turns a bucket listing into records and applies the decisions.

Rules (docs/retention.md):
- A complete backup (it has a manifest) is kept when it is the newest of its kind
  (`layout.id_kind`: scheduled, daily, deploy, ...), one of the newest `keep_last`
  of its kind, younger than `min_days`, or the newest of its calendar day within
  `keep_daily_days` / of its ISO week within `keep_weekly_weeks`. `initial-*` and
  `pre-restore-*` follow their own, longer, `milestone_*` settings and take no
  part in the daily and weekly picks.
- An incomplete backup of this service (no manifest, but a `schema.dump`) is a
  failed run's leftover: deleted once nothing was written to it for a day.
- Anything else under `backups/` (the old tool's backups: table dumps with
  neither manifest nor schema.dump, or nested prefixes) is FOREIGN: never
  deleted by a rule, since no rule can tell how old or how whole it is.
- A complete backup whose id has no known kind is kept (no kind, no "newest").
- The integrity watch's hold (service.integrity): while a backup that found rows
  dropped is not acknowledged, its baseline (the newest backup taken before the
  drop) and the flagged backup itself are kept whatever else the rules say (`held`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from service import layout

COMPLETE, INCOMPLETE, FOREIGN = "complete", "incomplete", "foreign"
MILESTONE_KINDS = ("initial", "pre-restore")
MIN_DAYS_FLOOR = 14  # the team's existing clean-up command refuses anything younger
KEEP_LAST_FLOOR = 3
INCOMPLETE_GRACE = timedelta(days=1)


@dataclass(frozen=True)
class RetentionPolicy:
    """What to keep; FAC_BACKUP_RETENTION_* (config.py checks the floors)."""

    min_days: int = 14
    keep_last: int = 3
    keep_daily_days: int = 0
    keep_weekly_weeks: int = 0
    milestone_min_days: int = 365
    milestone_keep_last: int = 5
    max_backup_age_hours: float = 48.0  # a newer complete backup must exist, or prune refuses

    def for_kind(self, kind: str) -> tuple[int, int]:
        """(min_days, keep_last) for backups of `kind`."""
        if kind in MILESTONE_KINDS:
            return self.milestone_min_days, self.milestone_keep_last
        return self.min_days, self.keep_last


@dataclass(frozen=True)
class Record:
    """One backup prefix as the policy sees it.

    `when` is the manifest's started_at for a complete backup, and the time of
    the newest object for the others (how long the prefix has been left alone).
    """

    id: str
    state: str  # COMPLETE, INCOMPLETE or FOREIGN
    when: datetime
    bytes: int = 0
    holds: str = ""  # a flagged, unacknowledged backup: the id of its baseline, which must be kept

    @property
    def kind(self) -> str | None:
        return layout.id_kind(self.id)


@dataclass(frozen=True)
class Decision:
    """Keep or delete one record, and the reason an operator reads."""

    record: Record
    keep: bool
    reason: str
    held: bool = False  # kept by the integrity watch's hold


def _age_text(age: timedelta) -> str:
    hours = age.total_seconds() / 3600
    return f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.1f} days"


def _newest_first(records: Iterable[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.when, r.id), reverse=True)


def refusal(records: Iterable[Record], now: datetime, policy: RetentionPolicy) -> str | None:
    """Why a prune must not run now (backups look broken), or None.

    A failing system must not eat its own history: prune refuses when the newest
    backup of this service has no manifest (the last run failed or is still
    running), when there is no complete backup at all, or when the newest
    complete one is older than `max_backup_age_hours`.
    """
    ours = _newest_first(r for r in records if r.state != FOREIGN)
    if not ours:
        return "there is no backup of this service in the bucket"
    if ours[0].state == INCOMPLETE:
        return (f"the newest backup {ours[0].id} has no manifest: the last backup failed "
                "or is still running")
    newest = ours[0]  # complete, by the test above
    age = now - newest.when
    if age > timedelta(hours=policy.max_backup_age_hours):
        return (f"the newest complete backup {newest.id} is {_age_text(age)} old (limit "
                f"{policy.max_backup_age_hours:g} hours): backups seem to be failing")
    return None


def decide(records: Iterable[Record], now: datetime, policy: RetentionPolicy) -> list[Decision]:
    """One decision per record, newest first; see the module docstring for the rules."""
    records = list(records)
    reasons: dict[str, str] = {}
    deletions: dict[str, str] = {}
    complete_by_kind: dict[str, list[Record]] = {}
    kinds = {r.id: r.kind for r in records}
    for r in records:
        if r.state == FOREIGN:
            reasons[r.id] = ("not written by this service (old tool's layout or unknown objects): "
                             "never pruned automatically; delete it by hand when no longer needed")
        elif r.state == INCOMPLETE:
            age = now - r.when
            if age < INCOMPLETE_GRACE:
                reasons[r.id] = f"incomplete, last written {_age_text(age)} ago: may still be running"
            else:
                deletions[r.id] = f"incomplete (no manifest), untouched for {_age_text(age)}"
        elif kinds[r.id] is None:
            reasons[r.id] = "complete, but its id is of no known kind: kept"
        else:
            complete_by_kind.setdefault(kinds[r.id], []).append(r)
    regular: list[Record] = []
    for kind, group in complete_by_kind.items():
        min_days, keep_last = policy.for_kind(kind)
        for i, r in enumerate(_newest_first(group)):
            if i == 0:
                reasons[r.id] = f"the newest complete {kind} backup"
            elif i < keep_last:
                reasons[r.id] = f"one of the newest {keep_last} complete {kind} backups"
            elif now - r.when < timedelta(days=min_days):
                reasons[r.id] = f"younger than {min_days} days"
            if kind not in MILESTONE_KINDS:
                regular.append(r)
    _pick_periodic(regular, now, policy, reasons)
    held: set[str] = set()
    for baseline, flagged in holds_of(records).items():
        # The flagged backup carries the flag: it stays too, or the hold would end with it.
        for kept, reason in ((baseline, f"the newest backup before the rows dropped in {flagged}"),
                             (flagged, f"it found rows dropped against {baseline}")):
            deletions.pop(kept, None)
            held.add(kept)
            reasons[kept] = f"{reason}: kept until that drop is acknowledged (acknowledge_drop {flagged})"
    for r in records:
        if r.id not in reasons and r.id not in deletions:
            min_days, keep_last = policy.for_kind(kinds[r.id])
            deletions[r.id] = (f"older than {min_days} days and not among the newest {keep_last} "
                               f"{kinds[r.id]} backups ({_age_text(now - r.when)} old)")
    return [Decision(r, r.id in reasons, reasons.get(r.id) or deletions[r.id], r.id in held)
            for r in _newest_first(records)]


def holds_of(records: list[Record]) -> dict[str, str]:
    """baseline id -> the flagged backup holding it, for baselines that are complete backups."""
    complete = {r.id for r in records if r.state == COMPLETE}
    return {r.holds: r.id for r in _newest_first(records) if r.holds and r.holds in complete and r.state == COMPLETE}


def _pick_periodic(regular: list[Record], now: datetime, policy: RetentionPolicy, reasons: dict) -> None:
    """Keep the newest complete backup of each day / ISO week inside the windows."""
    tz = now.tzinfo
    windows = (
        (policy.keep_daily_days, lambda when: when.date(), "the newest backup of its day"),
        (policy.keep_weekly_weeks * 7, lambda when: tuple(when.isocalendar())[:2], "the newest backup of its week"),
    )
    for days, period_of, text in windows:
        if days <= 0:
            continue
        seen: set = set()
        for r in _newest_first(regular):
            if now - r.when >= timedelta(days=days):
                continue
            period = period_of(r.when.astimezone(tz))
            if period not in seen:
                seen.add(period)
                reasons.setdefault(r.id, f"{text} (one kept per period for {days} days)")
