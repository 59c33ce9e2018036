"""The contingency report end to end: real PostgreSQL, moto, the run journal, and a real headless
Chromium reading the figures a reader sees (rendered text, not the HTML source)."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from service import catalog, jobs, journal, layout
from service.daemon import CatalogWatcher
from service.metrics import Metrics
from service.retention import decide
from service.tasks.prune import read_records
from tests.fakes import make_pg_bin
from tests.integration.test_drill import scratch  # noqa: F401 - the drill's scratch database fixture
from tests.tools import require_playwright_driver, require_tool

pytestmark = pytest.mark.integration

# Chromium as FACTS.md says it must run here: as root, headless, and without its background traffic.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
FAILS_ON_FINDINGS = """case "$*" in
  *'--table="public"."dissemination_finding"'*) echo "simulated pg_dump failure" >&2; exit 1 ;;
  *) exec "$REAL" "$@" ;;
esac"""


def open_in_chromium(path):
    """(cards: label -> value, sections: title -> rendered text, every URL the page requested)."""
    from playwright.sync_api import sync_playwright

    browser = require_tool("chromium")
    require_playwright_driver()
    requested: list[str] = []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=browser, headless=True,
                                                        args=CHROMIUM_ARGS)
        try:
            page = context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(path.as_uri(), wait_until="load")
            cards = {card.locator("b").inner_text(): card.locator("span").inner_text()
                     for card in page.locator(".card").all()}
            sections = {s.locator("h2").inner_text(): s.inner_text() for s in page.locator("section").all()}
        finally:
            context.close()
    return cards, sections, requested


def ok(result):
    assert result.outcome == "success", result.error
    return result


def backup_id(result) -> str:
    return next(s.figures["backup_id"] for s in result.steps if s.name == "db_to_s3")


def rows_dropped_gauge(box) -> float:
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    CatalogWatcher(box.store(), metrics).first_listing()
    return metrics.registry.get_sample_value("fac_backup_rows_dropped_tables")


def test_a_month_of_evidence_reads_right_in_a_real_browser(sample_db, scratch, tmp_path):  # noqa: F811
    """Backups, a failed daily run, a missed slot, a drill, a legitimate purge, a mass deletion, a restore
    and a refused one make a report whose rendered figures say exactly that, fetched from nowhere."""
    box = sample_db
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    hour, minute = start.hour, start.minute
    # UTC (no DST): slots at start - 2 h (nothing runs: missed) and at start (the runs below).
    box.config(FAC_BACKUP_TIMEZONE="UTC", FAC_BACKUP_SCHEDULED_CRON=f"{minute} {(hour - 2) % 24},{hour} * * *",
               FAC_BACKUP_DAILY_CRON=f"{minute} {hour} * * *", FAC_BACKUP_VERIFY_CRON=f"{minute} {hour} * * *")
    media = box.media_store()
    media.put_bytes("singleauditreport/2026-1.pdf", b"%PDF-1 report")
    media.put_bytes("excel/2026-1--federal-awards.xlsx", b"workbook")
    with box.connect() as conn:
        conn.execute("CREATE TABLE public.django_session (session_key text PRIMARY KEY, expire_date timestamptz)")
        conn.execute("INSERT INTO public.django_session SELECT 's' || i, now() FROM generate_series(1, 40) i")
    first = ok(box.run("scheduled_backup", trigger="scheduler"))

    box.extra_env["FAC_BACKUP_PG_BIN"] = str(make_pg_bin(tmp_path / "bin", pg_dump=FAILS_ON_FINDINGS))
    failed = box.run("daily_backup", trigger="scheduler")
    del box.extra_env["FAC_BACKUP_PG_BIN"]
    assert failed.outcome == "failure" and "public.dissemination_finding" in failed.error.message

    with box.connect() as conn:  # the application's session clean-up: allowed to shrink
        conn.execute("DELETE FROM public.django_session")
    purged = ok(box.run("scheduled_backup", trigger="scheduler"))
    drill = ok(box.run("verify_backup", trigger="scheduler"))
    assert drill.steps[0].figures["restored_tables"] > 0 and drill.steps[0].figures["restore_seconds"] > 0

    with box.connect() as conn:  # a buggy admin action
        findings = conn.execute("SELECT count(*) FROM public.dissemination_finding").fetchone()[0]
        conn.execute("DELETE FROM public.dissemination_finding")
    damaged = ok(box.run("scheduled_backup", trigger="scheduler"))
    flag = damaged.steps[1].figures["rows_dropped"]
    assert flag == [{"table": "public.dissemination_finding", "before": findings, "after": 0, "percent": 100.0}]
    assert rows_dropped_gauge(box) == 1
    shown = box.cli("show", backup_id(damaged))
    assert shown.returncode == 0, shown.stderr
    assert f"public.dissemination_finding: {findings:,} -> 0" in shown.stdout and "NOT acknowledged" in shown.stdout

    refused = box.run("s3_restore", backup_id(purged))  # no --confirm
    assert refused.exit_code == 3
    restored = ok(box.run("s3_restore", backup_id(purged), options={"confirm": "fac-db"}))
    pre_restore = restored.steps[0].figures["pre_restore_backup"]
    assert rows_dropped_gauge(box) == 0  # the pre-restore backup compared clean with the damaged one

    out = tmp_path / "report.html"
    until = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    made = box.cli("report", "--since", (start - timedelta(hours=2)).isoformat(), "--until", until,
                   "--out", str(out), "--upload")
    assert made.returncode == 0, made.stderr
    assert "Scheduled slots kept" in made.stdout and "2 of 4 (1 missed, 1 failed)" in made.stdout
    stored = [o.key for o in box.store().list_objects(layout.JOURNAL_REPORTS_PREFIX)]
    assert len(stored) == 1 and stored[0] in made.stdout

    cards, sections, requested = open_in_chromium(out)
    assert requested == [out.as_uri()], f"the page fetched something: {requested}"
    assert cards["Scheduled slots kept"] == "2 of 4 (1 missed, 1 failed)"
    assert cards["Backups made"] == "4 (1 pre-restore, 3 scheduled)"
    assert cards["Drills"] == "1 passed, 0 failed"
    assert cards["Last proved backup"].startswith(f"{backup_id(purged)}, 0.0 days old")
    assert cards["Recovery time demonstrated"].endswith(f"({backup_id(purged)})")
    assert cards["Restores performed"] == "1 (1 refused requests)"
    assert cards["Tables flagged shrunk"] == "1 backup(s), 1 not acknowledged"
    recovery = sections["Recovery point achieved"]
    assert "daily_backup\tfailed\tbackup daily-" in recovery and "public.dissemination_finding" in recovery
    assert "scheduled_backup\tmissed\tno run recorded" in recovery
    restores = sections["Restores performed"]
    assert f"s3_restore\t{backup_id(purged)}\t-\tfac-db\tfac-db\t{pre_restore}" in restores and "success" in restores
    data = sections["The data itself: tables that shrank"]
    assert f"{backup_id(damaged)}\t{backup_id(purged)} (kept)" in data
    assert f"public.dissemination_finding: {findings:,} -> 0 (-100.0%)" in data and "NOT acknowledged" in data
    assert f"{backup_id(purged)}\tpublic.django_session: 40 -> 0" in data
    assert "public.dissemination_finding" in sections["Failed and refused runs (every job)"]
    assert f"{backup_id(purged)}\tsuccess" in sections["Drills (restore tests)"]

    # The retention keeps the damaged backup and its baseline until the drop is acknowledged.
    records, _ = read_records(box.store())
    held = {d.record.id: d.reason for d in decide(records, datetime.now(UTC), box.config().settings.retention)
            if d.held}
    assert set(held) == {backup_id(purged), backup_id(damaged)}
    ok(box.run("acknowledge_drop", backup_id(damaged), "the deletion was tested on purpose"))
    records, _ = read_records(box.store())
    assert not any(d.held for d in decide(records, datetime.now(UTC), box.config().settings.retention))
    ack = json.loads(box.store().get_bytes(layout.acknowledged_key(backup_id(damaged))))
    assert ack["note"] == "the deletion was tested on purpose" and ack["baseline"] == backup_id(purged)

    # Every run left its record, however it ended.
    outcomes = [(r["job"], r["outcome"]) for r in journal.read_records(box.store(), start, datetime.now(UTC))]
    assert outcomes == [("scheduled_backup", "success"), ("daily_backup", "failure"),
                        ("scheduled_backup", "success"), ("verify_backup", "success"),
                        ("scheduled_backup", "success"), ("s3_restore", "rejected"), ("s3_restore", "success"),
                        ("acknowledge_drop", "success")]
    assert catalog.read_manifest(box.store(), backup_id(first)).integrity == {}
