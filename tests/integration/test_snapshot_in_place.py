"""db_to_db in place, and the space checks that need no small disk, against real PostgreSQL.

In place (the method when fac-snapshot-db's storage is unknown or too small for
two copies), a fault halfway leaves the snapshot partly loaded: what must hold
is that its record says so (`failed`, with the error) and that db_restore
refuses it. A refresh or restore the known storage cannot hold is refused
before anything is touched. (On real small disks: test_disk_space.py.)
"""

from __future__ import annotations

import re

import pytest
from structlog.testing import capture_logs

from service.refresh_record import FAILED
from tests.integration.test_db_to_db import (
    PSQL_FAULTS,
    assert_snapshot_equals_source,
    copy_cancelled,
    copy_ok,
    copy_with_backend_terminated,
    install_fake_programs,
    snapshot_print,
)
from tests.integration.test_restore import CONFIRM, database_state, pre_restore_ids, take_backup
from tests.integration.test_snapshot_age import snapshot_record

pytestmark = pytest.mark.integration

TOO_SMALL_GB = "0.001"  # 1 MiB: smaller than any copy of the sample data


def assert_left_failed(box, result, *, detail: str) -> None:
    """The run failed, the snapshot's record says `failed` with the error, and db_restore refuses it."""
    assert result.outcome in ("failure", "aborted")
    record = snapshot_record(box)
    assert record is not None and record.state == FAILED and record.method == "in_place", record
    assert detail in record.error, record.error
    box.extra_env.pop("FAC_BACKUP_PG_BIN", None)
    with box.connect() as conn:
        live = database_state(conn)
    refused = box.run("db_restore", options={**CONFIRM, "force": True})
    assert refused.exit_code == 3 and "is not a whole copy" in refused.error.message
    assert "failed" in refused.error.detail and "s3_restore BACKUP_ID" in refused.error.hint
    with box.connect() as conn:
        assert database_state(conn) == live


@pytest.mark.parametrize("fault", ["dies", "stops_early", "corrupts"])
def test_a_faulty_producer_in_place_leaves_a_failed_snapshot(sample_db, tmp_path, fault):
    """A source psql that dies, stops early or sends a bad row, in place: `failed`, naming the table."""
    copy_ok(sample_db, "in_place")
    install_fake_programs(sample_db, tmp_path, psql_fault=PSQL_FAULTS[fault])
    result = sample_db.run("db_to_db")
    assert "left unfinished" in result.error.message and "db_restore refuses it" in result.error.message
    assert_left_failed(sample_db, result, detail="dissemination_general")


def test_a_terminated_target_connection_in_place_is_recorded_on_a_new_one(sample_db, tmp_path):
    """The loading backend terminated mid-COPY: the failed record is written over a fresh connection."""
    copy_ok(sample_db, "in_place")
    result = copy_with_backend_terminated(sample_db, tmp_path)
    assert_left_failed(sample_db, result, detail="dissemination_general")


def test_a_cancel_in_place_leaves_a_failed_snapshot(sample_db, tmp_path):
    """A cancel (SIGTERM) during the load in place: the run is aborted and the snapshot marked failed."""
    copy_ok(sample_db, "in_place")
    result = copy_cancelled(sample_db, tmp_path)
    assert result.outcome == "aborted"
    assert_left_failed(sample_db, result, detail="cancel")


def test_in_place_an_inheritance_parent_loaded_after_its_child_leaves_the_child_whole(sample_db):
    """Old-style inheritance: emptying the parent before its load must not empty the child loaded
    before it (the larger table goes first), so the copy still equals the source."""
    with sample_db.connect() as conn:
        conn.execute("CREATE TABLE public.note_parent (id int, body text)")
        conn.execute("CREATE TABLE public.note_child (extra text) INHERITS (public.note_parent)")
        conn.execute("INSERT INTO public.note_parent SELECT i, 'p' FROM generate_series(1, 10) i")
        conn.execute("INSERT INTO public.note_child SELECT i, repeat('c', 200), 'x' FROM generate_series(1, 500) i")
        conn.execute("ANALYZE public.note_parent, public.note_child")
    copy_ok(sample_db, "in_place")
    copy_ok(sample_db, "in_place")
    assert_snapshot_equals_source(sample_db)
    with sample_db.connect("snapshot_db") as conn:
        assert conn.execute("SELECT count(*) FROM ONLY public.note_child").fetchone()[0] == 500


def test_a_refresh_the_storage_cannot_hold_once_is_refused_untouched(sample_db):
    """Storage below one copy: db_to_db exits 3 before touching the snapshot, naming the fix."""
    copy_ok(sample_db, "in_place")
    before, record = snapshot_print(sample_db), snapshot_record(sample_db)
    sample_db.extra_env["FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB"] = TOO_SMALL_GB
    result = sample_db.run("db_to_db")
    assert result.exit_code == 3, result.error
    assert "refusing to refresh fac-snapshot-db" in result.error.message
    assert "nothing was touched" in result.error.message
    fix = re.search(r"cf update-service fac-snapshot-db -c '\{\"storage\": (\d+)\}'", result.error.hint)
    assert fix and f"FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB={fix.group(1)} " in result.error.hint, result.error.hint
    assert snapshot_print(sample_db) == before and snapshot_record(sample_db) == record


def test_restores_the_storage_cannot_hold_are_refused_before_the_pre_restore_backup(sample_db):
    """s3_restore and db_restore with fac-db's storage too small: exit 3, nothing touched, no pre-restore
    backup; unset, each restore says once that the space could not be checked, and runs."""
    backup_id = take_backup(sample_db)
    copy_ok(sample_db)
    with sample_db.connect() as conn:
        conn.execute("DELETE FROM public.lookup_01")
        before = database_state(conn)
    sample_db.extra_env["FAC_BACKUP_FAC_DB_STORAGE_GB"] = TOO_SMALL_GB
    for job, args in (("s3_restore", (backup_id,)), ("db_restore", ())):
        refused = sample_db.run(job, *args, options=CONFIRM)
        assert refused.exit_code == 3, refused.error
        assert "into fac-db" in refused.error.message and "nothing was touched" in refused.error.message
        assert re.search(r"cf update-service fac-db -c '\{\"storage\": \d+\}'", refused.error.hint)
    with sample_db.connect() as conn:
        assert database_state(conn) == before
    assert pre_restore_ids(sample_db) == []
    sample_db.extra_env.pop("FAC_BACKUP_FAC_DB_STORAGE_GB")
    with capture_logs() as logs:
        restored = sample_db.run("s3_restore", backup_id, options=CONFIRM)
    assert restored.outcome == "success", restored.error
    unchecked = [e for e in logs if e["event"] == "restore.space_unchecked"]
    assert len(unchecked) == 1 and "cannot be checked" in unchecked[0]["reason"]
