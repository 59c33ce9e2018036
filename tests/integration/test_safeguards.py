"""Safeguards the docs promise, each with a test that fails when the safeguard is removed.

Faults are injected deliberately: a session holding a lock the restore needs,
a producer that sends a well-formed but shorter stream, a cancel at a chosen
moment.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service import catalog
from service.commands import CancelScope
from service.errors import IntegrityError, JobAbortedError
from service.storage import MIN_PART_SIZE, S3ObjectStore
from service.tasks import restore, snapshot
from tests.conftest import REPO
from tests.fakes import dies_halfway, make_pg_bin, waits_for
from tests.integration.test_daemon import processes_mentioning
from tests.integration.test_db_to_db import give_room_for_both, snapshot_print
from tests.integration.test_drill import tampered_backup
from tests.integration.test_restore import CONFIRM, database_state, take_backup
from tests.integration.test_snapshot_age import snapshot_record

pytestmark = pytest.mark.integration

HOLD_AT_MOST = 40.0  # seconds the lock holder keeps its lock if the restore never gives up


class LockHolder:
    """A session of 'the application' inside a transaction that has read a table of fac-db:
    it holds ACCESS SHARE on it, which the restore's DROP must wait for."""

    def __init__(self, box, table: str = "public.lookup_00") -> None:
        self.conn = box.connect()
        self.conn.execute("BEGIN")
        self.conn.execute(f"SELECT count(*) FROM {table}")
        self.released = threading.Event()
        # If the restore never gives up, let it through eventually so that the test ends (and fails).
        self._timer = threading.Timer(HOLD_AT_MOST, self.release)
        self._timer.start()

    def release(self) -> None:
        if not self.released.is_set():
            self.released.set()
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self._timer.cancel()
        self.release()
        self.conn.close()


def prepare_restore(box, job: str) -> tuple[tuple[str, ...], object]:
    """Something to restore from (a backup, and for db_restore a fresh snapshot), then fac-db
    changed: returns the job's arguments and fac-db's state that the refused restore must keep."""
    backup_id = take_backup(box)
    if job == "db_restore":
        assert box.run("db_to_db").outcome == "success"
    with box.connect() as conn:
        conn.execute("DELETE FROM public.lookup_02")
        before = database_state(conn)
    return ((backup_id,) if job == "s3_restore" else ()), before


@pytest.mark.parametrize("job", ["s3_restore", "db_restore"])
def test_restore_gives_up_on_a_held_lock_after_the_configured_wait(sample_db, job):
    """A session holding a lock on fac-db: the restore waits FAC_BACKUP_RESTORE_LOCK_WAIT_SECONDS,
    then fails naming the lock timeout, and fac-db is unchanged."""
    box = sample_db
    args, before = prepare_restore(box, job)
    box.config(FAC_BACKUP_RESTORE_LOCK_WAIT_SECONDS="2")
    holder = LockHolder(box)
    try:
        started = time.monotonic()
        result = box.run(job, *args, options=CONFIRM)
        waited = time.monotonic() - started
        assert not holder.released.is_set(), "the restore waited until the holder let go"
    finally:
        holder.close()
    assert result.outcome == "failure", result.error
    assert "lock timeout" in f"{result.error.message} {result.error.detail}"
    assert waited < HOLD_AT_MOST
    with box.connect() as conn:
        assert database_state(conn) == before


# --- db_to_db: the row-count check before COMMIT ------------------------------------------------

# A source psql for lookup_01 that deletes five rows at the source, then streams the table without
# importing the backup's snapshot: a well-formed binary COPY (header, rows, trailer), exit 0, only
# shorter than the count taken in the snapshot. Nothing but the row-count check can tell.
SHORTER_STREAM = r'''#!/bin/bash
REAL=%(real)s
case "$*" in
  *'"lookup_01"'*"TO STDOUT"*)
    "$REAL" --no-psqlrc -q -c "DELETE FROM public.lookup_01 WHERE code IN
      (SELECT code FROM public.lookup_01 ORDER BY code LIMIT 5)" >/dev/null || exit 3
    args=()
    for a in "$@"; do
      case "$a" in "SET TRANSACTION SNAPSHOT"*) a="SET LOCAL work_mem = '4MB'" ;; esac
      args+=("$a")
    done
    exec "$REAL" "${args[@]}" ;;
  *) exec "$REAL" "$@" ;;
esac
'''


def install_programs(box, tmp_path, **scripts: str) -> None:
    """FAC_BACKUP_PG_BIN with the real programs, except `scripts` (name -> bash, %(real)s = the real one)."""
    bin_dir = tmp_path / "pgbin"
    bin_dir.mkdir()
    for name in ("pg_dump", "pg_restore", "psql"):
        real = shutil.which(name)
        if name in scripts:
            (bin_dir / name).write_text(scripts[name] % {"real": real})
            (bin_dir / name).chmod(0o755)
        else:
            (bin_dir / name).symlink_to(real)
    box.extra_env["FAC_BACKUP_PG_BIN"] = str(bin_dir)


@pytest.mark.parametrize("method", ["all_or_nothing", "in_place"])
def test_a_well_formed_but_shorter_stream_is_never_committed(sample_db, tmp_path, method):
    """A producer that exits 0 with a whole but shorter COPY stream: the row counts differ; all or nothing,
    nothing commits; in place, the snapshot is never marked complete (`failed`, naming the counts)."""
    box = sample_db
    if method == "all_or_nothing":
        give_room_for_both(box)
    assert box.run("db_to_db").outcome == "success"
    with box.connect("db") as conn:
        conn.execute("INSERT INTO public.lookup_00 VALUES ('new', 'added after the first copy')")
    before = snapshot_print(box)
    install_programs(box, tmp_path, psql=SHORTER_STREAM)
    result = box.run("db_to_db")
    assert result.outcome == "failure", "a shorter copy was committed"
    assert "public.lookup_01: source 75, loaded 70" in result.error.detail
    if method == "all_or_nothing":
        assert "row counts of the copy do not match the source; nothing was committed" in result.error.message
        assert snapshot_print(box) == before
    else:
        assert "row counts of the copy do not match the source; fac-snapshot-db is left unfinished" in \
            result.error.message
        record = snapshot_record(box)
        assert record.state == "failed" and "public.lookup_01: source 75, loaded 70" in record.error


# --- a cancel while the restore is inside its transaction ---------------------------------------

def wait_for_lock_wait(box, application_name: str, timeout: float = 60.0) -> None:
    """Until a session of `application_name` on fac-db waits for a lock (inside its transaction)."""
    deadline = time.monotonic() + timeout
    with box.admin() as admin:
        while time.monotonic() < deadline:
            if admin.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s AND application_name = %s "
                             "AND wait_event_type = 'Lock' AND xact_start IS NOT NULL",
                             (box.db, application_name)).fetchone():
                return
            time.sleep(0.05)
    raise AssertionError(f"no {application_name} session ever waited for the lock")


@pytest.mark.parametrize("job", ["s3_restore", "db_restore"])
def test_a_cancel_inside_the_restore_transaction_aborts_with_fac_db_unchanged(sample_db, job):
    """SIGTERM while the restore's transaction waits on fac-db: aborted (exit 5) and fac-db as before."""
    box = sample_db
    args, before = prepare_restore(box, job)
    box.config(FAC_BACKUP_RESTORE_LOCK_WAIT_SECONDS="120")
    scope = CancelScope()
    application = restore.APPLICATION_NAME if job == "s3_restore" else snapshot.APPLICATION_NAME

    def cancel_in_transaction():
        wait_for_lock_wait(box, application)
        scope.cancel("SIGTERM")

    holder = LockHolder(box)
    canceller = threading.Thread(target=cancel_in_transaction, daemon=True)
    canceller.start()
    try:
        result = box.run(job, *args, options=CONFIRM, scope=scope)
        assert not holder.released.is_set(), "the cancel did not stop the restore"
    finally:
        holder.close()
        canceller.join(timeout=10)
    assert result.outcome == "aborted" and result.exit_code == 5, result.error
    with box.connect() as conn:
        assert database_state(conn) == before


# --- db_to_s3: multipart uploads, SIGTERM and the dying pg_dump ----------------------------------

def kill_processes_mentioning(text: str) -> None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            continue


def add_big_table(box, rows: int = 300000) -> None:
    """A table whose uncompressed dump (~20 MB) needs a multipart upload at 5 MiB parts."""
    with box.connect() as conn:
        conn.execute("CREATE TABLE public.big AS SELECT i, md5(i::text) || md5((i * 3)::text) AS v "
                     f"FROM generate_series(1, {int(rows)}) i")


def multipart_env(box, bin_dir) -> dict:
    return dict(box.environ, FAC_BACKUP_PG_BIN=str(bin_dir), FAC_BACKUP_MIN_PART_MIB="5", FAC_BACKUP_COMPRESSION="0")


def test_sigterm_leaves_an_empty_prefix_and_no_pg_dump_grandchild(sample_db, tmp_path):
    """SIGTERM during a multipart upload: exit 5, nothing at all under backups/ (not only no manifest),
    and no process of the pg_dump pipeline survives, grandchildren included."""
    box = sample_db
    add_big_table(box)
    marker = f"9{os.getpid() % 100000:05d}{int(time.monotonic() * 1000) % 1000:03d}"  # a unique sleep length
    stall = f"""case "$*" in
  *'--table="public"."big"'*) "$REAL" "$@" | head -c {7 * 1024 * 1024}; sleep {marker} ;;
  *) exec "$REAL" "$@" ;;
esac"""
    bin_dir = make_pg_bin(tmp_path / "bin", pg_dump=stall)
    proc = subprocess.Popen([sys.executable, "-m", "service", "run", "db_to_s3"], env=multipart_env(box, bin_dir),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (box.open_uploads() and processes_mentioning(f"sleep {marker}")):
            assert proc.poll() is None and time.monotonic() < deadline, "the upload never reached the stall"
            time.sleep(0.1)
        assert list(box.store().list_objects("backups/")), "precondition: the run had written something"
        proc.send_signal(signal.SIGTERM)
        # Generous: this is about what is left behind, not speed (test_daemon times the stop); a
        # machine shared by many test runs can take far longer than cloud.gov's 10 s grace.
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 5, err
        assert list(catalog.list_backup_objects(box.store())) == []
        assert box.open_uploads() == []
        survivors = processes_mentioning(f"sleep {marker}") + processes_mentioning(str(bin_dir))
        assert survivors == [], survivors
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_processes_mentioning(f"sleep {marker}")  # only this test's own stall, by pid


def test_pg_dump_dying_after_its_multipart_upload_opened_leaves_nothing(sample_db, tmp_path):
    """pg_dump killed halfway, after its table's multipart upload was opened (checked, not assumed):
    the run fails naming the table, the upload is aborted and the prefix is empty."""
    box = sample_db
    add_big_table(box)
    bin_dir = make_pg_bin(tmp_path / "bin", pg_dump=dies_halfway("public", "big", 12 * 1024 * 1024))
    box.config(FAC_BACKUP_PG_BIN=str(bin_dir), FAC_BACKUP_MIN_PART_MIB="5", FAC_BACKUP_COMPRESSION="0")
    opened, parts = [], []

    def store_factory(binding):
        store = S3ObjectStore(binding)
        # A part is sent only into an upload that CreateMultipartUpload has opened.
        store.client.meta.events.register("before-parameter-build.s3.CreateMultipartUpload",
                                          lambda params, **_: opened.append(params["Key"]))
        store.client.meta.events.register("before-parameter-build.s3.UploadPart",
                                          lambda params, **_: parts.append(params["Key"]))
        return store

    result = box.run("db_to_s3", store_factory=store_factory)
    assert [p for p in opened if "public-big.dump" in p], f"precondition: no multipart upload opened ({opened})"
    assert [p for p in parts if "public-big.dump" in p], "precondition: no part was uploaded before the death"
    assert result.outcome == "failure"
    assert "public.big" in result.error.message and "pg_dump was killed by SIGKILL" in result.error.message
    assert box.open_uploads() == []
    assert list(catalog.list_backup_objects(box.store())) == []


# --- copy_from: a cancel after the multipart copy opened ----------------------------------------

def test_a_cancel_after_a_multipart_copy_opened_aborts_it(sample_db):
    """copy_from above the threshold, cancelled once its multipart upload exists: JobAbortedError,
    the upload aborted, no object written."""
    box = sample_db
    config = box.config()
    source = S3ObjectStore(config.media)
    data = os.urandom(3 * MIN_PART_SIZE + 1000)
    source.put_bytes("singleauditreport/big.pdf", data)
    server = source.copier_for(S3ObjectStore(config.backups))
    assert server is not None
    opened, asked = threading.Event(), threading.Event()
    server.client.meta.events.register("after-call.s3.CreateMultipartUpload", lambda **_: opened.set())
    # Parts wait until the copy has been told to stop, so the cancel lands while the upload is open.
    def hold_part(**_) -> None:  # returns None: a value would stand in for S3's answer
        asked.wait(20)

    server.client.meta.events.register("before-call.s3.UploadPartCopy", hold_part)

    def cancelled() -> bool:
        if opened.is_set():
            asked.set()
        return opened.is_set()

    with pytest.raises(JobAbortedError):
        server.copy_from(source, "singleauditreport/big.pdf", size=len(data), multipart_threshold=MIN_PART_SIZE,
                         part_size=MIN_PART_SIZE, cancelled=cancelled)
    assert opened.is_set() and asked.is_set()
    client = box.s3.client()
    assert client.list_multipart_uploads(Bucket=box.backups).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=box.backups).get("KeyCount") == 0


# --- the drill: a flipped byte and appended bytes, each caught by its own check -----------------

def test_the_drill_names_the_checksum_for_a_flipped_byte(sample_db):
    """Same size, one byte flipped: the drill fails on the sha256, saying which it expected."""
    manifest, entry, size = tampered_backup(sample_db, "flip")
    assert size == entry.bytes  # the size check cannot see it
    result = sample_db.run("verify_backup", manifest.id)
    assert result.outcome == "failure" and isinstance(result.error, IntegrityError)
    assert result.error.message == (f"the dump of table public.dissemination_finding in backup {manifest.id} "
                                    "has been altered")
    assert f"recorded {entry.sha256}" in result.error.detail and entry.key in result.error.detail


def test_the_drill_names_the_size_for_appended_bytes(sample_db):
    """Bytes appended: the drill fails on the size, before any download, naming both sizes."""
    manifest, entry, size = tampered_backup(sample_db, "append")
    result = sample_db.run("verify_backup", manifest.id)
    assert result.outcome == "failure" and isinstance(result.error, IntegrityError)
    assert "public.dissemination_finding" in result.error.message and "altered" in result.error.message
    assert result.error.detail == f"{entry.key} holds {size} bytes, the manifest recorded {entry.bytes}"


# --- one moment per copy: the writer's moves counted only once the snapshot is exported ----------

class MoneyMover:
    """Moves money between account_a and account_b of fac-db, 7 at a time, in one transaction each
    (the two tables always balance to 200,000); `flag` appears once 50 moves were committed AFTER
    the service exported its snapshot, so a table copied after the flag differs from the snapshot."""

    def __init__(self, box, flag: Path) -> None:
        self.box, self.flag = box, flag
        self.stop = threading.Event()
        self.after_export = 0
        with box.connect() as conn:
            for table in ("account_a", "account_b"):
                conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, balance bigint NOT NULL)")
                conn.execute(f"INSERT INTO public.{table} SELECT i, 1000 FROM generate_series(1, 100) i")
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _exported(self, admin) -> bool:
        """A session of the service on fac-db inside a transaction: the snapshot exists (it is
        exported first, and every pg_dump or psql of the copy imports it)."""
        return admin.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s AND application_name LIKE "
                             "'fac-backup%%' AND xact_start IS NOT NULL AND backend_xmin IS NOT NULL",
                             (self.box.db,)).fetchone() is not None

    def _run(self) -> None:
        with self.box.connect() as conn, self.box.admin() as admin:
            n = 0
            while not self.stop.is_set():
                n += 1
                exported = self.after_export > 0 or self._exported(admin)
                with conn.transaction():
                    conn.execute("UPDATE public.account_a SET balance = balance - 7 WHERE id = %s", (n % 100 + 1,))
                    conn.execute("UPDATE public.account_b SET balance = balance + 7 WHERE id = %s", (n % 100 + 1,))
                if exported:
                    self.after_export += 1
                    if self.after_export == 50:
                        self.flag.touch()

    def __enter__(self) -> MoneyMover:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def balance_of(conn) -> int:
    return conn.execute("SELECT (SELECT sum(balance) FROM public.account_a) + "
                        "(SELECT sum(balance) FROM public.account_b)").fetchone()[0]


def test_db_to_s3_tables_show_one_moment_with_moves_after_the_export(sandbox, tmp_path, pg_server):
    """account_b is dumped only after 50 moves committed after the snapshot export: the backup still balances."""
    flag = tmp_path / "go"
    with MoneyMover(sandbox, flag) as mover:
        bin_dir = make_pg_bin(tmp_path / "bin", pg_dump=waits_for("public", "account_b", flag))
        done = sandbox.cli("run", "db_to_s3", env=dict(sandbox.environ, FAC_BACKUP_PG_BIN=str(bin_dir)))
    assert done.returncode == 0, done.stderr
    assert mover.after_export >= 50
    backup = next(b for b in catalog.list_backups(sandbox.store()) if b.complete)
    target = pg_server.create_database()
    try:
        for entry in backup.manifest.tables:
            subprocess.run([shutil.which("pg_restore"), "--no-owner", "-d", target, "--exit-on-error"],
                           input=sandbox.store().get_bytes(entry.key), check=True, capture_output=True,
                           env=dict(os.environ, **pg_server.owner_env(target)))
        with pg_server.connect(target) as conn:
            assert balance_of(conn) == 200 * 1000
    finally:
        pg_server.drop_database(target)


def test_db_to_db_tables_show_one_moment_with_moves_after_the_export(sandbox, tmp_path):
    """account_b is copied only after 50 moves committed after the snapshot export: the copy still balances."""
    flag = tmp_path / "go"
    gate = f'case "$*" in *\'"account_b"\'*"TO STDOUT"*) while [ ! -e "{flag}" ]; do sleep 0.05; done ;; esac\n'
    install_programs(sandbox, tmp_path, psql="#!/bin/bash\nREAL=%(real)s\n" + gate + 'exec "$REAL" "$@"\n')
    with MoneyMover(sandbox, flag) as mover:
        result = sandbox.run("db_to_db")
    assert result.outcome == "success", result.error
    assert mover.after_export >= 50
    with sandbox.connect("snapshot_db") as conn:
        assert balance_of(conn) == 200 * 1000
