"""db_to_s3 against a real PostgreSQL and a moto S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading

import pytest

from service import catalog, layout
from service.sandbox import find_pg_program
from tests.fakes import dies_halfway, drops_table_first, make_pg_bin, s3_internal_error, waits_for

pytestmark = pytest.mark.integration


def table_counts(conn) -> dict[str, int]:
    from service.database import count_rows, list_user_tables

    return {t.qualified: count_rows(conn, t.schema, t.name) for t in list_user_tables(conn)}


def only_backup(box) -> catalog.BackupSummary:
    (backup,) = catalog.list_backups(box.store())
    return backup


def test_every_table_of_every_schema_is_dumped_with_a_manifest(sample_db):
    """One custom-format object per table, schema.dump, and a manifest whose rows, sizes and sha256 match."""
    result = sample_db.run("db_to_s3")
    assert result.outcome == "success", result.error
    backup = only_backup(sample_db)
    assert backup.complete and backup.id.startswith("on-demand-")
    m = backup.manifest
    with sample_db.connect() as conn:
        expected = table_counts(conn)
    assert {f"{t.schema}.{t.table}": t.rows for t in m.tables} == expected
    assert "support.cog_over" in expected and 'public.Odd Name "quoted" é' in expected
    store = sample_db.store()
    for entry in m.tables:
        assert entry.key == layout.table_key(m.id, entry.schema, entry.table)
        data = store.get_bytes(entry.key)
        assert data[:5] == b"PGDMP" and len(data) == entry.bytes
        assert hashlib.sha256(data).hexdigest() == entry.sha256
    assert store.get_bytes(m.schema["key"])[:5] == b"PGDMP"
    raw = json.loads(store.get_bytes(layout.manifest_key(m.id)))
    for field in ("id", "job", "started_at", "finished_at", "server_version", "pg_dump_version", "tables"):
        assert field in raw
    assert raw["started_at"][-6] in "+-"  # ISO 8601 with an offset


def test_one_table_restores_with_stock_pg_restore(sample_db, pg_server):
    """Any single table dump loads into an empty database with plain pg_restore."""
    assert sample_db.run("db_to_s3").outcome == "success"
    m = only_backup(sample_db).manifest
    entry = next(t for t in m.tables if t.table == "dissemination_finding")
    target = pg_server.create_database()
    try:
        with pg_server.connect_as_owner(target) as conn:
            conn.execute("CREATE TABLE public.dissemination_general (report_id text PRIMARY KEY)")
        restore = subprocess.run(  # as an operator would, with the target binding's role and password
            [find_pg_program("pg_restore"), "--no-owner", "-d", target, "--exit-on-error",
             "--section=pre-data", "--section=data"],
            input=sample_db.store().get_bytes(entry.key), capture_output=True,
            env=dict(os.environ, **pg_server.owner_env(target)))
        assert restore.returncode == 0, restore.stderr.decode()
        with pg_server.connect(target) as conn:
            assert conn.execute("SELECT count(*) FROM public.dissemination_finding").fetchone()[0] == entry.rows
    finally:
        pg_server.drop_database(target)


def test_scheduled_backup_runs_end_to_end_from_the_cli(sample_db):
    """`python -m service run scheduled_backup` exits 0 and leaves a complete scheduled-mm-dd-HH backup."""
    done = sample_db.cli("run", "scheduled_backup")
    assert done.returncode == 0, done.stderr + done.stdout
    backup = only_backup(sample_db)
    assert backup.complete and backup.id.startswith("scheduled-") and backup.job == "scheduled_backup"
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "job.finished" and events[-1]["outcome"] == "success"


def test_a_second_run_never_overwrites_the_first(sample_db):
    """Two backups in the same minute get distinct ids; both stay complete."""
    from datetime import UTC, datetime

    def same_minute():
        return datetime(2025, 6, 4, 17, 30, tzinfo=UTC)

    assert sample_db.run("db_to_s3", clock=same_minute).outcome == "success"
    assert sample_db.run("db_to_s3", clock=same_minute).outcome == "success"
    ids = sorted(b.id for b in catalog.list_backups(sample_db.store()) if b.complete)
    assert ids == ["on-demand-202506041030", "on-demand-202506041030-2"]


def test_secrets_never_reach_the_output(sample_db):
    """Neither the database passwords nor the S3 keys appear in stdout or stderr of a run."""
    secrets = sample_db.config().secrets()
    assert len(secrets) == 6  # two passwords, two key ids, two secret keys: all random, all distinct
    done = sample_db.cli("run", "db_to_s3")
    assert done.returncode == 0
    assert not [s for s in secrets if s in done.stdout + done.stderr]


def assert_nothing_left(box, done, *words, exit_code: int = 1):
    """The failure contract: non-zero exit, no manifest, no open upload, no partial dumps, a clear message."""
    assert done.returncode == exit_code, done.stdout + done.stderr
    backups = catalog.list_backups(box.store())
    assert not any(b.complete for b in backups)
    assert list(catalog.list_backup_objects(box.store())) == []
    assert box.open_uploads() == []
    for word in words:
        assert word in done.stderr, done.stderr


def test_pg_dump_dying_halfway_leaves_no_backup(sample_db, tmp_path):
    """A pg_dump killed mid-stream (here after 6 MiB of a multipart upload) fails the run cleanly."""
    with sample_db.connect() as conn:
        conn.execute("CREATE TABLE public.big AS SELECT i, md5(i::text) || md5((i * 3)::text) AS v "
                     "FROM generate_series(1, 400000) i")
    bin_dir = make_pg_bin(tmp_path / "bin", pg_dump=dies_halfway("public", "big", 6 * 1024 * 1024))
    done = sample_db.cli("run", "db_to_s3",
                         env=dict(sample_db.environ, FAC_BACKUP_PG_BIN=str(bin_dir), FAC_BACKUP_MIN_PART_MIB="5",
                                  FAC_BACKUP_COMPRESSION="0"))
    assert_nothing_left(sample_db, done, "public.big", "pg_dump was killed by SIGKILL")


def test_s3_failing_mid_upload_leaves_no_backup(sample_db):
    """S3 answering 500 to every attempt at one part fails the run, aborts the upload, writes no manifest."""
    from service.storage import S3ObjectStore

    with sample_db.connect() as conn:
        conn.execute("CREATE TABLE public.big AS SELECT i, md5(i::text) || md5((i * 3)::text) AS v "
                     "FROM generate_series(1, 300000) i")

    def failing_store(binding):
        store = S3ObjectStore(binding)

        def fail_part_two(request, **_):
            return s3_internal_error(request.url) if "partNumber=2" in request.url else None

        store.client.meta.events.register("before-send.s3.UploadPart", fail_part_two)
        return store

    config_env = {"FAC_BACKUP_MIN_PART_MIB": "5", "FAC_BACKUP_COMPRESSION": "0"}
    sample_db.extra_env.update(config_env)
    result = sample_db.run("db_to_s3", store_factory=failing_store)
    assert result.outcome == "failure" and result.exit_code == 1
    assert "public.big" in result.error.message and "UPLOAD PART" in result.error.message
    assert not any(b.complete for b in catalog.list_backups(sample_db.store()))
    assert sample_db.open_uploads() == []
    assert list(catalog.list_backup_objects(sample_db.store())) == []


def test_a_table_dropped_during_the_backup_fails_it(sample_db, tmp_path):
    """A table that disappears after the snapshot makes the backup fail, naming the table."""
    bin_dir = make_pg_bin(tmp_path / "bin", pg_dump=drops_table_first("public", "dissemination_finding"))
    done = sample_db.cli("run", "db_to_s3", env=dict(sample_db.environ, FAC_BACKUP_PG_BIN=str(bin_dir)))
    assert_nothing_left(sample_db, done, "public.dissemination_finding", "does not exist")


def test_pg_dump_older_than_the_server_is_refused(sample_db, tmp_path):
    """A pg_dump of an older major version stops the run (exit 2: install the client) before anything is written."""
    bin_dir = make_pg_bin(tmp_path / "bin", pg_dump='echo "pg_dump (PostgreSQL) 12.4"')
    done = sample_db.cli("run", "db_to_s3", env=dict(sample_db.environ, FAC_BACKUP_PG_BIN=str(bin_dir)))
    assert_nothing_left(sample_db, done, "older than the server", "postgresql-client-15", exit_code=2)


def test_tables_of_one_backup_show_one_moment(sandbox, tmp_path, pg_server):
    """While a writer moves money between two tables, the backup's two tables still balance."""
    with sandbox.connect() as conn:
        conn.execute("CREATE TABLE public.account_a (id int PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute("CREATE TABLE public.account_b (id int PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute("INSERT INTO public.account_a SELECT i, 1000 FROM generate_series(1, 100) i")
        conn.execute("INSERT INTO public.account_b SELECT i, 1000 FROM generate_series(1, 100) i")
    flag = tmp_path / "go"
    stop = threading.Event()
    moves = []

    def writer():
        with sandbox.connect() as conn:
            n = 0
            while not stop.is_set():
                n += 1
                with conn.transaction():
                    conn.execute("UPDATE public.account_a SET balance = balance - 7 WHERE id = %s", (n % 100 + 1,))
                    conn.execute("UPDATE public.account_b SET balance = balance + 7 WHERE id = %s", (n % 100 + 1,))
                moves.append(n)
                if len(moves) == 50:
                    flag.touch()  # account_b's dump starts only after many moves past the snapshot

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        bin_dir = make_pg_bin(tmp_path / "bin", pg_dump=waits_for("public", "account_b", flag))
        done = sandbox.cli("run", "db_to_s3", env=dict(sandbox.environ, FAC_BACKUP_PG_BIN=str(bin_dir)))
    finally:
        stop.set()
        thread.join()
    assert done.returncode == 0, done.stderr
    assert len(moves) >= 50
    m = only_backup(sandbox).manifest
    target = pg_server.create_database()
    try:
        for entry in m.tables:
            subprocess.run([find_pg_program("pg_restore"), "--no-owner", "-d", target, "--exit-on-error"],
                           input=sandbox.store().get_bytes(entry.key), check=True, capture_output=True,
                           env=dict(os.environ, **pg_server.owner_env(target)))
        with pg_server.connect(target) as conn:
            total = conn.execute("SELECT (SELECT sum(balance) FROM account_a) + "
                                 "(SELECT sum(balance) FROM account_b)").fetchone()[0]
    finally:
        pg_server.drop_database(target)
    assert total == 200 * 1000


def test_sigterm_mid_backup_aborts_cleanly(sample_db, tmp_path):
    """SIGTERM while a multipart upload is open: exit 5 within seconds, upload aborted, no manifest."""
    import signal
    import sys
    import time

    from tests.conftest import REPO
    from tests.fakes import stalls_after

    with sample_db.connect() as conn:
        conn.execute("CREATE TABLE public.big AS SELECT i, md5(i::text) || md5((i * 3)::text) AS v "
                     "FROM generate_series(1, 300000) i")
    bin_dir = make_pg_bin(tmp_path / "bin", pg_dump=stalls_after("public", "big", 7 * 1024 * 1024))
    env = dict(sample_db.environ, FAC_BACKUP_PG_BIN=str(bin_dir), FAC_BACKUP_MIN_PART_MIB="5",
               FAC_BACKUP_COMPRESSION="0")
    proc = subprocess.Popen([sys.executable, "-m", "service", "run", "db_to_s3"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not sample_db.open_uploads():
        assert proc.poll() is None and time.monotonic() < deadline, "no multipart upload was opened"
        time.sleep(0.1)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert proc.returncode == 5, err
    assert "cancelled" in err and "SIGTERM" in err
    assert sample_db.open_uploads() == []
    assert not any(b.complete for b in catalog.list_backups(sample_db.store()))
    assert '"event": "job.aborted"' in out


def test_a_table_locked_by_a_migration_fails_the_backup_instead_of_hanging(sample_db):
    """A table held in ACCESS EXCLUSIVE mode makes the backup fail after the lock wait, naming the table."""
    import time

    with sample_db.connect() as migration:
        migration.execute("BEGIN")
        migration.execute("LOCK TABLE public.dissemination_finding IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        done = sample_db.cli("run", "db_to_s3", env=dict(sample_db.environ, FAC_BACKUP_DUMP_LOCK_WAIT_SECONDS="2"))
        migration.execute("ROLLBACK")
    assert time.monotonic() - started < 60
    assert_nothing_left(sample_db, done, "public.dissemination_finding", "LOCK TABLE")


def test_a_backup_reads_the_catalog_once(sample_db, monkeypatch):
    """The previous backup serves both the progress estimate and the integrity watch: one listing of
    backups/ per backup (in production, hundreds of backups of sixty-odd objects each)."""
    first = sample_db.run("db_to_s3")
    assert first.outcome == "success", first.error
    listings = []
    real = catalog.list_backup_objects
    monkeypatch.setattr(catalog, "list_backup_objects",
                        lambda store, *a, **k: listings.append(1) or real(store, *a, **k))
    second = sample_db.run("db_to_s3")
    assert second.outcome == "success", second.error
    assert len(listings) == 1
    # ... and the one read served the watch: the second backup was compared with the first.
    assert second.steps[0].figures["integrity_baseline"] == first.steps[0].figures["backup_id"]
