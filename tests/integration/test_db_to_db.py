"""db_to_db against real PostgreSQL: equal copies, schema changes followed, and all or nothing.

The copies here run by the default, in-place method (no storage is set) and,
with room for both copies set, by the all-or-nothing one. Faults are injected
by name into the all-or-nothing copy: the target's loading backend terminated
mid-COPY, a source psql that dies halfway, one that stops early but exits 0,
one that sends a corrupt row, a pg_dump that dies, and a cancel. After each,
the snapshot database must be exactly what it was before the run. (The same
faults in place: tests/integration/test_snapshot_in_place.py.)
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time

import pytest

from service import jobs
from service.commands import CancelScope
from service.errors import ConfigError, SafetyError
from service.log import get_logger
from service.tasks.snapshot import APPLICATION_NAME, copy_database_between
from tests.fingerprint import assert_same_database, fingerprint

pytestmark = pytest.mark.integration


def snapshot_print(box) -> dict:
    with box.connect("snapshot_db") as conn:
        return fingerprint(conn)


def assert_snapshot_equals_source(box) -> None:
    with box.connect("db") as source, box.connect("snapshot_db") as target:
        assert_same_database(source, target)


def change_source(box) -> None:
    """A change a completed copy would carry over, so an unchanged target proves a rollback."""
    with box.connect("db") as conn:
        conn.execute("INSERT INTO public.lookup_00 VALUES ('new', 'added after the first copy')")
        conn.execute("SELECT nextval('public.report_number_seq')")
        conn.execute("CREATE TABLE public.added_later (id int)")


def copy_ok(box, method: str | None = None):
    result = box.run("db_to_db")
    assert result.outcome == "success", result.error
    if method is not None:
        assert result.steps[0].figures["method"] == method
    return result


ROOM_FOR_BOTH_GB = "1000"  # far beyond two copies of the sample data and the test server's other databases


def give_room_for_both(box) -> None:
    """Tell the service that fac-snapshot-db's storage holds two copies: the copy is all or nothing."""
    box.extra_env["FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB"] = ROOM_FOR_BOTH_GB


def test_copy_into_empty_target_equals_source(sample_db):
    """A first copy makes the snapshot equal to fac-db: tables, rows, sequences, views, types, schemas."""
    result = copy_ok(sample_db, "in_place")
    assert_snapshot_equals_source(sample_db)
    with sample_db.connect("snapshot_db") as conn:
        assert conn.execute("SELECT last_value FROM public.report_number_seq").fetchone()[0] == 4242
        assert conn.execute('SELECT "Label" FROM public."Odd Name ""quoted"" é" WHERE id = 2').fetchone()[0] == "two"
        assert conn.execute("SELECT sum(audits) FROM public.dissemination_summary").fetchone()[0] == 300
        assert conn.execute("SELECT count(*) FROM support.cog_over").fetchone()[0] == 30
        assert conn.execute("SELECT 'submitted'::public.audit_status").fetchone()[0] == "submitted"
    figures = result.steps[0].figures
    assert figures["tables"] == 13 and figures["rows"] > 1500 and figures["bytes"] > 0


def test_second_copy_replaces_a_populated_target(sample_db):
    """A copy into a snapshot that already has the tables replaces them with the source's current rows,
    in place and all or nothing alike."""
    copy_ok(sample_db)
    for method in ("in_place", "all_or_nothing"):
        with sample_db.connect("db") as conn:
            conn.execute("UPDATE public.dissemination_general SET notes = 'changed' WHERE id % 2 = 0")
            conn.execute("DELETE FROM public.dissemination_finding WHERE id % 5 = 0")
            conn.execute("SELECT nextval('public.report_number_seq')")
        if method == "all_or_nothing":
            give_room_for_both(sample_db)
        copy_ok(sample_db, method)
        assert_snapshot_equals_source(sample_db)


def test_schema_change_at_the_source_is_followed(sample_db):
    """A column added by a migration after the first copy appears in the snapshot with its values."""
    copy_ok(sample_db)
    with sample_db.connect("db") as conn:
        conn.execute("ALTER TABLE public.dissemination_general ADD COLUMN cog_agency text DEFAULT 'xx'")
        conn.execute("ALTER TABLE public.dissemination_general ADD COLUMN year2 int "
                     "GENERATED ALWAYS AS (audit_year * 2) STORED")
        conn.execute("ALTER TABLE public.lookup_00 DROP COLUMN label")
    copy_ok(sample_db)
    assert_snapshot_equals_source(sample_db)
    with sample_db.connect("snapshot_db") as conn:
        assert conn.execute("SELECT count(*) FROM public.dissemination_general "
                            "WHERE cog_agency = 'xx' AND year2 = audit_year * 2").fetchone()[0] == 300


def test_objects_gone_from_the_source_disappear(sample_db):
    """A table dropped at the source, and anything only the target had, are gone after the next copy."""
    copy_ok(sample_db)
    with sample_db.connect("db") as conn:
        conn.execute("DROP TABLE public.lookup_01")
    with sample_db.connect("snapshot_db") as conn:
        conn.execute("CREATE SCHEMA scratch; CREATE TABLE scratch.notes (t text); CREATE TABLE public.mine (x int)")
    copy_ok(sample_db)
    assert_snapshot_equals_source(sample_db)
    with sample_db.connect("snapshot_db") as conn:
        assert conn.execute("SELECT to_regclass('public.lookup_01'), to_regclass('public.mine'), "
                            "to_regnamespace('scratch')").fetchone() == (None, None, None)


# --- fault injection: fake PostgreSQL programs in FAC_BACKUP_PG_BIN -------------------------------

PSQL_FAULTS = {
    # half the table, then killed: the consumer sees a clean EOF
    "dies": '"$REAL" "$@" | head -c 30000; kill -KILL $$',
    # half the table, then a clean exit 0: only the stream's end marker and the counts can tell
    "stops_early": '"$REAL" "$@" | head -c 30000; exit 0',
    # a corrupt row in the middle of an otherwise whole stream
    "corrupts": '"$REAL" "$@" | { head -c 30000; printf "corrupt-bytes"; cat; }',
    # holds the stream half sent until the test writes into the gate
    "gated": '"$REAL" "$@" | { head -c 30000; read -r _ < "$GATE"; cat; }',
}


def install_fake_programs(box, tmp_path, psql_fault: str | None = None, pg_dump_fault: str | None = None) -> dict:
    """Wrappers around the real programs, faulty only for dissemination_general or the definitions."""
    bin_dir = tmp_path / "pgbin"
    bin_dir.mkdir()
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    for name, fault, match in (("psql", psql_fault, "*dissemination_general*\"TO STDOUT\"*"),
                               ("pg_dump", pg_dump_fault, "*--schema-only*"),
                               ("pg_restore", None, "")):
        real = shutil.which(name)
        body = f'case "$*" in {match}) {fault} ;; *) exec "$REAL" "$@" ;; esac' if fault else 'exec "$REAL" "$@"'
        script = f'#!/bin/bash\nset -o pipefail\nREAL={real}\nGATE={gate}\n{body}\n'
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    box.extra_env["FAC_BACKUP_PG_BIN"] = str(bin_dir)
    return {"gate": gate}


def open_gate(gate, deadline_seconds: float = 30.0) -> None:
    """Let a gated producer go on, once it waits at the gate (no reader yet: ENXIO)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    os.write(fd, b"go\n")
    os.close(fd)


def loading_backend(box, deadline_seconds: float = 30.0) -> int:
    """The pid of the target backend while the gated table's COPY ... FROM STDIN is in progress."""
    deadline = time.monotonic() + deadline_seconds
    with box.pg.connect() as admin:
        while time.monotonic() < deadline:
            row = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s "
                "AND state = 'active' AND query LIKE 'COPY %%dissemination_general%%FROM STDIN%%'",
                (box.snapshot_db, APPLICATION_NAME)).fetchone()
            if row:
                return row[0]
            time.sleep(0.02)
    raise AssertionError("the copy never reached its COPY FROM STDIN")


@pytest.mark.parametrize("fault", ["dies", "stops_early", "corrupts"])
def test_faulty_producer_leaves_the_target_unchanged(sample_db, tmp_path, fault):
    """A source psql that dies, stops early or sends a bad row fails the step and changes nothing."""
    give_room_for_both(sample_db)
    copy_ok(sample_db, "all_or_nothing")
    change_source(sample_db)
    before = snapshot_print(sample_db)
    install_fake_programs(sample_db, tmp_path, psql_fault=PSQL_FAULTS[fault])
    result = sample_db.run("db_to_db")
    assert result.outcome == "failure"
    assert "dissemination_general" in result.error.message
    assert "left as it was" in result.error.message
    assert snapshot_print(sample_db) == before


def test_producer_death_is_named_in_the_error(sample_db, tmp_path):
    """A producer killed halfway is reported as the program's death, not as a generic failure."""
    give_room_for_both(sample_db)
    install_fake_programs(sample_db, tmp_path, psql_fault=PSQL_FAULTS["dies"])
    result = sample_db.run("db_to_db")
    assert result.outcome == "failure"
    assert "psql was killed by SIGKILL" in result.error.message
    with sample_db.connect("snapshot_db") as conn:
        assert conn.execute("SELECT to_regclass('public.dissemination_general')").fetchone()[0] is None


def test_failing_pg_dump_leaves_the_target_unchanged(sample_db, tmp_path):
    """A pg_dump that dies while writing the definitions fails the step before the target is touched."""
    give_room_for_both(sample_db)
    copy_ok(sample_db, "all_or_nothing")
    change_source(sample_db)
    before = snapshot_print(sample_db)
    install_fake_programs(sample_db, tmp_path, pg_dump_fault='"$REAL" "$@" | head -c 300; exit 1')
    result = sample_db.run("db_to_db")
    assert result.outcome == "failure" and "pg_dump" in result.error.message
    assert snapshot_print(sample_db) == before


def copy_with_backend_terminated(box, tmp_path):
    """db_to_db whose loading backend is terminated (pg_terminate_backend) in the middle of a COPY."""
    fake = install_fake_programs(box, tmp_path, psql_fault=PSQL_FAULTS["gated"])

    def terminate_mid_copy():
        pid = loading_backend(box)
        with box.pg.connect() as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        open_gate(fake["gate"])

    killer = threading.Thread(target=terminate_mid_copy)
    killer.start()
    result = box.run("db_to_db")
    killer.join()
    return result


def copy_cancelled(box, tmp_path):
    """db_to_db whose run is cancelled (as SIGTERM does) in the middle of a COPY."""
    install_fake_programs(box, tmp_path, psql_fault=PSQL_FAULTS["gated"])
    scope = CancelScope()

    def cancel_mid_copy():
        loading_backend(box)
        scope.cancel("SIGTERM")

    canceller = threading.Thread(target=cancel_mid_copy)
    canceller.start()
    result = box.run("db_to_db", scope=scope)
    canceller.join()
    return result


def test_terminated_target_connection_mid_load_leaves_the_target_unchanged(sample_db, tmp_path):
    """pg_terminate_backend on the loading backend during COPY: the step fails and the snapshot is as before."""
    give_room_for_both(sample_db)
    copy_ok(sample_db, "all_or_nothing")
    change_source(sample_db)
    before = snapshot_print(sample_db)
    result = copy_with_backend_terminated(sample_db, tmp_path)
    assert result.outcome == "failure"
    assert "left as it was" in result.error.message and "connection" in result.error.hint
    assert snapshot_print(sample_db) == before


def test_cancel_mid_load_leaves_the_target_unchanged(sample_db, tmp_path):
    """A cancel of the run (SIGTERM) during COPY aborts it and the snapshot is as before."""
    give_room_for_both(sample_db)
    copy_ok(sample_db, "all_or_nothing")
    change_source(sample_db)
    before = snapshot_print(sample_db)
    result = copy_cancelled(sample_db, tmp_path)
    assert result.outcome == "aborted"
    assert snapshot_print(sample_db) == before


# --- the target is never fac-db --------------------------------------------------------------------

def test_snapshot_binding_pointing_at_fac_db_is_refused(sandbox):
    """A configuration whose snapshot binding is fac-db's database is refused before anything starts."""
    sandbox.snapshot_db = sandbox.db
    with pytest.raises(ConfigError) as caught:
        sandbox.config()
    assert "would overwrite the live database" in caught.value.detail


def test_copy_refuses_fac_db_as_target_unless_allowed(sample_db):
    """copy_database_between refuses fac-db as a target unless the caller allows it explicitly."""
    config = sample_db.config()
    copy_ok(sample_db)
    with sample_db.connect("db") as conn:
        conn.execute("CREATE TABLE public.only_live (x int)")
    ctx = jobs.JobContext(config, jobs.get_job("db_to_db"), "test", log=get_logger())
    with pytest.raises(SafetyError, match="live database"):
        copy_database_between(ctx, config.snapshot_db, config.fac_db)
    with pytest.raises(SafetyError, match="onto itself"):
        copy_database_between(ctx, config.fac_db, config.fac_db, allow_live_target=True)
    with sample_db.connect("db") as conn:
        assert conn.execute("SELECT to_regclass('public.only_live')").fetchone()[0] is not None
    figures = copy_database_between(ctx, config.snapshot_db, config.fac_db, allow_live_target=True)
    assert figures["tables"] == 13
    with sample_db.connect("db") as conn:
        assert conn.execute("SELECT to_regclass('public.only_live')").fetchone()[0] is None


# --- through the registry --------------------------------------------------------------------------

def test_on_demand_backup_runs_db_to_db_end_to_end(sample_db):
    """on_demand_backup counts, dumps, copies the snapshot and syncs media; the snapshot equals fac-db."""
    result = sample_db.run("on_demand_backup")
    steps = {s.name: s.outcome for s in result.steps}
    assert steps["db_to_db"] == "success", result.error
    assert result.outcome == "success", result.error
    assert [s.name for s in result.steps] == ["row_count", "db_to_s3", "db_to_db", "media_sync"]
    assert_snapshot_equals_source(sample_db)
