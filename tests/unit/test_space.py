"""The space model: which refresh method fits, which restores are refused, and the figures they name."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from service import catalog, space
from service.config import load_settings
from service.errors import SafetyError
from service.metrics import Metrics
from service.refresh_record import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    REFRESHING,
    RefreshRecord,
    describe_state,
    parse_refresh_record,
)
from tests.unit.test_layout_catalog import manifest

GB = space.GIB


def server(database_gb: float, others_gb: float = 0.0, wal_gb: float = 2.0) -> space.ServerSpace:
    return space.ServerSpace(int(database_gb * GB), int((database_gb + others_gb) * GB), int(wal_gb * GB))


def plan(storage_gb, target, copy_gb, index_gb=1.0):
    return space.plan_refresh(space.storage_bytes(storage_gb), target, int(copy_gb * GB), int(index_gb * GB),
                              target_name="fac-snapshot-db")


def test_production_snapshot_refreshes_in_place_and_a_roomy_one_all_or_nothing():
    """75 GB for 70 GB of data: in place (both copies need ~158 GB with headroom); 200 GB: all or nothing;
    unknown storage: in place, saying the setting is not set."""
    old_copy = server(70)
    production = plan(75, old_copy, 70)
    assert production.method == space.IN_PLACE and "cannot hold both copies" in production.reason
    assert production.in_place_bytes == 72 * GB  # one copy and the WAL room: the old copy is dropped first
    assert production.all_or_nothing_bytes == 143 * GB
    assert plan(200, old_copy, 70).method == space.ALL_OR_NOTHING
    assert plan(158, old_copy, 70).method == space.IN_PLACE  # 143 / 0.9 = 158.9: the headroom is kept
    unknown = plan(None, old_copy, 70)
    assert unknown.method == space.IN_PLACE and "FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB is not set" in unknown.reason
    assert unknown.figures()["method"] == space.IN_PLACE and unknown.figures()["space_storage_bytes"] == 0


def test_a_refresh_that_cannot_hold_one_copy_is_refused_naming_a_size_that_fits():
    """Data grown to 80 GB on a 75 GB snapshot: refused, with the cf update-service command and setting."""
    with pytest.raises(SafetyError) as refused:
        plan(75, server(70), 80)
    assert "even one copy" in refused.value.message and "nothing was touched" in refused.value.message
    gb = int(re.search(r'"storage": (\d+)', refused.value.hint).group(1))
    assert gb == 92  # 82 GB (copy + WAL) with 10% headroom, rounded up
    assert f"FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB={gb}" in refused.value.hint
    assert plan(gb, server(70), 80).method == space.IN_PLACE


def test_restores_need_both_copies_with_headroom():
    """fac-db at 200 GB: 70 GB restores beside 70 GB; 95 beside 95 does not, naming the figures and the fix;
    unknown storage is never refused here (the caller says it could not check)."""
    fits = space.RestoreNeed(server(70), 70 * GB, False, "recorded")
    space.check_restore(fits, 200 * GB, what="backup x", target_name="fac-db")
    space.check_restore(space.RestoreNeed(server(95), 95 * GB, True, "rough"), None, what="x", target_name="fac-db")
    grown = space.RestoreNeed(server(95), 95 * GB, True, "legacy dumps")
    with pytest.raises(SafetyError) as refused:
        space.check_restore(grown, 200 * GB, what="backup daily-06-04", target_name="fac-db")
    message = refused.value.message
    assert "refusing to restore backup daily-06-04 into fac-db" in message and "192.0 GB" in message
    assert "rough estimate" in message and "nothing was touched" in message
    assert "cf update-service fac-db -c '{\"storage\": 214}'" in refused.value.hint  # 192 / 0.9, rounded up
    assert "FAC_BACKUP_FAC_DB_STORAGE_GB=214" in refused.value.hint
    assert "GB = 2^30 bytes" in refused.value.detail
    assert space.RestoreNeed(server(95), 95 * GB, True, "").storage_needed <= 214 * GB


def test_the_restored_size_comes_from_the_manifest_or_roughly_from_the_dumps():
    """A manifest with sizes gives them exactly; an older one and a legacy backup are estimated from their
    dumps (compressed x6, uncompressed x1.7) and said to be rough."""
    recorded = manifest("daily-06-04")
    recorded = catalog.Manifest(**{**recorded.__dict__, "disk": {"restored_bytes": 12345, "tables": []}})
    size, rough, basis = space.restored_size(SimpleNamespace(manifest=recorded))
    assert (size, rough) == (12345, False) and "recorded at backup time" in basis
    older = manifest("daily-06-05")  # 10 bytes of table dump, 5 of schema, gzip level 1
    size, rough, basis = space.restored_size(SimpleNamespace(manifest=older))
    assert (size, rough) == (90, True) and "before sizes were recorded" in basis
    plain = catalog.Manifest(**{**older.__dict__, "compression": 0, "compression_spec": "none"})
    assert space.restored_size(SimpleNamespace(manifest=plain))[0] == int(15 * 1.7)
    legacy = SimpleNamespace(manifest=None, legacy_tables=[SimpleNamespace(bytes=100), SimpleNamespace(bytes=50)])
    size, rough, basis = space.restored_size(legacy)
    assert (size, rough) == (900, True) and "legacy" in basis and "rough" in basis


def test_manifests_without_sizes_still_read_and_new_ones_keep_sizes_outside_the_table_entries():
    """An older manifest (no `disk`) reads with restored_bytes 0; a new one keeps its sizes in a top-level
    key, so the table entries an older version parses field by field are unchanged."""
    old = manifest("daily-06-04")
    raw = json.loads(old.to_json())
    assert "disk" not in raw
    assert catalog.Manifest.from_json(json.dumps(raw).encode(), "daily-06-04").restored_bytes == 0
    sized = catalog.Manifest(**{**old.__dict__, "disk": {"restored_bytes": 99, "tables": [["public", "t", 99]]}})
    data = json.loads(sized.to_json())
    assert data["disk"]["restored_bytes"] == 99
    assert set(data["tables"][0]) == set(raw["tables"][0])
    assert catalog.Manifest.from_json(sized.to_json(), "daily-06-04") == sized


def test_storage_settings_are_decimal_gb_or_unset():
    """FAC_BACKUP_*_STORAGE_GB: 200 and 74.5 are read, unset is None; zero, negatives, words and more
    than RDS's largest storage are refused."""
    problems: list[str] = []
    settings = load_settings({"FAC_BACKUP_FAC_DB_STORAGE_GB": "200", "FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB": "74.5"},
                             problems)
    assert problems == [] and settings.fac_db_storage_gb == 200 and settings.snapshot_db_storage_gb == 74.5
    assert load_settings({}, problems).fac_db_storage_gb is None and problems == []
    for bad in ("0", "-5", "lots", "nan", "inf", "70000"):
        problems = []
        load_settings({"FAC_BACKUP_FAC_DB_STORAGE_GB": bad}, problems)
        assert len(problems) == 1 and "FAC_BACKUP_FAC_DB_STORAGE_GB" in problems[0] and "GB" in problems[0]
    assert space.storage_bytes(74.5) == int(74.5 * 2 ** 30) and space.storage_bytes(None) is None


def test_refresh_records_carry_their_state_and_older_ones_are_complete():
    """A record written before states existed is complete; each state round-trips; a state this version
    does not know counts as failed; the error is one bounded line."""
    as_of = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    older = json.dumps({"fac-backup snapshot": 1, "data_as_of": as_of.isoformat(), "source": "fac-db",
                        "source_database": "fac", "run_id": "r1"})
    assert parse_refresh_record(older).state == COMPLETE
    record = RefreshRecord(as_of, "fac-db", "fac", "r2", state=REFRESHING, method="in_place",
                           started_at="2026-12-01T00:00:00-08:00", backup_id="deploy-202612010000")
    for state in (COMPLETE, REFRESHING, FAILED):
        assert parse_refresh_record(record.with_state(state).to_comment()) == record.with_state(state)
    unknown = json.loads(record.to_comment()) | {"state": "half-done"}
    assert parse_refresh_record(json.dumps(unknown)).state == FAILED
    failed = record.with_state(FAILED, "line one\nline two " + "x" * 1000)
    assert "\n" not in failed.error and len(failed.error) == 400
    assert "failed: line one line two" in describe_state(FAILED, failed)
    assert "interrupted" in describe_state(INTERRUPTED, record)
    assert describe_state(COMPLETE, record).startswith("complete: data as of 2026-12-01T08:00:00+00:00")


def test_disk_gauges_and_the_snapshot_state():
    """Storage per binding (0 unknown), sizes and required room per operation, one state at 1."""
    metrics = Metrics(("db_to_db",), registry=None)
    metrics.init_disks({"fac-db": 200 * GB, "fac-snapshot-db": 0},
                       {"snapshot_refresh": "fac-snapshot-db", "restore": "fac-db"})
    get = metrics.registry.get_sample_value
    assert get("fac_backup_database_storage_bytes", {"binding": "fac-db"}) == 200 * GB
    assert get("fac_backup_space_required_bytes", {"operation": "restore", "binding": "fac-db"}) == 0
    assert get("fac_backup_snapshot_refresh_state", {"state": "unknown"}) == 1
    metrics.observe_disks({"fac-db": 70 * GB}, {("restore", "fac-db"): 158 * GB}, 1234.0)
    metrics.observe_snapshot_state(FAILED)
    assert get("fac_backup_database_size_bytes", {"binding": "fac-db"}) == 70 * GB
    assert get("fac_backup_space_required_bytes", {"operation": "restore", "binding": "fac-db"}) == 158 * GB
    assert get("fac_backup_space_check_timestamp_seconds", {}) == 1234.0
    assert [s for s in ("complete", "refreshing", "interrupted", "failed", "unknown")
            if get("fac_backup_snapshot_refresh_state", {"state": s}) == 1] == ["failed"]
