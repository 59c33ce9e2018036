"""The integrity watch: row counts against the previous backup, the flag, its hold on the retention,
its notification line, and what clears it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from service import catalog, integrity, jobs, layout, notify
from service.config import DEFAULT_SHRINK_ALLOWED, load_settings
from service.daemon import CatalogWatcher
from service.metrics import Metrics
from service.retention import COMPLETE, Record, RetentionPolicy, decide
from service.storage import MemoryObjectStore
from tests.unit.test_evidence import manifest

NOW = datetime(2026, 6, 30, 12, tzinfo=UTC)


def entries(**rows):
    return tuple(catalog.TableEntry("public", name, f"k/{name}", 1, "0" * 64, n) for name, n in rows.items())


def compare(before: dict, after: dict, threshold: float = 0.1, allowed=DEFAULT_SHRINK_ALLOWED) -> dict:
    previous = manifest("scheduled-06-04-08", NOW, rows={f"public.{k}": v for k, v in before.items()})
    return integrity.compare_tables(previous, entries(**after), allowed=allowed, threshold_percent=threshold)


def test_a_mass_deletion_is_flagged_with_before_and_after():
    """Findings emptied, audits cut by a tenth: both flagged, with counts and the share lost."""
    found = compare({"dissemination_finding": 5000, "dissemination_general": 1000, "lookup": 7},
                    {"dissemination_finding": 0, "dissemination_general": 900, "lookup": 7})
    assert found["baseline"] == "scheduled-06-04-08" and found["tables_compared"] == 3
    assert found["dropped"] == [
        {"table": "public.dissemination_finding", "before": 5000, "after": 0, "percent": 100.0},
        {"table": "public.dissemination_general", "before": 1000, "after": 900, "percent": 10.0}]


def test_small_losses_under_the_threshold_pass_and_zero_means_any_loss():
    """0.05% of a large table is under the default 0.1%; with a threshold of 0 a single row is flagged;
    growth is never flagged."""
    assert compare({"dissemination_federalaward": 100_000}, {"dissemination_federalaward": 99_950})["dropped"] == []
    assert compare({"audit_audit": 10}, {"audit_audit": 9}, threshold=0)["dropped"][0]["after"] == 9
    assert compare({"audit_audit": 10}, {"audit_audit": 11}, threshold=0)["dropped"] == []


def test_a_vanished_table_is_flagged_as_gone():
    """A table the previous backup held and this one lacks lost every row."""
    found = compare({"audit_history": 40, "audit_audit": 1}, {"audit_audit": 1})
    assert found["dropped"] == [{"table": "public.audit_history", "before": 40, "after": None, "percent": 100.0}]


def test_tables_allowed_to_shrink_are_recorded_not_flagged():
    """Sessions purged: in `allowed`, not `dropped`; FAC_BACKUP_SHRINK_ALLOWED_TABLES replaces the list."""
    found = compare({"django_session": 900, "audit_audit": 5}, {"django_session": 3, "audit_audit": 5})
    assert found["dropped"] == [] and [a["table"] for a in found["allowed"]] == ["public.django_session"]
    settings = load_settings({"FAC_BACKUP_SHRINK_ALLOWED_TABLES": "none"}, [])
    found = compare({"django_session": 900}, {"django_session": 3}, allowed=settings.shrink_allowed_tables)
    assert [d["table"] for d in found["dropped"]] == ["public.django_session"]


def test_the_settings_read_the_threshold_and_the_list_and_refuse_bad_names():
    problems: list[str] = []
    settings = load_settings({"FAC_BACKUP_SHRINK_THRESHOLD_PERCENT": "2.5",
                              "FAC_BACKUP_SHRINK_ALLOWED_TABLES": "django_session, curation.queue"}, problems)
    assert problems == [] and settings.shrink_threshold_percent == 2.5
    assert settings.shrink_allowed_tables == ("curation.queue", "public.django_session")
    load_settings({"FAC_BACKUP_SHRINK_ALLOWED_TABLES": "a;b", "FAC_BACKUP_SHRINK_THRESHOLD_PERCENT": "-1"}, problems)
    assert len(problems) == 2 and "SHRINK_ALLOWED_TABLES" in problems[0]


def test_the_baseline_is_the_newest_backup_of_the_same_database():
    """Another database's newer manifest is passed over."""
    store = MemoryObjectStore("backups")
    catalog.write_manifest(store, manifest("daily-06-03", NOW - timedelta(days=1)))
    other = manifest("daily-06-04", NOW)
    catalog.write_manifest(store, catalog.Manifest(**{**other.__dict__, "database": "elsewhere"}))
    assert integrity.find_baseline(store, "fac").id == "daily-06-03"
    assert integrity.find_baseline(store, "none") is None


def record(backup_id: str, days_old: float, holds: str = "") -> Record:
    return Record(backup_id, COMPLETE, NOW - timedelta(days=days_old), 1, holds)


def test_the_retention_keeps_the_baseline_and_the_flag_until_acknowledged():
    """Both are far past every age and rank rule, yet kept, held, with a reason naming the command."""
    records = [record(f"scheduled-05-{d:02d}-10", 40 - d) for d in range(1, 10)]
    records += [record("scheduled-05-20-08", 41), record("scheduled-05-20-10", 40, holds="scheduled-05-20-08")]
    decisions = {d.record.id: d for d in decide(records, NOW, RetentionPolicy())}
    for backup_id in ("scheduled-05-20-08", "scheduled-05-20-10"):
        assert decisions[backup_id].keep and decisions[backup_id].held
        assert "acknowledge_drop scheduled-05-20-10" in decisions[backup_id].reason
    assert not decisions["scheduled-05-01-10"].keep
    acknowledged = [r if r.id != "scheduled-05-20-10" else record(r.id, 40) for r in records]
    decisions = {d.record.id: d for d in decide(acknowledged, NOW, RetentionPolicy())}
    assert not decisions["scheduled-05-20-08"].keep and not decisions["scheduled-05-20-08"].held


def flagged_store(acknowledged: bool = False) -> MemoryObjectStore:
    store = MemoryObjectStore("backups")
    catalog.write_manifest(store, manifest("scheduled-06-04-08", NOW - timedelta(hours=2)))
    lost = [{"table": "public.audit_audit", "before": 10, "after": 0, "percent": 100.0}]
    catalog.write_manifest(store, manifest("scheduled-06-04-10", NOW, integrity={
        "baseline": "scheduled-06-04-08", "dropped": lost, "allowed": []}))
    if acknowledged:
        store.put_bytes(layout.acknowledged_key("scheduled-06-04-10"), b"{}")
    return store


def gauge(store) -> float:
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    watcher = CatalogWatcher(store, metrics)
    watcher.first_listing()
    first = metrics.registry.get_sample_value("fac_backup_rows_dropped_tables")
    watcher.refresh()
    assert metrics.registry.get_sample_value("fac_backup_rows_dropped_tables") == first
    return first


def test_the_metric_shows_the_newest_flag_until_acknowledged_or_a_clean_comparison():
    """1 for the flagged newest backup; 0 once acknowledged; 0 again when a newer backup compares clean."""
    assert gauge(flagged_store()) == 1
    assert gauge(flagged_store(acknowledged=True)) == 0
    store = flagged_store()
    catalog.write_manifest(store, manifest("scheduled-06-04-12", NOW + timedelta(hours=2), integrity={
        "baseline": "scheduled-06-04-10", "dropped": [], "allowed": []}))
    assert gauge(store) == 0


def test_an_acknowledgement_made_while_the_daemon_runs_clears_the_metric_at_its_next_refresh():
    """The daemon read the flag at start; the acknowledgement arrives later: one HEAD at the refresh sees it."""
    store = flagged_store()
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    watcher = CatalogWatcher(store, metrics)
    watcher.first_listing()
    assert metrics.registry.get_sample_value("fac_backup_rows_dropped_tables") == 1
    store.put_bytes(layout.acknowledged_key("scheduled-06-04-10"), b"{}")
    watcher.refresh()
    assert metrics.registry.get_sample_value("fac_backup_rows_dropped_tables") == 0


def test_the_notification_carries_a_line_for_the_drop_even_on_success(monkeypatch):
    """A successful backup that flagged tables notifies, naming each table, the baseline and the command."""
    figures = {"backup_id": "scheduled-06-04-10", "integrity_baseline": "scheduled-06-04-08",
               "rows_dropped": [{"table": "public.audit_audit", "before": 1200, "after": None, "percent": 100.0}]}
    result = jobs.JobResult("scheduled_backup", "r1", "success", 3.0,
                            (jobs.StepResult("db_to_s3", "success", 2.0, figures),))
    (line,) = notify.evidence_lines(result)
    assert "public.audit_audit 1,200 -> gone" in line and "against scheduled-06-04-08" in line
    assert "acknowledge_drop scheduled-06-04-10" in line
    payload = notify.build_payload(result, notes=[line])
    assert payload["text"].endswith(line) and payload["notes"] == [line]
    sent = []
    config = SimpleNamespace(webhook_url="http://127.0.0.1:9/hook", space="production")
    monkeypatch.setattr(notify, "post_json", lambda url, body, **_: sent.append(body) or 200)
    assert notify.notify_job_end(config, result)
    assert sent[0]["outcome"] == "success" and sent[0]["notes"] == [line]


def test_the_monthly_report_says_where_it_is():
    figures = {"report_url": "s3://b/backups/journal/reports/x.html", "since": "2026-10-01T00:00:00-07:00",
               "until": "2026-11-01T00:00:00-07:00", "slots": 250, "slots_kept": 248, "flagged_unacknowledged": 0}
    result = jobs.JobResult("contingency_report", "r2", "success", 1.0,
                            (jobs.StepResult("contingency_report", "success", 1.0, figures),))
    assert notify.evidence_lines(result) == [
        "contingency report 2026-10-01 to 2026-11-01: s3://b/backups/journal/reports/x.html "
        "(248 of 250 slots kept, 0 unacknowledged drops)"]
