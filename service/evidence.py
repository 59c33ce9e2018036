"""The contingency report's figures: pure functions of a History (service.history).

`build_report(history)` returns a `Report`: every figure the HTML and the
text summary show (service.report_html, service.report_text render it and
compute nothing). Where each figure comes from:

- slots, recovery point: the schedules and the backups (service.evidence_schedule);
- backups, growth: the complete backups' manifests started in the period
  (size = dump bytes; the database's own size, pg_database_size at the
  snapshot, where the manifest records it);
- projection: a least-squares line through the database's size over the
  period, against the storage each database has where the configuration knows
  it; skipped, and said so, when it does not;
- drills: the journal's verify_backup runs, and verified.json records of drills
  the journal does not hold;
- restores: the journal's s3_restore, db_restore and media_restore runs (and
  refused requests), and pre-restore manifests the journal does not explain;
- media: the journal's media_sync figures, the kept versions, and what a
  restore of the newest backup brings back;
- integrity: each backup's comparison (service.integrity) and acknowledgements.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service import integrity, layout, space
from service.evidence_schedule import SLOTTED_JOBS, Gap, Slot, parse_time, recovery_point, run_time, slot_results

RESTORE_JOBS = ("s3_restore", "db_restore", "media_restore")
MIN_PROJECTION_SPAN = timedelta(days=1)  # a slope over less than a day says nothing about months


@dataclass(frozen=True)
class KindFigures:
    kind: str
    count: int
    bytes_min: int
    bytes_max: int
    bytes_last: int
    seconds_min: float
    seconds_median: float
    seconds_max: float
    tables_last: int
    rows_last: int


@dataclass(frozen=True)
class Projection:
    binding: str
    storage_gb: float | None
    reaches: datetime | None = None  # when the database's size reaches the storage
    note: str = ""


@dataclass(frozen=True)
class Report:
    history: object
    slots: tuple[Slot, ...]
    rpo: Gap
    rpo_in_hours: Gap
    kinds: tuple[KindFigures, ...]
    points: tuple[dict, ...]  # one per backup in the period: time, kind, id, bytes, seconds, rows, db bytes
    failures: tuple[dict, ...]  # runs of any job that failed or were aborted or refused
    growth_per_day: float | None  # database bytes per day (None: not enough points)
    projections: tuple[Projection, ...]
    drills: tuple[dict, ...]
    last_proved: dict | None
    restores: tuple[dict, ...]
    refused_restores: int
    media: dict
    flagged: tuple[dict, ...]
    purges: tuple[dict, ...]  # backups in which tables allowed to shrink did (legitimate purges)
    compared: int
    journal_reach: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def slot_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for slot in self.slots:
            counts[slot.status] = counts.get(slot.status, 0) + 1
        return counts

    @property
    def missed_or_failed(self) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.status != "ok")


def in_period(history, when: datetime | None) -> bool:
    return when is not None and history.since <= when < history.until


def backup_points(history) -> list[dict]:
    """One point per complete backup started in the period, oldest first."""
    points = []
    for m in history.backups:
        started, finished = parse_time(m.started_at), parse_time(m.finished_at)
        if not in_period(history, started):
            continue
        points.append({"at": started, "id": m.id, "kind": layout.id_kind(m.id) or "other", "job": m.job,
                       "bytes": m.total_bytes, "rows": m.total_rows, "tables": len(m.tables),
                       "database_bytes": m.database_bytes,
                       "seconds": (finished - started).total_seconds() if finished else 0.0,
                       "flagged": bool(integrity.dropped_tables(m))})
    return sorted(points, key=lambda p: p["at"])


def kind_figures(points: list[dict]) -> list[KindFigures]:
    by_kind: dict[str, list[dict]] = {}
    for p in points:
        by_kind.setdefault(p["kind"], []).append(p)
    found = []
    for kind, group in sorted(by_kind.items()):
        sizes, seconds = [p["bytes"] for p in group], [p["seconds"] for p in group]
        found.append(KindFigures(kind, len(group), min(sizes), max(sizes), group[-1]["bytes"], min(seconds),
                                 statistics.median(seconds), max(seconds), group[-1]["tables"], group[-1]["rows"]))
    return found


def growth_slope(points: list[dict]) -> float | None:
    """Database bytes per day, least squares over the points that record the size."""
    sized = [(p["at"], p["database_bytes"]) for p in points if p["database_bytes"] > 0]
    if len(sized) < 2 or sized[-1][0] - sized[0][0] < MIN_PROJECTION_SPAN:
        return None
    origin = sized[0][0]
    xs = [(t - origin).total_seconds() / 86400 for t, _ in sized]
    ys = [float(b) for _, b in sized]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else None


def projections(history, points: list[dict], slope: float | None) -> list[Projection]:
    """When the database reaches each database's storage, where the storage is known."""
    if not history.storage_gb:
        return [Projection("fac-db", None, note="skipped: the storage of the databases is not configured")]
    sized = [p for p in points if p["database_bytes"] > 0]
    found = []
    for binding, storage in sorted(history.storage_gb.items()):
        if not sized:
            found.append(Projection(binding, storage, note="no backup in the period records the database's size"))
        elif sized[-1]["database_bytes"] >= space.storage_bytes(storage):
            found.append(Projection(binding, storage, sized[-1]["at"], "already at or above its storage"))
        elif slope is None or slope <= 0:
            found.append(Projection(binding, storage, note="not growing over the period" if slope is not None
                                    else "too few sized backups over at least a day to project"))
        else:
            days = (space.storage_bytes(storage) - sized[-1]["database_bytes"]) / slope
            found.append(Projection(binding, storage, sized[-1]["at"] + timedelta(days=days)))
    return found


def drills(history) -> tuple[list[dict], dict | None]:
    """Every drill of the period (journal first, then verified.json records it lacks), and the
    newest backup a drill proved (whenever the drill ran)."""
    found, seen = [], set()
    for r in history.runs:
        if r.get("job") != "verify_backup" or r.get("kind") != "run":
            continue
        figures = next((s.get("figures", {}) for s in r.get("steps", []) if s.get("step") == "verify_backup"), {})
        backup_id = figures.get("backup_id") or (r.get("args") or [""])[0]
        seen.add(backup_id)
        found.append({"at": run_time(r), "backup_id": backup_id or "(none chosen)", "outcome": r.get("outcome"),
                      "error": (r.get("error") or {}).get("message", ""), "seconds": r.get("seconds", 0.0),
                      "restore_seconds": figures.get("restore_seconds"), "bytes": figures.get("bytes"),
                      "rows": figures.get("rows"), "restored_tables": figures.get("restored_tables"),
                      "source": "journal"})
    for backup_id, record in history.verified.items():
        at = parse_time(record.get("verified_at", ""))
        if backup_id not in seen and in_period(history, at):
            found.append({"at": at, "backup_id": backup_id, "outcome": "success", "error": "", "seconds": None,
                          "restore_seconds": None, "bytes": record.get("bytes"), "rows": None,
                          "restored_tables": record.get("restored_tables"), "source": "verified.json"})
    started = {m.id: parse_time(m.started_at) for m in history.backups}
    proved = [(started.get(i), i) for i in history.verified if started.get(i)]
    proved += [(started.get(d["backup_id"]), d["backup_id"]) for d in found
               if d["outcome"] == "success" and started.get(d["backup_id"])]
    last = max(proved, default=None)
    last_proved = None if last is None else {"backup_id": last[1], "backup_started_at": last[0],
                                              "days": (history.now - last[0]).total_seconds() / 86400}
    return sorted(found, key=lambda d: d["at"] or history.since), last_proved


def restores(history) -> tuple[list[dict], int]:
    """Restores performed in the period (journal, then pre-restore manifests it lacks) and how
    many restore requests were refused."""
    found, runs, refused = [], set(), 0
    for r in history.runs:
        if r.get("job") not in RESTORE_JOBS:
            continue
        if r.get("kind") == "rejected":
            refused += 1
            continue
        figures = {k: v for s in r.get("steps", []) for k, v in (s.get("figures") or {}).items()}
        runs.add(r.get("run_id"))
        confirmation = r.get("confirmation") or {}
        found.append({"at": run_time(r), "job": r["job"], "source": (r.get("args") or ["fac-snapshot-db"])[0],
                      "space": confirmation.get("space", r.get("space", "")),
                      "binding": confirmation.get("binding", ""),
                      "confirmation": confirmation.get("confirmation", ""),
                      "pre_restore_backup": figures.get("pre_restore_backup", ""), "seconds": r.get("seconds"),
                      "outcome": r.get("outcome"), "error": (r.get("error") or {}).get("message", ""),
                      "origin": "journal"})
    for m in history.backups:
        before = m.before_restore or {}
        if before and before.get("run_id") not in runs and in_period(history, parse_time(m.started_at)):
            found.append({"at": parse_time(m.started_at), "job": "restore", "source": before.get("source", ""),
                          "space": before.get("space", ""), "binding": before.get("binding", ""),
                          "confirmation": before.get("confirmation", ""), "pre_restore_backup": m.id,
                          "seconds": None, "outcome": "not journaled", "error": "",
                          "origin": "pre-restore manifest"})
    return sorted(found, key=lambda d: d["at"]), refused


def media_figures(history) -> dict:
    """Mirrored in the period (media_sync steps of the journal), kept versions, and the newest backup's media."""
    copied = copied_bytes = kept = syncs = 0
    for r in history.runs:
        for step in r.get("steps", []):
            if step.get("step") == "media_sync" and r.get("kind") == "run":
                f = step.get("figures") or {}
                syncs += 1
                copied += int(f.get("copied", 0) or 0)
                copied_bytes += int(f.get("copied_bytes", 0) or 0)
                kept += int(f.get("kept", 0) or 0)
    return {"syncs": syncs, "copied": copied, "copied_bytes": copied_bytes, "kept": kept,
            "versions": dict(history.media_versions), "newest": dict(history.media)}


def integrity_figures(history) -> tuple[list[dict], list[dict], int]:
    """(flagged backups, legitimate purges, comparisons made) for backups started in the period."""
    present = {m.id for m in history.backups}
    flagged, purges, compared = [], [], 0
    for m in sorted(history.backups, key=lambda m: m.started_at):
        started = parse_time(m.started_at)
        if not in_period(history, started) or not m.integrity:
            continue
        compared += 1
        baseline = m.integrity.get("baseline", "")
        entry = {"backup_id": m.id, "at": started, "baseline": baseline, "baseline_kept": baseline in present,
                 "baseline_before_restore": bool(m.integrity.get("baseline_before_restore")),
                 "tables": list(m.integrity.get("dropped") or []), "allowed": list(m.integrity.get("allowed") or []),
                 "acknowledged": history.acknowledged.get(m.id)}
        if entry["tables"]:
            base = next((b for b in history.backups if b.id == baseline), None)
            base_at = parse_time(base.started_at) if base else None
            entry["baseline_expires"] = (base_at + timedelta(days=history.bucket_expiry_days)
                                         if base_at and history.bucket_expiry_days else None)
            flagged.append(entry)
        if entry["allowed"]:
            purges.append(entry)
    return flagged, purges, compared


def journal_reach(history) -> str:
    """Which keep period applies to the journal: the retention's, or the bucket's shorter expiry."""
    keep = history.journal_keep_days
    if history.bucket_expiry_days and history.bucket_expiry_days < keep:
        return (f"the bucket's expiry applies: {history.bucket_expiry_text}, so the journal reaches back "
                f"{history.bucket_expiry_days} days (the retention would keep it {keep} days)")
    return f"the retention keeps journal records {keep} days (FAC_BACKUP_JOURNAL_KEEP_DAYS); " \
           f"bucket expiry: {history.bucket_expiry_text}"


def failed_runs(history) -> list[dict]:
    return [{"at": run_time(r), "job": r.get("job"), "outcome": r.get("outcome"), "trigger": r.get("trigger"),
             "run_id": r.get("run_id"), "error": (r.get("error") or {}).get("message", ""),
             "hint": (r.get("error") or {}).get("hint", "")}
            for r in history.runs if r.get("outcome") in ("failure", "aborted", "rejected")]


def build_report(history) -> Report:
    """Every figure of the report of `history`'s period."""
    slots = tuple(s for job in SLOTTED_JOBS for s in slot_results(history, job))
    rpo, rpo_hours = recovery_point(history)
    points = backup_points(history)
    slope = growth_slope(points)
    found_drills, last = drills(history)
    found_restores, refused = restores(history)
    flagged, purges, compared = integrity_figures(history)
    notes = []
    if not history.runs:
        notes.append("the journal holds no run in this period: failed and missed runs cannot be told apart")
    return Report(history, tuple(sorted(slots, key=lambda s: s.at)), rpo, rpo_hours, tuple(kind_figures(points)),
                  tuple(points), tuple(failed_runs(history)), slope, tuple(projections(history, points, slope)),
                  tuple(found_drills), last, tuple(found_restores), refused, media_figures(history),
                  tuple(flagged), tuple(purges), compared, journal_reach(history), tuple(notes))
