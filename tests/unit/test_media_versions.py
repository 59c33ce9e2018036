"""Kept media versions, pure parts: their key names, the version a moment takes, and which ones
the retention must keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service import layout
from service.media_versions import MediaMoment, MomentPlan, versions_needed
from service.storage import MemoryObjectStore, ObjectInfo

T0 = datetime(2026, 6, 4, 10, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_version_keys_round_trip_odd_keys_and_sort_oldest_first():
    """Spaces, non-ASCII, deep prefixes and a trailing slash survive; a key's versions sort by replacement."""
    for key in ("a report.pdf", "résumé/报告.xlsx", "2024/" * 10 + "deep.pdf", "folder/"):
        early = layout.media_version_key(key, at(1), at(0))
        late = layout.media_version_key(key, at(1) + timedelta(microseconds=1), at(0))
        assert layout.parse_media_version_key(early) == (key, at(1), at(0))
        assert early < late and not layout.is_media_key(early)
    assert layout.parse_media_version_key("backups/media-versions/a.pdf/not-a-stamp") is None
    assert layout.parse_media_version_key("backups/daily-06-04/manifest.json") is None


def test_a_version_serves_the_moments_between_the_previous_replacement_and_its_own():
    """Version i is needed exactly when a moment falls in [replaced[i-1], replaced[i])."""
    replaced = [at(10), at(20), at(30)]
    assert versions_needed(replaced, []) == [False, False, False]
    assert versions_needed(replaced, [at(5)]) == [True, False, False]
    assert versions_needed(replaced, [at(10)]) == [False, True, False]  # replaced at 10: v2 was current
    assert versions_needed(replaced, [at(15), at(25)]) == [False, True, True]
    assert versions_needed(replaced, [at(30), at(40)]) == [False, False, False]  # the mirror serves those


def test_a_moment_takes_the_earliest_version_replaced_after_it_and_skips_later_keys():
    """Earliest kept version after T, else the mirror; nothing for content that reached the mirror after T."""
    store = MemoryObjectStore()
    versions = {("k", at(10), at(0)): b"k before 10", ("k", at(30), at(20)): b"k 20-30",
                ("k", at(20), at(10)): b"k 10-20", ("late", at(40), at(25)): b"late 25-40"}
    for (key, replaced, mirrored), data in versions.items():
        store.put_bytes(layout.media_version_key(key, replaced, mirrored), data)
    plan = MomentPlan(MediaMoment("daily-06-04", at(15), at(15), "media.json", {})).load(store)
    assert store.get_bytes(plan.source_for("k", ObjectInfo("k", 9, "", at(30))).key) == b"k 10-20"
    assert plan.source_for("late", ObjectInfo("late", 9, "", at(41))) is None  # first copied at 25 > T
    assert plan.source_for("same", ObjectInfo("same", 3, "", at(5))).key == "same"
    assert plan.source_for("new", ObjectInfo("new", 3, "", at(16))) is None
    assert (plan.from_versions, plan.not_in_backup) == (1, 2)
