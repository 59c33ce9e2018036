"""The snapshot copy and the restores on servers with small disks, in production's proportions.

The server under test keeps its data directory on a tmpfs the test mounts (as
root; skipped elsewhere, with the reason), with 1 MB WAL segments and a 4 MB
max_wal_size so its WAL is in proportion, and a 1 MB maintenance_work_mem so
index builds spill their sorts to disk as production's do at its size. Each
test sizes the disk from what it holds: the server's own files (`base`),
then the data at production's proportions (fac-snapshot-db 75 GB for 70 GB
of data: 1.07x; fac-db 200 GB: 2.86x). A sampler reads the disk's use every
few milliseconds; the server's log must show no `No space left on device`
and no PANIC. Tens of MB, so the whole file takes seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from service import catalog
from service.inspection import describe_snapshot
from service.pgtools import build_table_pattern
from service.sample_data import ensure_role, load_sample_database
from service.sandbox import DiskMountError, LocalPostgres, find_pg_program
from tests.conftest import REPO, Sandbox
from tests.fingerprint import fingerprint
from tests.integration.test_db_to_db import PSQL_FAULTS, install_fake_programs, open_gate
from tests.integration.test_restore import CONFIRM, database_state, pre_restore_ids

pytestmark = pytest.mark.integration

MIB, GIB = 1024 ** 2, 1024 ** 3
WAL_ROOM = 4 * MIB  # max_wal_size below: the "little room for WAL" of the proportions
SERVER_SETTINGS = {"max_wal_size": "4MB", "min_wal_size": "2MB", "maintenance_work_mem": "1MB"}
SCALE = {"general_rows": 40_000, "awards_per_audit": 4, "small_tables": 5}  # ~57 MB of data
SNAPSHOT_PROPORTION = 75 / 70  # production's fac-snapshot-db storage over its data
FAC_DB_PROPORTION = 200 / 70
ROOMY = 400 * MIB


@pytest.fixture(scope="module")
def small_server(api_role):
    """One throwaway cluster whose data directory is a tmpfs, shared by this file's tests; it has the
    API role too (roles are the server's), so that copies onto it carry every grant."""
    if os.geteuid() != 0:
        pytest.skip("these tests mount a tmpfs as the server's disk, which needs root (CI runs as root)")
    server = LocalPostgres(disk_bytes=ROOMY, wal_segment_mb=1, durable=True, server_settings=SERVER_SETTINGS)
    try:
        server.start()
    except DiskMountError as exc:
        pytest.skip(f"cannot give the server a small disk here: {exc}")
    with server.connect() as admin:
        ensure_role(admin, api_role)
    yield server
    server.stop()


@pytest.fixture
def small_disk(small_server):
    """The small server with a roomy disk again; the databases a test made there are dropped after it,
    and the part of the server's log the test wrote must name no full disk."""
    small_server.resize_disk(ROOMY)
    before, made = len(small_server.log_text()), []
    yield small_server, made
    for name in made:
        small_server.drop_database(name)
    new = small_server.log_text()[before:]
    assert "No space left on device" not in new and "PANIC" not in new, new[-2000:]


class DiskSampler:
    """Samples the small disk's use on a thread while the block runs: `peak` is the most seen, and
    `peak_data` the most seen outside pg_wal (the databases and their temporary files), whose value
    at the end is `final_data`."""

    def __init__(self, server: LocalPostgres) -> None:
        self.server, self.peak, self.peak_data, self.final_data = server, 0, 0, 0
        self._wal = os.path.join(server.data_dir, "pg_wal")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-sampler", daemon=True)

    def _sample(self) -> int:
        used = self.server.disk_used()
        wal = 0
        with os.scandir(self._wal) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file(follow_symlinks=False):
                        wal += entry.stat(follow_symlinks=False).st_blocks * 512
        self.peak, self.peak_data = max(self.peak, used), max(self.peak_data, used - wal)
        return used - wal

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.003)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.final_data = self._sample()


def settle(server: LocalPostgres) -> int:
    """Checkpoint (so the WAL is back to its floor) and return the disk's use."""
    with server.connect() as conn:
        conn.execute("CHECKPOINT")
    return server.disk_used()


def database_bytes(server: LocalPostgres, name: str) -> int:
    with server.connect(name) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def point_binding(box: Sandbox, binding: str, server: LocalPostgres, dbname: str) -> None:
    """Make `binding` of the sandbox's VCAP_SERVICES a database on `server`."""
    box.credential_overrides[binding] = server.rds_binding(binding, dbname)["credentials"]


@pytest.fixture(scope="module")
def source_db(pg_server, api_role):
    """fac-db's data (~57 MB, FAC-like) on the ordinary test server, loaded once for the refresh tests,
    which only read it."""
    name = pg_server.create_database()
    with pg_server.connect_as_owner(name) as conn:
        load_sample_database(conn, **SCALE, api_role=api_role)
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def big_source(sandbox, source_db):
    """The sandbox with fac-db pointing at the module's source database."""
    point_binding(sandbox, "fac-db", sandbox.pg, source_db)
    return sandbox


def source_conn(box: Sandbox):
    return box.pg.connect_as_owner(box.credential_overrides["fac-db"]["db_name"])


def small_snapshot(box: Sandbox, small_disk, proportion: float) -> tuple[int, int]:
    """fac-snapshot-db on the small server, its disk `proportion` times fac-db's data over what the
    server holds with the snapshot empty, plus WAL room; the storage setting says so. (base, disk)."""
    server, made = small_disk
    snap = server.create_database()
    made.append(snap)
    point_binding(box, "fac-snapshot-db", server, snap)
    data = database_bytes(box.pg, box.credential_overrides["fac-db"]["db_name"]) - database_bytes(server, snap)
    base = settle(server)
    disk = int(base + proportion * data + WAL_ROOM)
    server.resize_disk(disk)
    box.extra_env["FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB"] = f"{disk / GIB:.9f}"
    return base, disk


def assert_snapshot_matches_source(box: Sandbox, server: LocalPostgres) -> None:
    """The snapshot's fingerprint is the source's. Its queries sort whole tables, which spills to disk:
    they run on a roomy disk again, after the measured run."""
    server.resize_disk(ROOMY)
    snap = box.credential_overrides["fac-snapshot-db"]["db_name"]
    with source_conn(box) as source, server.connect_as_owner(snap) as target:
        expected, got = fingerprint(source), fingerprint(target)
    assert [k for k in expected if expected[k] != got.get(k)] == []


def run_ok(box: Sandbox, job: str, *args, method: str | None = None, **kwargs):
    result = box.run(job, *args, **kwargs)
    assert result.outcome == "success", (result.error, result.error and result.error.detail)
    if method is not None:
        assert {s.name: s for s in result.steps}["db_to_db"].figures["method"] == method
    return result


def test_a_refresh_at_production_proportions_goes_in_place_and_never_fills_the_disk(big_source, small_disk):
    """fac-snapshot-db holding the data 1.07 times over: the second refresh (the one that failed, all or
    nothing) goes in place, succeeds, stays under the disk, and leaves an exact copy marked complete."""
    box, (server, _) = big_source, small_disk
    _, disk = small_snapshot(box, small_disk, SNAPSHOT_PROPORTION)
    run_ok(box, "db_to_db", method="in_place")
    with DiskSampler(server) as sampler:
        result = run_ok(box, "db_to_db", method="in_place")
    figures = result.steps[0].figures
    assert "cannot hold both copies" in figures["space_reason"]
    assert sampler.peak < disk, f"peak {sampler.peak / MIB:.1f} MiB on a {disk / MIB:.1f} MiB disk"
    # Outside the WAL, the peak is the finished copy and little more: the large tables' indexes were
    # built after their own loads. (Built at the end, the largest one's sort files added 6.6 MiB here.)
    assert sampler.peak_data - sampler.final_data <= 3 * MIB, (sampler.peak_data, sampler.final_data)
    assert_snapshot_matches_source(box, server)
    shown = box.cli("show", "fac-snapshot-db")
    assert shown.returncode == 0 and "complete: data as of" in shown.stdout, shown.stdout + shown.stderr


def test_a_refresh_that_fails_midway_leaves_a_snapshot_db_restore_refuses(big_source, small_disk, tmp_path):
    """A complete snapshot whose next refresh is killed halfway reads as interrupted, not complete; one
    whose refresh fails halfway says `failed`, in show too; db_restore refuses both, even with --force,
    naming the job's own S3 backup, and fac-db stays as it was."""
    box, (server, _) = big_source, small_disk
    small_snapshot(box, small_disk, SNAPSHOT_PROPORTION)
    run_ok(box, "db_to_db", method="in_place")
    with source_conn(box) as conn:
        live = database_state(conn)

    # Killed mid-load: the `refreshing` record, committed with the drop, stays behind.
    (tmp_path / "gated").mkdir()
    fake = install_fake_programs(box, tmp_path / "gated", psql_fault=PSQL_FAULTS["gated"])
    child = subprocess.Popen([sys.executable, "-m", "service", "run", "db_to_db"], env=box.environ, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_copy(server, loading=True)
        # While its sessions are connected the refresh reads as running, not as interrupted.
        running = describe_snapshot(box.config())
        assert running["state"] == "refreshing" and not running["restorable"], running
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        open_gate(fake["gate"])  # the orphaned producer finds its reader gone and ends
    wait_for_copy(server, loading=False)
    box.extra_env.pop("FAC_BACKUP_PG_BIN")
    seen = describe_snapshot(box.config())
    assert seen["state"] == "interrupted" and not seen["restorable"], seen
    refused = box.run("db_restore", options={**CONFIRM, "force": True})
    assert refused.exit_code == 3 and "was interrupted" in refused.error.detail

    # Failing mid-load inside on_demand_backup: `failed`, with the error, and the backup of the same run.
    install_fake_programs(box, tmp_path, psql_fault=PSQL_FAULTS["dies"])
    failed = box.run("on_demand_backup")
    assert failed.outcome == "failure" and failed.steps[-1].name == "db_to_db"
    backup_id = {s.name: s for s in failed.steps}["db_to_s3"].figures["backup_id"]
    assert "left unfinished" in failed.error.message and "s3_restore" in failed.error.hint
    box.extra_env.pop("FAC_BACKUP_PG_BIN")
    shown = box.cli("show", "fac-snapshot-db")
    assert "UNFINISHED" in shown.stdout and "failed" in shown.stdout and backup_id in shown.stdout, shown.stdout
    assert "db_restore refuses this snapshot" in shown.stdout
    refused = box.run("db_restore", options={**CONFIRM, "force": True})
    assert refused.exit_code == 3 and "is not a whole copy" in refused.error.message
    assert f"s3_restore {backup_id} --confirm fac-db" in refused.error.hint
    with source_conn(box) as conn:
        assert database_state(conn) == live
    assert pre_restore_ids(box) == []


def wait_for_copy(server: LocalPostgres, *, loading: bool, deadline_seconds: float = 60.0) -> None:
    """Wait until db_to_db's session on the small server is loading dissemination_general (or is gone)."""
    deadline = time.monotonic() + deadline_seconds
    query = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fac-backup-db_to_db'"
             + (" AND query LIKE 'COPY %%dissemination_general%%FROM STDIN%%'" if loading else ""))
    with server.connect() as conn:
        while time.monotonic() < deadline:
            if bool(conn.execute(query).fetchone()[0]) == loading:
                return
            time.sleep(0.02)
    raise AssertionError(f"db_to_db's session never {'reached its COPY' if loading else 'went away'}")


def test_with_room_for_both_copies_the_refresh_stays_all_or_nothing(big_source, small_disk, tmp_path):
    """A snapshot disk that holds both copies with headroom: the copy is one transaction (both copies on
    the disk at once), and one that fails halfway leaves the old snapshot exactly as it was (in place
    it would be partly loaded and marked failed)."""
    box, (server, _) = big_source, small_disk
    base, disk = small_snapshot(box, small_disk, 3.0)
    first = run_ok(box, "db_to_db", method="all_or_nothing")
    snap = box.credential_overrides["fac-snapshot-db"]["db_name"]
    with server.connect_as_owner(snap) as conn:
        before = fingerprint(conn)
    install_fake_programs(box, tmp_path, psql_fault=PSQL_FAULTS["dies"])
    failed = box.run("db_to_db")
    assert failed.outcome == "failure" and "the target was left as it was" in failed.error.message
    box.extra_env.pop("FAC_BACKUP_PG_BIN")
    with server.connect_as_owner(snap) as conn:
        assert fingerprint(conn) == before
    shown = box.cli("show", "fac-snapshot-db", "--json")
    assert '"state": "complete"' in shown.stdout and first.steps[0].figures["data_as_of"] in shown.stdout
    with DiskSampler(server) as sampler:
        result = run_ok(box, "db_to_db", method="all_or_nothing")
    copy = result.steps[0].figures["space_copy_bytes"]
    assert sampler.peak - base > 1.7 * (copy - 8 * MIB), "the old copy was gone before the new one was whole"
    assert sampler.peak < disk
    assert_snapshot_matches_source(box, server)


@pytest.fixture
def small_fac_db(small_disk, s3_server, api_role, tmp_path):
    """A sandbox whose fac-db (with ~57 MB of data) is on the small server; the snapshot, empty, too."""
    server, made = small_disk
    names = [server.create_database(), server.create_database()]
    made.extend(names)
    box = Sandbox(server, s3_server, tmp_path, *names, s3_server.create_bucket(), s3_server.create_bucket())
    with box.connect() as conn:
        load_sample_database(conn, **SCALE, api_role=api_role)
    return box


def write_legacy_backup(box: Sandbox, legacy_id: str) -> None:
    """The old tool's backup of fac-db: one custom-format pg_dump per public table, no manifest."""
    with box.connect() as conn:
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    env = {**box.pg.owner_env(box.db), "PATH": "/usr/bin:/bin"}
    for table in tables:
        dump = subprocess.run([find_pg_program("pg_dump"), "--no-privileges", "--no-owner", "--format", "c",
                               "--table", build_table_pattern("public", table)],
                              env=env, check=True, capture_output=True).stdout
        box.store().put_bytes(f"backups/{legacy_id}/public-{table}.dump", dump)


def size_fac_db_disk(box: Sandbox, proportion: float) -> int:
    """fac-db's disk at `proportion` times its data over the server without that data, plus WAL room."""
    server = box.pg
    data = database_bytes(server, box.db) - database_bytes(server, "template1")
    disk = int(settle(server) - data + proportion * data + WAL_ROOM)
    server.resize_disk(disk)
    box.extra_env["FAC_BACKUP_FAC_DB_STORAGE_GB"] = f"{disk / GIB:.9f}"
    return disk


def test_a_restore_that_cannot_fit_is_refused_untouched_and_one_that_fits_succeeds(small_fac_db):
    """fac-db's data grown past half its storage: s3_restore and a legacy restore are refused (exit 3,
    the figures and the cf update-service fix named, no pre-restore backup, fac-db unchanged). At
    production's proportions the same restore runs, under the disk and the estimate."""
    box = small_fac_db
    backup_id = run_ok(box, "db_to_s3").steps[0].figures["backup_id"]
    manifest = catalog.read_manifest(box.store(), backup_id)
    write_legacy_backup(box, "scheduled-06-04-10")
    with box.connect() as conn:
        conn.execute("DELETE FROM public.dissemination_federalaward WHERE id % 2 = 0")
        changed = database_state(conn)
    size_fac_db_disk(box, 1.6)
    for target, rough in ((backup_id, False), ("scheduled-06-04-10", True)):
        refused = box.cli("run", "s3_restore", target, "--confirm", "fac-db")
        assert refused.returncode == 3, refused.stderr
        assert f"refusing to restore backup {target} into fac-db" in refused.stderr
        assert "cf update-service fac-db -c '{\"storage\": 1}'" in refused.stderr
        assert ("rough estimate" in refused.stderr) == rough and "nothing was touched" in refused.stderr
    with box.connect() as conn:
        assert database_state(conn) == changed
    assert pre_restore_ids(box) == []

    disk = size_fac_db_disk(box, FAC_DB_PROPORTION)
    with DiskSampler(box.pg) as sampler:
        result = run_ok(box, "s3_restore", backup_id, options=CONFIRM)
    figures = result.steps[0].figures
    assert figures["space_restored_bytes"] == manifest.restored_bytes > 0
    assert sampler.peak < disk
    # The check's own figure (the estimate with its headroom) held the real peak.
    assert sampler.peak <= figures["space_storage_needed_bytes"], (sampler.peak, figures)
    with box.connect() as conn:
        assert database_state(conn) != changed
        assert conn.execute("SELECT count(*) FROM public.dissemination_federalaward").fetchone()[0] == 160_000
