"""s3_restore and db_restore against real PostgreSQL and the moto server.

Every test asserts the state of fac-db afterwards: restored exactly, or left
exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from service import catalog, layout
from service.finder import find_backup
from service.sandbox import find_pg_program
from service.tasks import restore
from tests.fingerprint import fingerprint

pytestmark = pytest.mark.integration

CONFIRM = {"confirm": "fac-db"}
ODD = '"Odd Name ""quoted"" é"'


def database_state(conn) -> dict:
    """Everything a restore must bring back: tables with their columns and rows, sequences,
    the view, the enum, schemas, indexes and constraints."""
    state: dict = {}
    tables = conn.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE' "
        "ORDER BY 1, 2").fetchall()
    for schema, table in tables:
        name = '"{}"."{}"'.format(schema.replace('"', '""'), table.replace('"', '""'))
        rows = conn.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                            f"FROM {name} t").fetchone()
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position", (schema, table)).fetchall()
        state[f"table {schema}.{table}"] = (rows, columns)
    state["sequences"] = conn.execute(
        "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2").fetchall()
    state["view"] = conn.execute("SELECT * FROM public.dissemination_summary ORDER BY 1").fetchall()
    state["enum"] = conn.execute("SELECT enum_range(NULL::public.audit_status)::text").fetchone()
    state["schemas"] = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
        "AND nspname <> 'information_schema' ORDER BY 1").fetchall()
    state["indexes"] = conn.execute(
        "SELECT schemaname, indexname, indexdef FROM pg_indexes "
        "WHERE schemaname NOT IN ('pg_catalog') ORDER BY 1, 2").fetchall()
    state["constraints"] = conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema') "
        "ORDER BY 1, 2").fetchall()
    return state


def database_state_tables(conn) -> dict:
    """Row count and content hash per table (usable when the view or the enum are gone)."""
    out = {}
    for schema, table in conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
            "('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall():
        name = '"{}"."{}"'.format(schema.replace('"', '""'), table.replace('"', '""'))
        out[f"{schema}.{table}"] = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {name} t"
        ).fetchone()
    return out


def assert_restored(result) -> None:
    """The restore step and the media step after it both succeeded."""
    assert result.steps and result.steps[0].outcome == "success", str(result.error)
    assert result.outcome == "success", result.error


def take_backup(box) -> str:
    result = box.run("db_to_s3")
    assert result.outcome == "success", result.error
    return result.steps[-1].figures["backup_id"]


def break_database(conn) -> None:
    """Damage of every kind an operator might need to undo."""
    conn.execute("DROP TABLE public.dissemination_finding")
    conn.execute("ALTER TABLE public.lookup_00 ALTER COLUMN label TYPE varchar(5) USING left(label, 5)")
    conn.execute("DELETE FROM public.dissemination_federalaward WHERE id % 2 = 0")
    conn.execute("DROP SCHEMA support CASCADE")
    conn.execute("SELECT setval('public.report_number_seq', 5)")
    conn.execute(f"UPDATE public.{ODD} SET \"Label\" = 'changed'")
    conn.execute("CREATE TABLE public.stray (x int)")


def pre_restore_ids(box) -> list[str]:
    return [b.id for b in catalog.list_backups(box.store()) if b.id.startswith("pre-restore-") and b.complete]


def test_round_trip_repairs_every_kind_of_damage(sample_db):
    """Backup, damage (dropped table, altered column, deleted rows, dropped schema, sequence), restore: identical."""
    with sample_db.connect() as conn:
        before, whole = database_state(conn), fingerprint(conn)
    backup_id = take_backup(sample_db)
    with sample_db.connect() as conn:
        break_database(conn)
        assert database_state(conn) != before
    result = sample_db.run("s3_restore", backup_id, options=CONFIRM)
    assert_restored(result)
    with sample_db.connect() as conn:
        after = database_state(conn)
        assert fingerprint(conn) == whole  # functions, triggers, materialized views, privileges too
    assert after == before
    assert ("public", "report_number_seq", 4242) in after["sequences"]
    figures = result.steps[0].figures
    assert figures["pre_restore_backup"] in pre_restore_ids(sample_db)


def test_refused_without_confirmation(sample_db):
    """Without --confirm fac-db (or with another name) the restore exits 3 and touches nothing."""
    backup_id = take_backup(sample_db)
    with sample_db.connect() as conn:
        conn.execute("DELETE FROM public.lookup_01")
        before = database_state(conn)
    for options in ({}, {"confirm": "fac-snapshot-db"}):
        result = sample_db.run("s3_restore", backup_id, options=options)
        assert result.exit_code == 3 and result.steps == ()
    cli = sample_db.cli("run", "s3_restore", backup_id)
    assert cli.returncode == 3, cli.stderr
    assert "--confirm fac-db" in cli.stderr
    db_cli = sample_db.cli("run", "db_restore")
    assert db_cli.returncode == 3, db_cli.stderr
    with sample_db.connect() as conn:
        assert database_state(conn) == before
    assert pre_restore_ids(sample_db) == []


def test_tampered_dump_refused_before_anything_changed(sample_db):
    """A dump whose bytes changed (same size) stops the restore before fac-db changes, naming the table."""
    backup_id = take_backup(sample_db)
    store = sample_db.store()
    key = layout.table_key(backup_id, "public", "dissemination_general")
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 0xFF
    store.put_bytes(key, bytes(data))
    with sample_db.connect() as conn:
        conn.execute("DELETE FROM public.lookup_02 WHERE code <> 'c1'")
        before = database_state(conn)
    result = sample_db.run("s3_restore", backup_id, options=CONFIRM)
    assert result.outcome == "failure"
    assert "public.dissemination_general" in result.error.message
    with sample_db.connect() as conn:
        assert database_state(conn) == before
    assert pre_restore_ids(sample_db) == []


def test_missing_dump_refused_naming_the_table(sample_db):
    """A dump deleted from the backup stops the restore before anything changed, naming the table."""
    backup_id = take_backup(sample_db)
    sample_db.store().delete_objects([layout.table_key(backup_id, "support", "cog_over")])
    with sample_db.connect() as conn:
        before = database_state(conn)
    result = sample_db.run("s3_restore", backup_id, options=CONFIRM)
    assert result.outcome == "failure" and "support.cog_over" in result.error.message
    with sample_db.connect() as conn:
        assert database_state(conn) == before


def _terminate_when_idle_in_transaction(box, stop: threading.Event, done: list, seen: list | None = None) -> None:
    """Find the restore's psql by application_name once it waits inside its transaction; kill it.
    `seen` collects what its sessions were doing meanwhile (state, wait event), for a failure's message."""
    deadline = time.monotonic() + 60
    with box.pg.connect() as conn:
        while time.monotonic() < deadline and not stop.is_set():
            rows = conn.execute(
                "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = %s", (restore.APPLICATION_NAME, box.db)).fetchall()
            idle = [pid for pid, state, *_ in rows if state == "idle in transaction"]
            if idle:
                conn.execute("SELECT pg_terminate_backend(%s)", (idle[0],))
                done.append(idle[0])
                return
            if seen is not None and rows and (not seen or seen[-1] != rows):
                seen.append(rows)
            time.sleep(0.01)


def test_connection_terminated_mid_load_leaves_database_unchanged(sample_db, monkeypatch):
    """pg_terminate_backend of the restore's session after some tables loaded: fac-db is exactly as before."""
    backup_id = take_backup(sample_db)
    with sample_db.connect() as conn:
        break_database(conn)
        before = database_state_tables(conn)
    loaded = []
    gate = threading.Event()
    original = restore._load_object

    def load_then_pause(ctx, session, reader, argv, env, expect, what):
        original(ctx, session, reader, argv, env, expect, what)
        loaded.append(what)
        if len(loaded) == 4:  # schema pre-data and three tables are in the open transaction
            gate.wait(60)  # hold here until the session has been terminated

    monkeypatch.setattr(restore, "_load_object", load_then_pause)
    done: list = []
    seen: list = []
    stop = threading.Event()
    killer = threading.Thread(target=_terminate_when_idle_in_transaction, args=(sample_db, stop, done, seen))
    killer.start()

    def release():
        killer.join(60)
        gate.set()

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        result = sample_db.run("s3_restore", backup_id, options=CONFIRM)
    finally:
        stop.set()
        gate.set()
        releaser.join()
    assert done, f"the restore session was never seen idle in its transaction; seen: {seen[-5:]}"
    assert result.outcome == "failure"
    assert "nothing was committed" in str(result.error)
    with sample_db.connect() as conn:
        assert database_state_tables(conn) == before
        assert conn.execute("SELECT to_regclass('public.dissemination_finding')").fetchone()[0] is None


def test_restore_into_an_empty_database(sample_db):
    """Every object is recreated in a database with no user objects at all (no pre-restore backup needed)."""
    with sample_db.connect() as conn:
        before, whole = database_state(conn), fingerprint(conn)
    backup_id = take_backup(sample_db)
    with sample_db.connect() as conn:
        for (schema,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname IN "
                                      "('public', 'support', 'curation', 'api_v1_1_0')").fetchall():
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.execute("DROP TYPE IF EXISTS public.audit_status")
    result = sample_db.run("s3_restore", backup_id, options=CONFIRM)
    assert_restored(result)
    assert result.steps[0].figures["pre_restore_backup"] == ""
    with sample_db.connect() as conn:
        assert database_state(conn) == before
        assert fingerprint(conn) == whole


def write_legacy_backup(box, prefix: str) -> None:
    """Every public table as the old tool wrote it: one `pg_dump -Fc -t` each, no manifest."""
    db = box.config().fac_db
    with box.connect() as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    for (table,) in tables:
        pattern = '"public"."{}"'.format(table.replace('"', '""'))
        dump = subprocess.run(["pg_dump", "-Fc", "-t", pattern, "-h", db.host, "-p", str(db.port),
                               "-U", db.username, db.dbname], check=True, capture_output=True,
                              env=dict(os.environ, PGPASSWORD=db.password)).stdout
        box.store().put_bytes(f"{prefix}public-{table}.dump", dump)


def test_legacy_backup_without_manifest(sample_db):
    """Dumps written by plain `pg_dump -Fc -t` with no manifest replace the rows in one transaction,
    with a warning, keeping the view, the enum and every other definition of fac-db."""
    box = sample_db
    with box.connect() as conn:
        before = database_state(conn)
    write_legacy_backup(box, "backups/scheduled/06-04-10/")
    with box.connect() as conn:
        conn.execute("DELETE FROM public.dissemination_federalaward")
        conn.execute("DELETE FROM public.lookup_02")
        conn.execute(f"UPDATE public.{ODD} SET \"Label\" = 'x'")
    from structlog.testing import capture_logs
    with capture_logs() as logs:
        result = box.run("s3_restore", "scheduled-06-04-10", options=CONFIRM)
    assert_restored(result)
    assert any(e["event"] == "restore.legacy_unverifiable" for e in logs)
    with box.connect() as conn:
        assert database_state(conn) == before
    refused = box.run("s3_restore", "scheduled/06-04-10")
    assert refused.exit_code == 3


def test_unknown_id_lists_nearest_complete_backups(sample_db):
    """An id that matches nothing fails clearly, listing the nearest complete backups; nothing touched."""
    backup_id = take_backup(sample_db)
    with sample_db.connect() as conn:
        before = database_state(conn)
    result = sample_db.run("s3_restore", "on-demand-199901010000", options=CONFIRM)
    assert result.outcome == "failure"
    assert "no backup matches" in result.error.message
    assert backup_id in result.error.detail
    with sample_db.connect() as conn:
        assert database_state(conn) == before


def test_pre_restore_backup_undoes_a_restore(sample_db):
    """The pre-restore backup taken by a restore holds the database as it was and can itself be restored."""
    backup_id = take_backup(sample_db)
    with sample_db.connect() as conn:
        conn.execute("DELETE FROM public.lookup_01 WHERE code <> 'c1'")
        conn.execute("CREATE TABLE public.added_later (x int)")
        conn.execute("INSERT INTO public.added_later VALUES (1), (2)")
        changed = database_state(conn)
    result = sample_db.run("s3_restore", backup_id, options=CONFIRM)
    assert_restored(result)
    pre = result.steps[0].figures["pre_restore_backup"]
    assert find_backup(sample_db.store(), pre).manifest.job == "s3_restore"
    undo = sample_db.run("s3_restore", pre, options=CONFIRM)
    assert_restored(undo)
    with sample_db.connect() as conn:
        assert database_state(conn) == changed


def test_db_restore_copies_the_snapshot_into_fac_db(sample_db):
    """db_restore replaces fac-db with fac-snapshot-db after a pre-restore backup; a stale snapshot needs --force."""
    box = sample_db
    assert box.run("on_demand_backup").outcome == "success"  # refreshes the snapshot and dates it
    with box.connect() as conn:
        expected = database_state(conn)
        conn.execute("DELETE FROM public.dissemination_federalaward")
        conn.execute("DROP SCHEMA support CASCADE")
    result = box.run("db_restore", options=CONFIRM)
    assert_restored(result)
    assert result.steps[0].figures["pre_restore_backup"] in pre_restore_ids(box)
    with box.connect() as conn:
        assert database_state(conn) == expected
    box.config(FAC_BACKUP_SNAPSHOT_MAX_AGE_HOURS="0")
    with box.connect() as conn:
        conn.execute("DELETE FROM public.lookup_02")
        stale_state = database_state(conn)
    stale = box.run("db_restore", options=CONFIRM)
    assert stale.exit_code == 3 and "stale" in stale.error.message
    with box.connect() as conn:
        assert database_state(conn) == stale_state
    forced = box.run("db_restore", options={**CONFIRM, "force": True})
    assert_restored(forced)
    with box.connect() as conn:
        assert database_state(conn) == expected


def test_db_restore_refuses_an_empty_snapshot(sample_db):
    """An empty fac-snapshot-db is refused even with --force: it would empty fac-db."""
    with sample_db.connect() as conn:
        before = database_state(conn)
    result = sample_db.run("db_restore", options={**CONFIRM, "force": True})
    assert result.exit_code == 3 and "no user tables" in result.error.message
    with sample_db.connect() as conn:
        assert database_state(conn) == before


def test_producer_dying_halfway_is_never_committed(sample_db, tmp_path):
    """A pg_restore that stops halfway with status 1, its output ending cleanly, never leads to COMMIT."""
    backup_id = take_backup(sample_db)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for program in ("pg_dump", "psql"):
        (bindir / program).symlink_to(shutil.which(program) or find_pg_program(program))
    real = shutil.which("pg_restore") or find_pg_program("pg_restore")
    fake = bindir / "pg_restore"
    # Data passes print their first 40 lines (ending inside a COPY, at a row boundary) and fail.
    fake.write_text(f'#!/bin/sh\ncase " $* " in *" --data-only "*) "{real}" "$@" | head -n 40; exit 1;; esac\n'
                    f'exec "{real}" "$@"\n')
    fake.chmod(0o755)
    with sample_db.connect() as conn:
        break_database(conn)
        before = database_state_tables(conn)
    sample_db.config(FAC_BACKUP_PG_BIN=str(bindir))
    result = sample_db.run("s3_restore", backup_id, options=CONFIRM)
    assert result.outcome == "failure"
    assert "pg_restore exited with status 1" in result.error.message
    with sample_db.connect() as conn:
        assert database_state_tables(conn) == before


def test_row_count_different_from_the_manifest_rolls_back(sample_db):
    """Loaded rows that differ from the manifest's count fail the restore inside the transaction."""
    backup_id = take_backup(sample_db)
    store = sample_db.store()
    manifest = json.loads(store.get_bytes(layout.manifest_key(backup_id)))
    entry = next(t for t in manifest["tables"] if t["table"] == "lookup_01")
    entry["rows"] += 1
    store.put_bytes(layout.manifest_key(backup_id), json.dumps(manifest).encode())
    with sample_db.connect() as conn:
        break_database(conn)
        before = database_state_tables(conn)
    result = sample_db.run("s3_restore", backup_id, options=CONFIRM)
    assert result.outcome == "failure"
    assert "row count of public.lookup_01 is 75, expected 76" in result.error.detail
    with sample_db.connect() as conn:
        assert database_state_tables(conn) == before
