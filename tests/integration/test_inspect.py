"""`list`, `show` and `verify` as an operator runs them (`python -m service ...` in a child process)."""

from __future__ import annotations

import json

import pytest

from service import layout
from tests.integration.test_restore import database_state_tables, take_backup

pytestmark = pytest.mark.integration


def test_list_shows_complete_and_incomplete_backups(sample_db):
    """Complete (manifest), incomplete (ours, no manifest) and legacy (old tool, flat or nested) backups."""
    backup_id = take_backup(sample_db)
    store = sample_db.store()
    store.put_bytes("backups/daily-06-04/schema.dump", b"half a backup")
    store.put_bytes("backups/daily-06-04/public-x.dump", b"half a backup")
    store.put_bytes("backups/initial-202401010000/public-x.dump", b"old tool")
    store.put_bytes("backups/scheduled/06-04-10/public-x.dump", b"old tool")
    store.put_bytes("backups/scheduled/06-04-10/public-y.dump", b"old tool")
    out = sample_db.cli("list", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in json.loads(out.stdout)}
    assert rows[backup_id]["complete"] and rows[backup_id]["tables"] == 14 and not rows[backup_id]["legacy"]
    assert rows["daily-06-04"]["complete"] is False and rows["daily-06-04"]["legacy"] is False
    assert rows["initial-202401010000"]["legacy"] is True
    assert rows["scheduled/06-04-10"]["legacy"] is True and rows["scheduled/06-04-10"]["tables"] == 2
    text = sample_db.cli("list")
    assert backup_id in text.stdout and "INCOMPLETE" in text.stdout and "LEGACY" in text.stdout
    with sample_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM support.cog_over").fetchone()[0] == 30


def test_show_prints_tables_rows_bytes_times_and_versions(sample_db):
    """`show` prints the manifest; `--json` carries the same figures as the manifest itself."""
    backup_id = take_backup(sample_db)
    with sample_db.connect() as conn:
        before = database_state_tables(conn)
    text = sample_db.cli("show", backup_id)
    assert text.returncode == 0, text.stderr
    for expected in (backup_id, "public.dissemination_general", "support.cog_over", 'Odd Name "quoted" é',
                     "pg_dump", "started", "finished", "once restored (tables with their indexes"):
        assert expected in text.stdout
    data = json.loads(sample_db.cli("show", backup_id, "--json").stdout)
    rows = {f"{t['schema']}.{t['table']}": t["rows"] for t in data["tables"]}
    assert rows == {k: v[0] for k, v in before.items()}
    # The restored size: every table's on-disk size with its indexes, as the manifest recorded it.
    sizes = {f"{s}.{t}": n for s, t, n in data["disk"]["tables"]}
    assert set(sizes) == set(rows) and data["disk"]["restored_bytes"] >= sum(sizes.values()) > 0
    with sample_db.connect() as conn:
        assert sizes["public.dissemination_general"] == conn.execute(
            "SELECT pg_total_relation_size('public.dissemination_general')").fetchone()[0]
    assert data["legacy"] is False and data["server_version"] and data["schema"]["sha256"]
    missing = sample_db.cli("show", "daily-01-01")
    assert missing.returncode == 1 and backup_id in missing.stderr  # nearest complete backups
    with sample_db.connect() as conn:
        assert database_state_tables(conn) == before


def test_verify_passes_then_names_an_altered_dump(sample_db):
    """`verify` succeeds on an intact backup and fails naming the table whose dump changed."""
    backup_id = take_backup(sample_db)
    with sample_db.connect() as conn:
        before = database_state_tables(conn)
    ok = sample_db.cli("verify", backup_id)
    assert ok.returncode == 0, ok.stderr
    assert "OK, 16 objects" in ok.stdout
    store = sample_db.store()
    key = layout.table_key(backup_id, "support", "cog_over")
    data = bytearray(store.get_bytes(key))
    data[-3] ^= 0x01
    store.put_bytes(key, bytes(data))
    bad = sample_db.cli("verify", backup_id)
    assert bad.returncode == 1
    assert "support.cog_over" in bad.stderr and "altered" in bad.stderr
    with sample_db.connect() as conn:
        assert database_state_tables(conn) == before


def test_verify_legacy_backup_checks_each_dump_is_readable(sample_db):
    """A legacy backup has no checksums: `verify` says so, and fails on a dump pg_restore cannot read."""
    backup_id = take_backup(sample_db)
    store = sample_db.store()
    good = store.get_bytes(layout.table_key(backup_id, "public", "lookup_00"))
    store.put_bytes("backups/deploy/202501010000/public-lookup_00.dump", good)
    ok = sample_db.cli("verify", "deploy-202501010000")
    assert ok.returncode == 0, ok.stderr
    assert "no checksums" in ok.stdout
    shown = json.loads(sample_db.cli("show", "deploy/202501010000", "--json").stdout)
    assert shown["legacy"] is True and shown["tables"][0]["table"] == "lookup_00"
    store.put_bytes("backups/deploy/202501010000/public-lookup_01.dump", b"PGDMP but not really")
    bad = sample_db.cli("verify", "deploy-202501010000")
    assert bad.returncode == 1 and "public.lookup_01" in bad.stderr and "not readable" in bad.stderr
    with sample_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM public.lookup_00").fetchone()[0] == 50
