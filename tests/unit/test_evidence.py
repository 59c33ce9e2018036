"""The contingency report's figures against hand-made histories (service.evidence, evidence_schedule)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from service import catalog, report_text
from service.evidence import build_report
from service.history import History
from service.report_html import render_html
from service.report_text import render_text
from service.space import GIB

PACIFIC = ZoneInfo("America/Los_Angeles")
SCHEDULES = {"scheduled_backup": "0 6-18/2 * * *", "daily_backup": "0 20 * * *", "verify_backup": "0 3 * * 0"}
HOUR = 3600


def at(day: str, hm: str = "00:00", tz=PACIFIC) -> datetime:
    return datetime.fromisoformat(f"{day}T{hm}").replace(tzinfo=tz)


def manifest(backup_id: str, started: datetime, *, seconds: int = 60, rows: dict | None = None,
             integrity: dict | None = None, before_restore: dict | None = None, size: int = 0) -> catalog.Manifest:
    rows = rows or {"public.dissemination_general": 1000}
    tables = tuple(catalog.TableEntry(*name.split("."), f"backups/{backup_id}/{name.replace('.', '-')}.dump",
                                      100, "0" * 64, n) for name, n in rows.items())
    return catalog.Manifest(backup_id, "scheduled_backup", started.isoformat(),
                            (started + timedelta(seconds=seconds)).isoformat(), "15.4", "15.4", "fac", tables,
                            integrity=integrity or {}, before_restore=before_restore or {}, database_bytes=size)


def run(job: str, started: datetime, outcome: str = "success", *, trigger: str = "scheduler", kind: str = "run",
        error: str = "", reason: str = "", steps=(), run_id: str | None = None, **extra) -> dict:
    return {"job": job, "kind": kind, "trigger": trigger, "started_at": started.isoformat(), "outcome": outcome,
            "run_id": run_id or f"{job}-{started:%d%H%M}", "seconds": 30.0, "reason": reason,
            "error": {"message": error, "hint": ""} if error else None, "steps": list(steps), "args": [], **extra}


def day_of_backups(day: str, *, skip: tuple[str, ...] = ()) -> list[catalog.Manifest]:
    """Every scheduled slot of `day` (but those in `skip`) and its daily, each a few seconds late."""
    found = []
    for hm in ("06:00", "08:00", "10:00", "12:00", "14:00", "16:00", "18:00"):
        if hm not in skip:
            found.append(manifest(f"scheduled-{day}-{hm[:2]}", at(day, hm) + timedelta(seconds=5)))
    if "20:00" not in skip:
        found.append(manifest(f"daily-{day}", at(day, "20:00") + timedelta(seconds=5)))
    return found


def history(since: datetime, until: datetime, *, backups=(), runs=(), now=None, **extra) -> History:
    return History(since, until, now or until, PACIFIC, dict(SCHEDULES), tuple(runs), tuple(backups), **extra)


def test_a_day_kept_to_schedule_shows_every_slot_and_the_promise_kept():
    """Eight slots, eight backups: nothing missed; the longest gap in working hours is the 2 h the schedule allows,
    and overall the 10 h from the daily to the morning's first backup."""
    backups = day_of_backups("2026-06-03") + day_of_backups("2026-06-04")
    report = build_report(history(at("2026-06-04"), at("2026-06-05"), backups=backups))
    assert report.slot_counts == {"ok": 8}
    assert report.rpo_in_hours.seconds == 2 * HOUR and report.rpo_in_hours.promise_seconds == 2 * HOUR
    assert report.rpo.seconds == 10 * HOUR and report.rpo.promise_seconds == 10 * HOUR
    assert report.rpo.start == at("2026-06-03", "20:00") + timedelta(seconds=5)


def test_a_missed_slot_is_named_and_widens_the_recovery_point():
    """No backup and no journal record at 10:00: the slot is missed (the daemon was down) and the gap
    in working hours grows to 4 h."""
    backups = day_of_backups("2026-06-03") + day_of_backups("2026-06-04", skip=("10:00",))
    report = build_report(history(at("2026-06-04"), at("2026-06-05"), backups=backups))
    assert [(s.at, s.status) for s in report.missed_or_failed] == [(at("2026-06-04", "10:00"), "missed")]
    assert "daemon was not running" in report.missed_or_failed[0].reason
    assert report.rpo_in_hours.seconds == 4 * HOUR
    assert report.rpo_in_hours.start == at("2026-06-04", "08:00") + timedelta(seconds=5)


def test_the_day_s_last_slot_failing_shows_in_the_scheduled_hours():
    """No 18:00 backup: in scheduled hours (06:00 to 20:00) the gap from 16:00 to the daily is 4 h."""
    backups = day_of_backups("2026-06-03") + day_of_backups("2026-06-04", skip=("18:00",))
    report = build_report(history(at("2026-06-04"), at("2026-06-05"), backups=backups))
    assert report.rpo_in_hours.seconds == 4 * HOUR - 5
    assert report.rpo_in_hours.start == at("2026-06-04", "16:00") + timedelta(seconds=5)


def test_a_failed_run_and_a_busy_lock_give_their_reasons():
    """The journal explains the slots without a backup: the error with its hint, and the skip's reason."""
    backups = day_of_backups("2026-06-04", skip=("12:00", "14:00"))
    runs = [run("scheduled_backup", at("2026-06-04", "12:00"), "failure", error="backup failed at table x"),
            run("scheduled_backup", at("2026-06-04", "14:00"), "skipped", reason="lock_busy")]
    report = build_report(history(at("2026-06-04"), at("2026-06-05"), backups=backups, runs=runs))
    assert [(s.at.hour, s.status, s.reason) for s in report.missed_or_failed] == [
        (12, "failed", "backup failed at table x"),
        (14, "skipped", "skipped: another run held the service lock")]
    assert [f["error"] for f in report.failures] == ["backup failed at table x"]
    text = render_text(report)
    assert "scheduled_backup 2026-06-04 12:00 PDT: failed: backup failed at table x" in text


def test_a_late_success_keeps_its_slot():
    """A run that failed and a catch-up that succeeded in the same window: the slot was kept, late."""
    backups = [manifest("scheduled-06-04-10", at("2026-06-04", "11:30"))]
    runs = [run("scheduled_backup", at("2026-06-04", "10:00"), "failure", error="boom")]
    report = build_report(history(at("2026-06-04", "10:00"), at("2026-06-04", "12:00"), backups=backups, runs=runs))
    assert [(s.at.hour, s.status) for s in report.slots] == [(10, "ok")]


def test_the_spring_forward_day_has_its_slots_and_no_phantom_gap():
    """2026-03-08, America/Los_Angeles (02:00 -> 03:00): seven working-hour slots, the 6:00 one in PDT; a
    backup at each slot gives a 2 h gap in hours; the night into it is an hour shorter (9 h), the night out
    of it the usual 10 h the schedule allows."""
    backups = day_of_backups("2026-03-07") + day_of_backups("2026-03-08")
    report = build_report(history(at("2026-03-08"), at("2026-03-09"), backups=backups))
    scheduled = [s for s in report.slots if s.job == "scheduled_backup"]
    assert len(scheduled) == 7 and all(s.status == "ok" for s in scheduled)
    assert scheduled[0].at.utcoffset() == timedelta(hours=-7)
    assert report.rpo_in_hours.seconds == 2 * HOUR
    assert report.rpo.seconds == 9 * HOUR and report.rpo.promise_seconds == 10 * HOUR


def test_the_fall_back_day_counts_each_slot_once():
    """2026-11-01 (02:00 -> 01:00): the night before is 11 h, each slot is counted once."""
    backups = day_of_backups("2026-10-31") + day_of_backups("2026-11-01")
    report = build_report(history(at("2026-11-01"), at("2026-11-02"), backups=backups))
    assert len([s for s in report.slots if s.job == "scheduled_backup"]) == 7
    assert report.rpo.seconds == 11 * HOUR


def test_an_empty_period_says_so_and_renders():
    """No backup, no run: nothing to measure from, every due slot missed, a note that the journal is empty."""
    report = build_report(history(at("2026-06-04"), at("2026-06-05")))
    assert report.rpo.seconds is None and report.points == () and report.kinds == ()
    assert report.slot_counts == {"missed": 8}
    assert report.notes and "journal holds no run" in report.notes[0]
    assert "None in this period." in render_html(report)


def test_an_open_gap_runs_to_the_end_of_the_period():
    """Backups stopped after 06:00: the longest gap runs to the period's end, marked open."""
    backups = day_of_backups("2026-06-03") + [manifest("scheduled-06-04-06", at("2026-06-04", "06:00"))]
    report = build_report(history(at("2026-06-04"), at("2026-06-04", "18:30"), backups=backups))
    assert report.rpo.open_end and report.rpo.seconds == 12.5 * HOUR
    assert report.rpo_in_hours.seconds == 12.5 * HOUR  # the scheduled hours run to 20:00, the period to 18:30


def test_slots_not_yet_due_are_not_counted_missed():
    """A slot less than an hour old with no record may still be running."""
    backups = day_of_backups("2026-06-04", skip=("10:00", "12:00", "14:00", "16:00", "18:00", "20:00"))
    report = build_report(history(at("2026-06-04"), at("2026-06-05"), backups=backups,
                                  now=at("2026-06-04", "10:30")))
    assert [s.at.hour for s in report.slots if s.job == "scheduled_backup"] == [6, 8]


def drill_run(started: datetime, outcome: str, backup_id: str, **figures) -> dict:
    return run("verify_backup", started, outcome, error="" if outcome == "success" else "the dump is altered",
               steps=[{"step": "verify_backup", "outcome": outcome, "figures": {"backup_id": backup_id, **figures}}])


def test_drills_show_each_result_and_the_recovery_time_demonstrated():
    """A passed drill, then a failed one of a newer backup: both listed; the last proved backup is the older
    one (a failed drill proves nothing), with its age and the restore time measured at its size."""
    backups = [manifest("daily-05-30", at("2026-05-30", "20:00")), manifest("daily-06-06", at("2026-06-06", "20:00"))]
    runs = [drill_run(at("2026-05-31", "03:00"), "success", "daily-05-30", restore_seconds=1260.0, bytes=5 * GIB),
            drill_run(at("2026-06-07", "03:00"), "failure", "daily-06-06")]
    report = build_report(history(at("2026-05-30"), at("2026-06-09"), backups=backups, runs=runs))
    assert [(d["backup_id"], d["outcome"]) for d in report.drills] == [("daily-05-30", "success"),
                                                                       ("daily-06-06", "failure")]
    assert report.last_proved["backup_id"] == "daily-05-30"
    assert report.last_proved["days"] == 9 + 4 / 24  # now (the period's end) less the backup's start
    drills = [s for s in report.slots if s.job == "verify_backup"]
    assert [(s.at.day, s.status) for s in drills] == [(31, "ok"), (7, "failed")]
    headline = dict(report_text.headline(report))
    assert headline["Drills"] == "1 passed, 1 failed"
    assert headline["Recovery time demonstrated"] == "21 min for 5.0 GB (daily-05-30)"


def test_a_drill_known_only_from_its_verified_record_counts():
    """A drill run before the journal existed (verified.json only) proves its backup."""
    backups = [manifest("daily-06-03", at("2026-06-03", "20:00"))]
    report = build_report(history(at("2026-06-01"), at("2026-06-05"), backups=backups,
                                  verified={"daily-06-03": {"verified_at": at("2026-06-04", "03:00").isoformat()}}))
    assert [d["source"] for d in report.drills] == ["verified.json"]
    assert report.last_proved["backup_id"] == "daily-06-03"


def test_a_restore_shows_what_was_overwritten_and_how():
    """The journal's restore: source, space, binding, confirmation, pre-restore backup, outcome; a refused
    request is counted; a pre-restore manifest the journal lacks still shows."""
    confirmation = {"space": "production", "binding": "fac-db", "confirmation": "production/fac-db"}
    runs = [run("s3_restore", at("2026-06-04", "13:00"), trigger="cli", args=["daily-06-03"],
                confirmation=confirmation,
                steps=[{"step": "s3_restore", "figures": {"pre_restore_backup": "pre-restore-202606041300"}}]),
            run("s3_restore", at("2026-06-04", "12:55"), "rejected", trigger="cli", kind="rejected")]
    old = manifest("pre-restore-202606020900", at("2026-06-02", "09:00"),
                   before_restore={**confirmation, "source": "daily-06-01", "run_id": "gone"})
    report = build_report(history(at("2026-06-01"), at("2026-06-05"), backups=[old], runs=runs))
    assert [(r["source"], r["pre_restore_backup"], r["outcome"], r["origin"]) for r in report.restores] == [
        ("daily-06-01", "pre-restore-202606020900", "not journaled", "pre-restore manifest"),
        ("daily-06-03", "pre-restore-202606041300", "success", "journal")]
    assert report.restores[1]["confirmation"] == "production/fac-db" and report.refused_restores == 1


def drop(backup_id: str, started: datetime, baseline: str, dropped=(), allowed=()) -> catalog.Manifest:
    return manifest(backup_id, started, integrity={"baseline": baseline, "tables_compared": 2,
                                                   "threshold_percent": 0.1, "dropped": list(dropped),
                                                   "allowed": list(allowed)})


def test_a_flagged_drop_names_its_tables_baseline_and_state():
    """A mass deletion: the flagged backup, its kept baseline and the day the bucket deletes it, unacknowledged."""
    lost = {"table": "public.dissemination_finding", "before": 5000, "after": 0, "percent": 100.0}
    backups = [manifest("scheduled-06-04-08", at("2026-06-04", "08:00")),
               drop("scheduled-06-04-10", at("2026-06-04", "10:00"), "scheduled-06-04-08", dropped=[lost])]
    report = build_report(history(at("2026-06-04"), at("2026-06-05"), backups=backups, bucket_expiry_days=60))
    (flag,) = report.flagged
    assert flag["baseline"] == "scheduled-06-04-08" and flag["baseline_kept"] and flag["acknowledged"] is None
    assert flag["baseline_expires"] == at("2026-08-03", "08:00")
    assert report.compared == 2 - 1 and report.purges == ()
    html = render_html(report)
    assert "public.dissemination_finding: 5,000 -&gt; 0 (-100.0%)" in html and "NOT acknowledged" in html


def test_a_legitimate_purge_is_shown_apart_and_never_flagged():
    """Sessions cleared (a table allowed to shrink): a purge, not a flag; an acknowledged flag says so."""
    purge = {"table": "public.django_session", "before": 900, "after": 12, "percent": 98.67}
    backups = [drop("daily-06-04", at("2026-06-04", "20:00"), "scheduled-06-04-18", allowed=[purge]),
               drop("daily-06-05", at("2026-06-05", "20:00"), "daily-06-04",
                    dropped=[{"table": "public.audit_access", "before": 10, "after": 2, "percent": 80.0}])]
    report = build_report(history(at("2026-06-04"), at("2026-06-06"), backups=backups,
                                  acknowledged={"daily-06-05": {"acknowledged_at": "2026-06-06", "note": "cleanup"}}))
    assert [p["backup_id"] for p in report.purges] == ["daily-06-04"]
    assert [f["backup_id"] for f in report.flagged] == ["daily-06-05"]
    assert report.flagged[0]["acknowledged"]["note"] == "cleanup"
    assert "0 not acknowledged" in render_text(report)


def test_growth_projects_when_the_database_reaches_its_storage():
    """10 GB a day, 170 GB on the 3rd: fac-db's 200 GB are reached three days later."""
    backups = [manifest(f"daily-06-0{d}", at(f"2026-06-0{d}", "20:00"), size=(140 + 10 * d) * GIB)
               for d in (1, 2, 3)]
    report = build_report(history(at("2026-06-01"), at("2026-06-04"), backups=backups,
                                  storage_gb={"fac-db": 200.0, "fac-snapshot-db": 75.0}))
    assert round(report.growth_per_day) == 10 * GIB
    by = {p.binding: p for p in report.projections}
    assert by["fac-db"].reaches == at("2026-06-06", "20:00")
    assert by["fac-snapshot-db"].note == "already at or above its storage"


def test_storage_counts_in_the_units_of_the_settings():
    """Production's snapshot: 75 GB of storage (GB as the settings and the broker count them, 1024^3
    bytes) and 70 GB of data growing 1 GB a day has room for 5 more days, not 'already at its storage'
    (which a 10^9-byte GB would say: 70 x 1024^3 bytes is more than 75 x 10^9)."""
    backups = [manifest(f"daily-06-0{d}", at(f"2026-06-0{d}", "20:00"), size=(67 + d) * GIB) for d in (1, 2, 3)]
    report = build_report(history(at("2026-06-01"), at("2026-06-04"), backups=backups,
                                  storage_gb={"fac-snapshot-db": 75.0}))
    (projection,) = report.projections
    assert projection.note == "" and projection.reaches == at("2026-06-08", "20:00"), projection
    assert report_text.fmt_bytes(70 * GIB) == "70.0 GB"


def test_without_known_storage_the_projection_is_skipped_cleanly():
    """No storage settings: one line says the projection is skipped, nothing is guessed."""
    backups = [manifest(f"daily-06-0{d}", at(f"2026-06-0{d}", "20:00"), size=d * GIB) for d in (1, 2, 3)]
    report = build_report(history(at("2026-06-01"), at("2026-06-04"), backups=backups))
    assert [(p.binding, p.reaches, p.note) for p in report.projections] == [
        ("fac-db", None, "skipped: the storage of the databases is not configured")]
    assert "storage projection of fac-db: skipped" in render_text(report)


def test_media_figures_add_up_the_syncs_of_the_period():
    """Objects and bytes mirrored by every media_sync step, the versions kept, and the newest backup's media."""
    step = {"step": "media_sync", "figures": {"copied": 3, "copied_bytes": 3000, "kept": 1}}
    runs = [run("scheduled_backup", at("2026-06-04", h), steps=[step]) for h in ("06:00", "08:00")]
    report = build_report(history(at("2026-06-04"), at("2026-06-05"), runs=runs,
                                  media_versions={"objects": 4, "bytes": 400},
                                  media={"backup_id": "x", "objects": 10, "bytes": 99, "from_versions": 1,
                                         "moment": "2026-06-04T08:01:00+00:00"}))
    assert {k: report.media[k] for k in ("syncs", "copied", "copied_bytes", "kept")} == \
        {"syncs": 2, "copied": 6, "copied_bytes": 6000, "kept": 2}
    assert "a restore of x brings back" in render_html(report)


def test_the_journal_keep_period_says_which_applies():
    """One year by the retention, unless the bucket's 60-day expiry deletes records first."""
    report = build_report(history(at("2026-06-04"), at("2026-06-05"), bucket_expiry_days=60,
                                  bucket_expiry_text="lifecycle rule 'x'"))
    assert report.journal_reach.startswith("the bucket's expiry applies") and "60 days" in report.journal_reach
    report = build_report(history(at("2026-06-04"), at("2026-06-05")))
    assert report.journal_reach.startswith("the retention keeps journal records 365 days")


def test_the_html_is_self_contained_and_escapes_what_it_shows():
    """No script, no external reference; an error text with markup is shown, not interpreted."""
    runs = [run("scheduled_backup", at("2026-06-04", "06:00"), "failure", error="<script>x</script> failed")]
    html = render_html(build_report(history(at("2026-06-04"), at("2026-06-05"), runs=runs)))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert "<link" not in html and "@import" not in html and "url(" not in html
