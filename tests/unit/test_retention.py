"""Retention decisions, as properties over thousands of generated backup histories.

A seeded generator stands in for a property-testing library: every run checks
the same 2,000 histories, and a failure prints the seed of the history that broke.
"""

from __future__ import annotations

import functools
import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from service import layout
from service.retention import (
    COMPLETE,
    FOREIGN,
    INCOMPLETE,
    INCOMPLETE_GRACE,
    MILESTONE_KINDS,
    Record,
    RetentionPolicy,
    decide,
    refusal,
)

TZ = ZoneInfo("America/Los_Angeles")
NOW = datetime(2026, 11, 23, 14, 0, tzinfo=TZ)
HISTORIES = 2000


def random_policy(rng: random.Random) -> RetentionPolicy:
    return RetentionPolicy(
        min_days=rng.choice((14, 15, 30, 60)),
        keep_last=rng.choice((3, 4, 7)),
        keep_daily_days=rng.choice((0, 0, 7, 31)),
        keep_weekly_weeks=rng.choice((0, 4, 13)),
        milestone_min_days=rng.choice((30, 365)),
        milestone_keep_last=rng.choice((3, 5)),
    )


def random_history(rng: random.Random) -> list[Record]:
    """Up to 80 prefixes of every kind and state, spread over a year, some at equal times."""
    records = []
    kinds = [*layout.ID_FORMATS, None]
    for n in range(rng.randint(0, 80)):
        kind = rng.choice(kinds)
        when = NOW - timedelta(hours=rng.choice((rng.uniform(-2, 24 * 400), rng.uniform(0, 30))))
        if rng.random() < 0.05:
            when = NOW - timedelta(days=20)  # ties
        state = rng.choices((COMPLETE, INCOMPLETE, FOREIGN), weights=(8, 1, 1))[0]
        backup_id = f"{kind}-{n:04d}" if kind else f"odd{n:04d}"
        records.append(Record(backup_id, state, when, rng.randint(0, 10**9)))
    return records


@functools.cache
def cases() -> tuple:
    """(seed, policy, records, decisions) for every generated history, computed once per session."""
    found = []
    for seed in range(HISTORIES):
        rng = random.Random(seed)
        policy, records = random_policy(rng), random_history(rng)
        found.append((seed, policy, records, decide(records, NOW, policy)))
    return tuple(found)


def kept_ids(decisions) -> set[str]:
    return {d.record.id for d in decisions if d.keep}


def test_every_record_gets_exactly_one_decision_with_a_reason():
    """Whatever the history, each backup is decided once, keep or delete, and says why."""
    for seed, _policy, records, decisions in cases():
        assert sorted(d.record.id for d in decisions) == sorted(r.id for r in records), seed
        assert all(d.reason for d in decisions), seed


def test_the_newest_complete_backup_of_each_kind_survives():
    """Whatever the history and policy, the newest complete backup of every kind is kept."""
    for seed, _policy, records, decisions in cases():
        kept = kept_ids(decisions)
        for kind in layout.ID_FORMATS:
            group = [r for r in records if r.state == COMPLETE and r.kind == kind]
            if group:
                newest = max(group, key=lambda r: (r.when, r.id))
                assert newest.id in kept, (seed, kind)


def test_the_newest_k_complete_backups_of_each_kind_survive():
    """keep_last (or milestone_keep_last) newest complete backups of each kind are kept, whatever their age."""
    for seed, policy, records, decisions in cases():
        kept = kept_ids(decisions)
        for kind in layout.ID_FORMATS:
            keep_last = policy.milestone_keep_last if kind in MILESTONE_KINDS else policy.keep_last
            group = sorted((r for r in records if r.state == COMPLETE and r.kind == kind),
                           key=lambda r: (r.when, r.id), reverse=True)
            assert {r.id for r in group[:keep_last]} <= kept, (seed, kind)


def test_no_complete_backup_younger_than_the_minimum_is_deleted():
    """A complete backup younger than min_days (milestone_min_days for initial/pre-restore) is never deleted."""
    for seed, policy, _records, decisions in cases():
        for d in decisions:
            r = d.record
            if r.state != COMPLETE:
                continue
            min_days = policy.milestone_min_days if r.kind in MILESTONE_KINDS else policy.min_days
            if NOW - r.when < timedelta(days=min_days):
                assert d.keep, (seed, r)


def test_incomplete_leftovers_are_kept_for_a_day_and_deleted_after():
    """An incomplete backup younger than a day is kept (it may be running); an older one is deleted."""
    for seed, _policy, _records, decisions in cases():
        for d in decisions:
            if d.record.state == INCOMPLETE:
                assert d.keep == (NOW - d.record.when < INCOMPLETE_GRACE), (seed, d)


def test_foreign_and_unknown_kind_backups_are_never_deleted():
    """The old tool's backups and complete backups of no known kind are always kept."""
    for seed, _policy, _records, decisions in cases():
        for d in decisions:
            if d.record.state == FOREIGN or (d.record.state == COMPLETE and d.record.kind is None):
                assert d.keep, (seed, d)


def test_old_backups_beyond_every_rule_are_deleted():
    """The policy does delete: old complete backups outside keep_last and the periodic picks go."""
    policy = RetentionPolicy(min_days=14, keep_last=3)
    records = [Record(f"daily-{i:02d}", COMPLETE, NOW - timedelta(days=i), 100) for i in range(1, 41)]
    decisions = {d.record.id: d for d in decide(records, NOW, policy)}
    deleted = sorted(i for i, d in decisions.items() if not d.keep)
    assert deleted == [f"daily-{i:02d}" for i in range(14, 41)]
    assert "older than 14 days" in decisions["daily-20"].reason


def test_one_per_day_and_one_per_week_are_kept_inside_their_windows():
    """With keep_daily_days / keep_weekly_weeks, the newest backup of each day / week survives."""
    policy = RetentionPolicy(min_days=14, keep_last=3, keep_daily_days=30, keep_weekly_weeks=10)
    records = [Record(f"scheduled-{d:02d}-{h:02d}", COMPLETE, NOW - timedelta(days=d, hours=h), 1)
               for d in range(0, 80) for h in (0, 2, 4)]
    kept = kept_ids(decide(records, NOW, policy))
    old_days = {r.when.date() for r in records if r.id in kept and NOW - r.when > timedelta(days=14)}
    for day in range(15, 29):
        assert (NOW - timedelta(days=day)).date() in old_days, day
    beyond = [r for r in records if r.id in kept and NOW - r.when > timedelta(days=30)]
    assert 5 <= len(beyond) <= 6  # one per ISO week between 30 and 70 days
    assert not [r for r in records if r.id in kept and NOW - r.when > timedelta(days=71)]


def test_milestones_follow_their_own_longer_settings():
    """initial-* and pre-restore-* backups stay for milestone_min_days, regular kinds only min_days."""
    policy = RetentionPolicy(min_days=14, keep_last=3, milestone_min_days=365, milestone_keep_last=3)
    records = [Record(f"{kind}-{i}", COMPLETE, NOW - timedelta(days=10 * i), 1)
               for kind in ("initial", "pre-restore", "deploy") for i in range(10)]
    kept = kept_ids(decide(records, NOW, policy))
    assert {f"initial-{i}" for i in range(10)} <= kept
    assert {f"pre-restore-{i}" for i in range(10)} <= kept
    assert kept & {f"deploy-{i}" for i in range(10)} == {"deploy-0", "deploy-1", "deploy-2"}


@pytest.mark.parametrize("records, expected", [
    ([], "no backup"),
    ([Record("daily-1", COMPLETE, NOW - timedelta(days=1)), Record("daily-2", INCOMPLETE, NOW)], "no manifest"),
    ([Record("daily-1", COMPLETE, NOW - timedelta(days=3))], "seem to be failing"),
    ([Record("legacy", FOREIGN, NOW)], "no backup"),
])
def test_prune_refuses_when_the_last_backup_failed(records, expected):
    """No backups, a newest backup without a manifest, or a stale newest backup: prune must not run."""
    assert expected in refusal(records, NOW, RetentionPolicy())


def test_prune_runs_when_the_newest_backup_is_complete_and_fresh():
    """An old failed leftover does not block a prune once a newer complete backup exists."""
    records = [Record("daily-1", INCOMPLETE, NOW - timedelta(days=3)),
               Record("daily-2", COMPLETE, NOW - timedelta(hours=20)),
               Record("legacy", FOREIGN, NOW)]
    assert refusal(records, NOW, RetentionPolicy()) is None
