"""The snapshot's age is recorded by the copy itself, so it cannot disagree with the data.

db_to_db dates fac-snapshot-db inside the transaction that replaces it: a copy
that fails leaves the old date beside the old data, a copy run on its own is
dated, and a snapshot with no date at all is treated as of unknown age.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from psycopg import sql

from service.refresh_record import RefreshRecord, read_refresh_record, write_refresh_record
from tests.integration.test_db_to_db import PSQL_FAULTS, give_room_for_both, install_fake_programs, snapshot_print
from tests.integration.test_restore import CONFIRM, assert_restored, database_state

pytestmark = pytest.mark.integration


def snapshot_record(box) -> RefreshRecord | None:
    with box.connect("snapshot_db") as conn:
        return read_refresh_record(conn)


def backdate_snapshot(box, days: int) -> datetime:
    """Rewrite the snapshot's record as if its last refresh were `days` old; return that moment."""
    old = datetime.now(UTC) - timedelta(days=days)
    with box.connect("snapshot_db") as conn, conn.transaction():
        write_refresh_record(conn, RefreshRecord(old, "fac-db", box.db, "an-old-run"))
    return old


def test_db_to_db_alone_dates_the_snapshot_and_db_restore_accepts_it(sample_db):
    """A db_to_db run on its own (no backup manifest anywhere) leaves a fresh snapshot that db_restore takes."""
    box = sample_db
    before = datetime.now(UTC)
    copy = box.run("db_to_db")
    assert copy.outcome == "success", copy.error
    record = snapshot_record(box)
    assert record is not None and record.source == "fac-db" and record.source_database == box.db
    assert before - timedelta(seconds=5) <= record.data_as_of <= datetime.now(UTC)
    assert copy.steps[0].figures["data_as_of"] == record.data_as_of.isoformat()
    with box.connect() as conn:
        expected = database_state(conn)
        conn.execute("DELETE FROM public.dissemination_federalaward")
    restored = box.run("db_restore", options=CONFIRM)
    assert_restored(restored)
    assert 0 <= restored.steps[0].figures["snapshot_age_hours"] < 0.1
    with box.connect() as conn:
        assert database_state(conn) == expected
        # The record belongs to the snapshot database: the restore does not carry it into fac-db.
        assert read_refresh_record(conn) is None


def test_failed_refresh_inside_on_demand_backup_keeps_the_old_age(sample_db, tmp_path):
    """on_demand_backup whose all-or-nothing db_to_db fails: its fresh manifest does not make the old
    snapshot look fresh."""
    box = sample_db
    give_room_for_both(box)
    assert box.run("db_to_db").outcome == "success"
    old = backdate_snapshot(box, days=5)
    old_snapshot = snapshot_print(box)
    install_fake_programs(box, tmp_path, psql_fault=PSQL_FAULTS["dies"])
    run = box.run("on_demand_backup")
    assert {s.name: s.outcome for s in run.steps}["db_to_s3"] == "success"
    assert run.outcome == "failure" and run.steps[-1].name == "db_to_db"
    # The copy rolled back, its date with it.
    assert snapshot_record(box).data_as_of == old and snapshot_print(box) == old_snapshot
    box.extra_env.pop("FAC_BACKUP_PG_BIN")
    with box.connect() as conn:
        live = database_state(conn)
    refused = box.run("db_restore", options=CONFIRM)
    assert refused.exit_code == 3, refused.error
    assert "may be stale" in refused.error.message and old.isoformat() in refused.error.message
    assert "nothing was touched" in refused.error.message and "--force" in refused.error.hint
    with box.connect() as conn:
        assert database_state(conn) == live
    forced = box.run("db_restore", options={**CONFIRM, "force": True})
    assert_restored(forced)
    assert forced.steps[0].figures["snapshot_age_hours"] > 119


def test_snapshot_without_a_record_is_of_unknown_age(sample_db):
    """A snapshot refreshed before the record existed (no comment, or someone else's) is refused without --force."""
    box = sample_db
    assert box.run("db_to_db").outcome == "success"
    for comment in (None, "refreshed by hand on Tuesday"):
        with box.connect("snapshot_db") as conn:
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(box.snapshot_db), sql.Literal(comment)))
        refused = box.run("db_restore", options=CONFIRM)
        assert refused.exit_code == 3, refused.error
        assert "no record of when its data was taken" in refused.error.message
        assert "age is unknown" in refused.error.message and "db_to_db" in refused.error.hint
    shown = box.cli("show", "fac-snapshot-db")  # says what db_restore will do with it, as it does
    assert shown.returncode == 0, shown.stderr
    assert "db_restore takes this snapshot only with --force" in shown.stdout and "refuses" not in shown.stdout
    forced = box.run("db_restore", options={**CONFIRM, "force": True})
    assert_restored(forced)
    assert forced.steps[0].figures["snapshot_age_hours"] == -1
