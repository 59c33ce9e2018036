"""The bucket's own expiry against the retention: read or configured, backups at risk, one warning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry

from service import jobs
from service.bucket_rules import BucketExpiry, BucketRulesWatcher, backups_at_risk, read_bucket_expiry
from service.config import Settings
from service.metrics import Metrics
from service.retention import COMPLETE, Record, RetentionPolicy, decide
from service.storage import MemoryObjectStore

NOW = datetime(2026, 8, 20, 12, 0, tzinfo=UTC)
SIXTY = {"ID": "cloud-gov-expiry", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 60}}
POLICY = RetentionPolicy()  # the defaults: 14 days, 3 per kind, milestones a year


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def _add(self, level: str, event: str, **fields) -> None:
        self.events.append((level, event, fields))

    def info(self, event: str, **fields) -> None:
        self._add("info", event, **fields)

    def warning(self, event: str, **fields) -> None:
        self._add("warning", event, **fields)

    def named(self, event: str) -> list[dict]:
        return [f for _, e, f in self.events if e == event]


def record(backup_id: str, days_old: float) -> Record:
    return Record(backup_id, COMPLETE, NOW - timedelta(days=days_old), 100)


def test_the_shortest_rule_over_backups_wins_and_a_whole_bucket_rule_covers_media():
    """Rules limited elsewhere are ignored; the shortest that reaches backups/ is the expiry."""
    store = MemoryObjectStore("b")
    store.lifecycle_rules = [SIXTY, {"ID": "tmp", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
                                     "Expiration": {"Days": 1}}]
    expiry = read_bucket_expiry(store, None)
    assert (expiry.days, expiry.source, expiry.rule_id, expiry.covers_media) == (60, "rule", "cloud-gov-expiry", True)
    store.lifecycle_rules = [{**SIXTY, "Filter": {"Prefix": "backups/"}}]
    assert read_bucket_expiry(store, None).covers_media is False
    store.lifecycle_rules = []
    assert read_bucket_expiry(store, 30).source == "none"  # a readable bucket beats the setting


def test_a_denied_read_takes_the_setting_or_says_unknown():
    """Access denied: FAC_BACKUP_BUCKET_EXPIRY_DAYS when set, otherwise an unknown expiry."""
    store = MemoryObjectStore("b")
    store.lifecycle_rules = [SIXTY]
    store.lifecycle_denied = True
    configured = read_bucket_expiry(store, 60)
    assert (configured.days, configured.source, configured.readable) == (60, "setting", False)
    assert "AccessDenied" in configured.detail
    unknown = read_bucket_expiry(store, None)
    assert (unknown.days, unknown.source) == (None, "unknown")


def test_backups_at_risk_are_milestones_and_the_last_of_a_kind_that_stopped():
    """A year-long initial backup and a daily kind silent for 55 days are at risk; fresh scheduled ones are not."""
    records = [record("initial-202608101200", 10), record("daily-06-26", 55),
               record("scheduled-08-20-10", 0.1), record("scheduled-08-20-08", 0.2), record("scheduled-08-06-08", 14.5)]
    expiry = BucketExpiry(60, "rule", "cloud-gov-expiry")
    risky = backups_at_risk(decide(records, NOW, POLICY), expiry, NOW, POLICY)
    assert [r.backup_id for r in risky] == ["daily-06-26", "initial-202608101200"]
    assert risky[0].expires_at == datetime(2026, 8, 26, tzinfo=UTC)  # 60 days after, at the next midnight UTC
    assert backups_at_risk(decide(records, NOW, POLICY), BucketExpiry(None, "unknown"), NOW, POLICY) == []
    aligned = RetentionPolicy(milestone_min_days=60)
    assert [r.backup_id for r in backups_at_risk(decide(records, NOW, aligned), expiry, NOW, aligned)] == [
        "daily-06-26"]


def test_the_daemon_watcher_warns_once_names_the_rule_and_sets_the_metrics():
    """Two refreshes, one warning naming the rule, the backups at risk and the media; gauges set."""
    store = MemoryObjectStore("b")
    store.lifecycle_rules = [SIXTY]
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    log = Log()
    settings = Settings(timezone=ZoneInfo("UTC"))
    records = [record("initial-202608101200", 10), record("scheduled-08-20-10", 0.1)]
    watcher = BucketRulesWatcher(store, settings, metrics, log, read_records=lambda _s: (records, {}))
    watcher.refresh(NOW)
    watcher.refresh(NOW)
    warnings = log.named("bucket.expiry_shorter_than_retention")
    assert len(warnings) == 1
    assert "cloud-gov-expiry" in warnings[0]["rule"] and warnings[0]["retention_longest_days"] == 365
    assert [r["id"] for r in warnings[0]["at_risk"]] == ["initial-202608101200"]
    assert "media" in warnings[0]["media"]
    assert metrics.registry.get_sample_value("fac_backup_bucket_expiry_days") == 60
    assert metrics.registry.get_sample_value("fac_backup_retention_longest_days") == 365
    assert metrics.registry.get_sample_value("fac_backup_bucket_expiring_kept_backups") == 1


def test_the_watcher_says_once_that_the_rules_cannot_be_read():
    """Denied every day: one bucket.lifecycle_unreadable; with no setting, no expiry warning and 0."""
    store = MemoryObjectStore("b")
    store.lifecycle_denied = True
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    log = Log()
    watcher = BucketRulesWatcher(store, Settings(timezone=ZoneInfo("UTC")), metrics, log,
                                 read_records=lambda _s: ([record("initial-202608101200", 10)], {}))
    watcher.refresh(NOW)
    watcher.refresh(NOW)
    assert len(log.named("bucket.lifecycle_unreadable")) == 1
    assert log.named("bucket.expiry_shorter_than_retention") == []
    assert metrics.registry.get_sample_value("fac_backup_bucket_expiry_days") == 0
    configured = BucketRulesWatcher(store, Settings(timezone=ZoneInfo("UTC"), bucket_expiry_days=60), metrics,
                                    log, read_records=lambda _s: ([record("initial-202608101200", 10)], {}))
    configured.refresh(NOW)
    assert len(log.named("bucket.expiry_shorter_than_retention")) == 1
    assert metrics.registry.get_sample_value("fac_backup_bucket_expiry_days") == 60
