"""The backups bucket's lifecycle rule read from the moto server: prune's dry run and the daemon say what it deletes."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from structlog.testing import capture_logs

from service import notify
from tests.integration.test_daemon import start_daemon, wait_for  # noqa: F401 - the fixture
from tests.integration.test_prune import put_backup

pytestmark = pytest.mark.integration
SIXTY = {"ID": "cloud-gov-expiry", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 60}}


@pytest.fixture
def expiring_bucket(sandbox):
    """The backups bucket with cloud.gov's 60-day rule, a 10-day-old initial backup and a fresh daily one."""
    notify.forget_outcomes()
    sandbox.s3.client().put_bucket_lifecycle_configuration(
        Bucket=sandbox.backups, LifecycleConfiguration={"Rules": [SIXTY]})
    store = sandbox.store()
    now = datetime.now(sandbox.config().settings.timezone)
    put_backup(store, "initial-202601011200", now - timedelta(days=10))
    put_backup(store, "daily-01-21", now - timedelta(hours=2))
    yield sandbox
    notify.forget_outcomes()


def test_prune_dry_run_lists_the_kept_backups_the_bucket_will_expire(expiring_bucket):
    """The rule is read from the bucket; the year-long initial backup is shown with its expiry date."""
    with capture_logs() as logs:
        result = expiring_bucket.run("prune_backups")
    assert result.outcome == "success", result.error
    figures = result.steps[0].figures
    assert figures["applied"] is False and figures["deleted"] == 0
    assert figures["bucket_will_expire"] == 1
    expiring = [e for e in logs if e["event"] == "prune.bucket_will_expire"]
    assert [e["backup_id"] for e in expiring] == ["initial-202601011200"]
    assert "cloud-gov-expiry" in expiring[0]["rule"] and "60 days" in expiring[0]["rule"]
    assert figures["bucket_expiring"][0]["expires_at"] == expiring[0]["expires_at"]


def test_the_daemon_warns_once_at_start_and_exports_the_expiry(expiring_bucket, start_daemon):  # noqa: F811
    """Once started (the rules are read right after /healthz says 200, in the background): one warning
    naming the rule, the backup at risk and the media; the gauges and alert inputs."""
    daemon = start_daemon()
    daemon.wait_healthy()
    wait_for(lambda: daemon.value("fac_backup_start_pending", task="bucket_rules") == 0, 30,
             "the start's read of the lifecycle rules")
    warnings = [e for e in daemon.events() if e["event"] == "bucket.expiry_shorter_than_retention"]
    assert len(warnings) == 1, daemon.log_text()
    assert "cloud-gov-expiry" in warnings[0]["rule"]
    assert [r["id"] for r in warnings[0]["at_risk"]] == ["initial-202601011200"]
    assert "media" in warnings[0]["media"]
    assert daemon.value("fac_backup_bucket_expiry_days") == 60
    assert daemon.value("fac_backup_retention_longest_days") == 365
    assert daemon.value("fac_backup_bucket_expiring_kept_backups") == 1
