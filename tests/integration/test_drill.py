"""verify_backup, the restore drill, against real PostgreSQL and the moto server."""

from __future__ import annotations

import json

import pytest

from service import catalog, layout
from service.errors import IntegrityError, RestoreError
from service.sandbox import build_vcap

pytestmark = pytest.mark.integration

SCRATCH = "fac-restore-test-db"


def take_backup(box) -> catalog.Manifest:
    result = box.run("db_to_s3")
    assert result.outcome == "success", result.error
    return catalog.read_manifest(box.store(), result.steps[-1].figures["backup_id"])


def tampered_backup(box, tamper: str):
    """A backup whose dissemination_finding dump had a byte flipped in place ("flip") or bytes
    appended ("append"): returns the manifest, that table's entry and the dump's new size."""
    manifest = take_backup(box)
    store = box.store()
    entry = next(t for t in manifest.tables if t.table == "dissemination_finding")
    data = bytearray(store.get_bytes(entry.key))
    if tamper == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data += b"appended"
    store.put_bytes(entry.key, bytes(data))
    return manifest, entry, len(data)


@pytest.fixture
def scratch(sample_db, pg_server):
    """A scratch database bound as fac-restore-test-db, holding one table of its own."""
    name = pg_server.create_database()
    with pg_server.connect(name) as conn:
        conn.execute("CREATE TABLE keep_me (id int)")
        conn.execute("INSERT INTO keep_me VALUES (1), (2)")
    vcap = json.loads(build_vcap(sample_db.pg, sample_db.s3, db=sample_db.db, snapshot_db=sample_db.snapshot_db,
                                 media=sample_db.media, backups=sample_db.backups))
    vcap["aws-rds"].append(pg_server.rds_binding(SCRATCH, name))
    path = sample_db.tmp / "vcap-with-scratch.json"
    path.write_text(json.dumps(vcap), encoding="utf-8")
    sample_db.extra_env.update(FAC_BACKUP_VCAP_FILE=str(path), FAC_BACKUP_RESTORE_TEST_DB_SERVICE=SCRATCH)
    yield name
    pg_server.drop_database(name)


def scratch_tables(pg_server, name) -> list:
    with pg_server.connect(name) as conn:
        return conn.execute("SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
                            "('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()


def test_a_good_backup_passes_the_drill_by_default_the_newest(sample_db):
    """Without an id the newest complete backup is checked: every object's size, sha256 and TOC."""
    take_backup(sample_db)
    newest = take_backup(sample_db)
    result = sample_db.run("verify_backup")
    assert result.outcome == "success", result.error
    figures = result.steps[0].figures
    assert figures["backup_id"] == newest.id and figures["objects"] == len(newest.tables) + 2  # schema, privileges
    assert figures["checksums"] and figures["readable"] and figures["restored_tables"] == 0
    assert figures["backup_started_at"] == newest.started_at


@pytest.mark.parametrize("tamper", ["flip a byte", "append bytes"])
def test_a_tampered_dump_fails_the_drill_naming_the_table(sample_db, tamper):
    """One dump changed (a byte flipped in place, or grown): the drill fails and names that table."""
    m, _entry, _size = tampered_backup(sample_db, "flip" if tamper == "flip a byte" else "append")
    result = sample_db.run("verify_backup", m.id)
    assert result.outcome == "failure" and isinstance(result.error, IntegrityError)
    message = result.error.message
    assert f"table public.dissemination_finding in backup {m.id}" in message
    assert ("altered" in message) or ("not readable by pg_restore" in message)


def test_a_dump_pg_restore_cannot_read_fails_the_drill(sample_db):
    """A legacy backup (no checksums) whose dump is not an archive fails on `pg_restore --list`."""
    take_backup(sample_db)
    sample_db.store().put_bytes("backups/daily-01-02/public-audit.dump", b"not a custom-format archive")
    result = sample_db.run("verify_backup", "daily-01-02")
    assert result.outcome == "failure" and isinstance(result.error, IntegrityError)
    assert "not readable by pg_restore" in result.error.message


def test_the_drill_restores_into_the_scratch_database_and_leaves_it_as_it_was(sample_db, scratch, pg_server):
    """With a scratch binding the backup is restored there with the restore code, checked, rolled back."""
    m = take_backup(sample_db)
    before = scratch_tables(pg_server, scratch)
    result = sample_db.run("verify_backup")
    assert result.outcome == "success", result.error
    assert result.steps[0].figures["restored_tables"] == len(m.tables)
    assert scratch_tables(pg_server, scratch) == before == [("public", "keep_me")]
    with pg_server.connect(scratch) as conn:
        assert conn.execute("SELECT count(*) FROM keep_me").fetchone()[0] == 2


def test_row_counts_that_differ_from_the_manifest_fail_the_drill(sample_db, scratch, pg_server):
    """Dumps intact but a manifest count wrong: the rehearsal's row-count check fails the drill."""
    m = take_backup(sample_db)
    first = m.tables[0]
    wrong = catalog.Manifest(**{**m.__dict__, "tables": (
        catalog.TableEntry(first.schema, first.table, first.key, first.bytes, first.sha256, first.rows + 1),
        *m.tables[1:])})
    sample_db.store().put_bytes(layout.manifest_key(m.id), wrong.to_json())
    result = sample_db.run("verify_backup", m.id)
    assert result.outcome == "failure" and isinstance(result.error, RestoreError)
    assert f"expected {first.rows + 1}" in result.error.detail
    assert scratch_tables(pg_server, scratch) == [("public", "keep_me")]
