"""The running daemon shows the disks: sizes against storage, the room a refresh and a restore need, and a
snapshot whose refresh failed, in /metrics and in `ctl status`."""

from __future__ import annotations

import pytest

from tests.integration.test_daemon import start_daemon, wait_for  # noqa: F401 - start_daemon is a fixture
from tests.integration.test_db_to_db import PSQL_FAULTS, install_fake_programs
from tests.integration.test_restore import take_backup

pytestmark = pytest.mark.integration

GIB = 1024 ** 3


def test_the_daemon_exports_the_disks_and_a_failed_refresh(sample_db, tmp_path, start_daemon):  # noqa: F811
    """After a refresh failed in place, with fac-db's storage too small for a restore of the newest
    backup: the gauges say so (and what each operation needs), ctl status names the failure."""
    backup_id = take_backup(sample_db)
    install_fake_programs(sample_db, tmp_path, psql_fault=PSQL_FAULTS["dies"])
    assert sample_db.run("db_to_db").outcome == "failure"
    sample_db.extra_env.pop("FAC_BACKUP_PG_BIN")
    daemon = start_daemon(FAC_BACKUP_FAC_DB_STORAGE_GB="0.001", FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB="100")
    daemon.wait_healthy()

    def looked() -> dict | None:
        samples = daemon.samples()
        return samples if samples.get(("fac_backup_space_check_timestamp_seconds", frozenset())) else None

    samples = wait_for(looked, 30, "the daemon's first look at the disks")

    def value(name: str, **labels) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert value("fac_backup_snapshot_refresh_state", state="failed") == 1
    assert value("fac_backup_snapshot_refresh_state", state="complete") == 0
    assert value("fac_backup_database_storage_bytes", binding="fac-db") == int(0.001 * GIB)
    assert value("fac_backup_database_storage_bytes", binding="fac-snapshot-db") == 100 * GIB
    with sample_db.connect() as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    # The database's own size, not the dump's or the storage: autovacuum may add a free-space or visibility
    # map page or two between the daemon's look and ours, so the two agree within 1 %.
    assert abs(value("fac_backup_database_size_bytes", binding="fac-db") - size) <= size // 100
    restore = value("fac_backup_space_required_bytes", operation="restore", binding="fac-db")
    refresh = value("fac_backup_space_required_bytes", operation="snapshot_refresh", binding="fac-snapshot-db")
    assert restore > int(0.001 * GIB) and size < refresh < 100 * GIB  # the restore would not fit; the refresh would
    disks = daemon.ctl("status")["disks"]
    assert disks["snapshot"]["state"] == "failed" and disks["snapshot"]["restorable"] is False
    assert "dissemination_general" in disks["snapshot"]["error"]
    assert disks["newest_backup"] == backup_id and disks["required_bytes"]["restore"] == restore


def test_a_snapshot_the_watch_cannot_read_reads_unknown_not_its_last_state(sample_db):
    """The snapshot read complete, then its server cannot be reached (here: a port nobody listens on): the
    state gauge says unknown, rather than go on saying complete."""
    from prometheus_client import CollectorRegistry
    from structlog.testing import capture_logs

    from service.log import get_logger
    from service.metrics import Metrics
    from service.space_watch import SpaceWatcher

    assert sample_db.run("db_to_db").outcome == "success"
    metrics = Metrics(("db_to_db",), registry=CollectorRegistry())

    def state() -> str:
        return next(s.labels["state"] for m in metrics.registry.collect() for s in m.samples
                    if s.name == "fac_backup_snapshot_refresh_state" and s.value == 1)

    SpaceWatcher(sample_db.config(), metrics, lambda: None, get_logger()).refresh()
    assert state() == "complete"
    sample_db.credential_overrides["fac-snapshot-db"] = {"port": "1"}
    with capture_logs() as logs:
        SpaceWatcher(sample_db.config(), metrics, lambda: None, get_logger()).refresh()
    assert any(e["event"] == "space.unreadable" for e in logs)
    assert state() == "unknown"
