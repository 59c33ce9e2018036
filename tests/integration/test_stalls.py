"""A stalled network fails fast and lets go of fac-db: every long step, through a fault proxy.

The proxy (tests.faultproxy) stands in front of the moto server or PostgreSQL and,
on cue, stops passing bytes without closing. With FAC_BACKUP_STALL_SECONDS=2 each
long step must fail within the limit plus a margin, naming what stalled; the
service's sessions must leave pg_stat_activity within seconds; nothing half-written
may look complete; and a stalled restore leaves its target as it was.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service import catalog, layout
from service.progress import Progress
from service.refresh_record import FAILED, read_refresh_state
from service.tasks.snapshot import APPLICATION_NAME
from tests.faultproxy import FaultProxy
from tests.fingerprint import fingerprint
from tests.integration.test_daemon import NEVER, Daemon, free_port, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
LIMIT = 2.0
# Detection takes the limit plus a sample (0.5 s); the cancel then kills programs (2 s grace at
# most) and tidies up. Generous for a loaded 2-core machine, far below the 12 minutes of old.
MARGIN = 10.0
CONFIRM = {"confirm": "fac-db"}


# --- the world, through proxies -------------------------------------------------------------------

@pytest.fixture
def s3_proxy(s3_server):
    host, port = s3_server.server.get_host_and_port()
    proxy = FaultProxy(host, port)
    yield proxy
    proxy.close()


@pytest.fixture
def pg_proxy(pg_server):
    proxy = FaultProxy(pg_server.host, pg_server.port)
    yield proxy
    proxy.close()


def route_s3(box, proxy: FaultProxy) -> None:
    """Both buckets' bindings reach S3 through `proxy` (one endpoint: copies stay server-side)."""
    for binding in ("fac-private-s3", "backups"):
        box.credential_overrides[binding] = {"endpoint": proxy.url}


def route_db(box, binding: str, proxy: FaultProxy) -> None:
    box.credential_overrides[binding] = {"port": str(proxy.port)}


def add_big_table(box, rows: int = 150000) -> None:
    """A table whose uncompressed dump (~12 MB) needs a multipart upload at 5 MiB parts."""
    with box.connect() as conn:
        conn.execute("CREATE TABLE public.big AS SELECT i, md5(i::text) || md5((i * 3)::text) AS v "
                     f"FROM generate_series(1, {int(rows)}) i")


class SessionWatch:
    """Polls pg_stat_activity (as the superuser, directly) for the service's sessions on the given
    databases, remembering when one was last seen; `gone()` waits until none is left."""

    def __init__(self, box, *which: str) -> None:
        self.box, self.names = box, [getattr(box, w) for w in which]
        self.last_seen = time.monotonic()
        self.seen: list = []
        self.last_seen_as: dict[tuple[str, str], float] = {}  # (application_name, state) -> when
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sessions(self, admin) -> list:
        return admin.execute("SELECT datname, application_name, state FROM pg_stat_activity "
                             "WHERE datname = ANY(%s) AND application_name LIKE 'fac-backup%%'",
                             (self.names,)).fetchall()

    def _run(self) -> None:
        with self.box.pg.connect() as admin:
            while not self._stop.is_set():
                found = self.sessions(admin)
                if found:
                    self.last_seen, self.seen = time.monotonic(), found
                    for _db, application, state in found:
                        self.last_seen_as[(application, state)] = self.last_seen
                self._stop.wait(0.05)

    def gone(self, timeout: float = 30.0) -> float:
        """Wait until no session is left; the monotonic time the last one was seen."""
        deadline = time.monotonic() + timeout
        with self.box.pg.connect() as admin:
            while self.sessions(admin):
                assert time.monotonic() < deadline, f"sessions still open: {self.sessions(admin)}"
                time.sleep(0.05)
        self._stop.set()
        self._thread.join(5)
        return self.last_seen


class StallWhen(Progress):
    """A run's Progress that stalls `proxy` the first time the step names a stage starting with `stage`."""

    def __init__(self, proxy: FaultProxy, stage: str, **stall) -> None:
        super().__init__(enabled=True)
        self.proxy, self.stage, self.stall = proxy, stage, stall
        self.tripped = False

    def set_doing(self, what: str) -> None:
        super().set_doing(what)
        if not self.tripped and what.startswith(self.stage):
            self.tripped = True
            self.proxy.stall(**self.stall)


def assert_stopped_in_time(result, proxy: FaultProxy, ended: float, *named: str) -> float:
    """The run failed (not aborted) on the watchdog's error, within the limit plus the margin,
    naming what stalled; returns the seconds from the stall to the error."""
    assert proxy.stalled_at is not None, "precondition: the stall never happened"
    took = ended - proxy.stalled_at
    assert result.outcome == "failure" and result.exit_code == 1, result.error
    assert "stalled and was stopped" in result.error.message, result.error
    for text in named:
        assert text in result.error.message + result.error.detail, result.error
    # A little under the limit is possible: the service counts whole chunks, the proxy single bytes.
    assert LIMIT - 1.0 <= took < LIMIT + MARGIN, took
    return took


def no_backup_looks_complete(box) -> None:
    assert not [b.id for b in catalog.list_backups(box.store()) if b.complete and "pre-restore" not in b.id]
    assert box.open_uploads() == []


# --- db_to_s3 -------------------------------------------------------------------------------------

def assert_only_the_journal_record(box, outcome: str, says: str) -> None:
    """No object of the backup is left under backups/, and the run's own journal record is there."""
    left = [o.key for o in box.store().list_objects("backups/")]
    assert [key for key in left if not key.startswith(layout.JOURNAL_PREFIX)] == [], left
    (record,) = [json.loads(box.store().get_bytes(key)) for key in left]
    assert record["outcome"] == outcome and says in json.dumps(record["error"]), record


def test_a_backup_stalled_mid_upload_fails_fast_and_lets_go_of_fac_db(sample_db, s3_proxy):
    """S3 goes silent in the middle of a multipart upload: the backup fails within the limit naming
    the object and the endpoint; the snapshot's session and every pg_dump leave fac-db within seconds;
    the upload is aborted and nothing is left under backups/ (clean-up reaches S3 on new connections)."""
    box = sample_db
    add_big_table(box)
    route_s3(box, s3_proxy)
    box.config(FAC_BACKUP_STALL_SECONDS=str(LIMIT), FAC_BACKUP_COMPRESSION="0", FAC_BACKUP_MIN_PART_MIB="5")
    s3_proxy.stall_after(7 * MIB, "up", new_connections="forward")
    watch = SessionWatch(box, "db")
    result = box.run("db_to_s3")
    took = assert_stopped_in_time(result, s3_proxy, time.monotonic(), "public-big.dump", s3_proxy.url)
    released = watch.gone() - s3_proxy.stalled_at
    assert released < LIMIT + MARGIN, released
    # Nothing of the backup is left; the run's journal record is, written past the interrupted client.
    assert_only_the_journal_record(box, "failure", "stalled")
    no_backup_looks_complete(box)
    # The exported snapshot was let go before the first clean-up request left for S3.
    snapshot_held = watch.last_seen_as[("fac-backup", "idle in transaction")]
    cleanup = min(t for t, line in s3_proxy.requests if line.startswith("DELETE ") or "?delete" in line)
    assert snapshot_held < cleanup, (snapshot_held - s3_proxy.stalled_at, cleanup - s3_proxy.stalled_at)
    print(f"db_to_s3: error {took:.1f} s, last fac-db session {released:.1f} s after the stall")


# --- db_to_db and db_restore: the source's network goes silent mid-COPY ----------------------------

def snapshot_holds_data(box) -> None:
    result = box.run("db_to_db")
    assert result.outcome == "success", result.error


@pytest.mark.parametrize("job", ["db_to_db", "db_to_db in place", "db_restore"])
def test_a_copy_whose_source_stalls_mid_copy_rolls_back_and_lets_go_of_both_databases(sample_db, pg_proxy, job):
    """The source database goes silent while a table streams: the copy fails within the limit naming
    the table and the source, and no session of the service is left on either database. An
    all-or-nothing copy (a snapshot with room for two copies, or db_restore into fac-db) leaves its
    target exactly as before; a refresh in place leaves a snapshot recorded as `failed`, naming the
    stall, which db_restore refuses."""
    box = sample_db
    in_place = job.endswith("in place")
    job = job.split()[0]
    add_big_table(box, rows=60000)
    if job == "db_restore":
        snapshot_holds_data(box)
        with box.connect() as conn:  # fac-db now differs from the snapshot: a restore would show
            conn.execute("UPDATE public.big SET v = 'changed' WHERE i % 2 = 0")
    source, target = ("fac-db", "snapshot_db") if job == "db_to_db" else ("fac-snapshot-db", "db")
    with box.connect(target) as conn:
        before = fingerprint(conn)
    route_db(box, source, pg_proxy)
    box.config(FAC_BACKUP_STALL_SECONDS=str(LIMIT))
    if not in_place:
        box.config(FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB="1000")  # room for both copies: all or nothing
    # Past the catalog reads and the schema-only dump, inside the rows of public.big.
    pg_proxy.stall_after(2 * MIB, "down")
    watch = SessionWatch(box, "db", "snapshot_db")
    result = box.run(job, options=CONFIRM)
    took = assert_stopped_in_time(result, pg_proxy, time.monotonic(), "public.big",
                                  f"127.0.0.1:{pg_proxy.port}")
    released = watch.gone() - pg_proxy.stalled_at
    assert released < LIMIT + MARGIN, released
    with box.connect(target) as conn:
        if in_place:
            state, record = read_refresh_state(conn, APPLICATION_NAME)
            assert state == FAILED and "stalled" in record.error, (state, record)
        else:
            assert fingerprint(conn) == before
    print(f"{job}{' in place' if in_place else ''}: error {took:.1f} s, last session {released:.1f} s after the stall")


# --- s3_restore and the drill: S3 goes silent while the tables load --------------------------------

SCRATCH = "fac-restore-test-db"


@pytest.fixture
def scratch(sample_db, pg_server):
    """bind() makes a scratch database the drill's (FAC_BACKUP_RESTORE_TEST_DB_SERVICE), in a
    VCAP file written from the sandbox's bindings as they are then (proxies included)."""
    made: list[str] = []

    def bind() -> str:
        name = pg_server.create_database()
        made.append(name)
        with pg_server.connect_as_owner(name) as conn:
            conn.execute("CREATE TABLE keep_me (id int)")
        vcap = sample_db.vcap()
        vcap["aws-rds"].append(pg_server.rds_binding(SCRATCH, name))
        path = sample_db.tmp / "vcap-with-scratch.json"
        path.write_text(json.dumps(vcap), encoding="utf-8")
        sample_db.extra_env.update(FAC_BACKUP_VCAP_FILE=str(path), FAC_BACKUP_RESTORE_TEST_DB_SERVICE=SCRATCH)
        sample_db.scratch = name
        return name

    yield bind
    for name in made:
        pg_server.drop_database(name)


def take_backup(box) -> str:
    result = box.run("db_to_s3")
    assert result.outcome == "success", result.error
    return result.steps[-1].figures["backup_id"]


def connect_target(box, target: str):
    return box.pg.connect_as_owner(box.scratch) if target == "scratch" else box.connect(target)


@pytest.mark.parametrize("job", ["s3_restore", "verify_backup"])
def test_a_restore_stalled_while_loading_rolls_back_and_lets_go(sample_db, scratch, s3_proxy, job):
    """S3 goes silent once the tables load: the restore (or the drill's rehearsal) fails within the
    limit naming the download and the endpoint; its target (fac-db, or the scratch database) is
    exactly as before, and every session of the service on it is gone within seconds."""
    box = sample_db
    backup_id = take_backup(box)  # written directly, then read through the proxy
    route_s3(box, s3_proxy)
    target = "scratch" if job == "verify_backup" else "db"
    if target == "scratch":
        scratch()
    box.config(FAC_BACKUP_STALL_SECONDS=str(LIMIT))
    with connect_target(box, target) as conn:
        before = fingerprint(conn)
    watch = SessionWatch(box, "db", *(["scratch"] if target == "scratch" else []))
    progress = StallWhen(s3_proxy, "loading table")
    result = box.run(job, backup_id, options=CONFIRM, progress=progress)
    took = assert_stopped_in_time(result, s3_proxy, time.monotonic(), f"of s3://{box.backups}/", s3_proxy.url)
    released = watch.gone() - s3_proxy.stalled_at
    assert released < LIMIT + MARGIN, released
    with connect_target(box, target) as conn:
        assert fingerprint(conn) == before
    print(f"{job}: error {took:.1f} s, last session {released:.1f} s after the stall")


# --- media sync and media restore: S3 goes silent mid-sync ----------------------------------------

class StallAfterCopies(Progress):
    """A run's Progress that stalls `proxy` once `copies` server-side copies have been counted."""

    def __init__(self, proxy: FaultProxy, copies: int) -> None:
        super().__init__(enabled=True)
        self.proxy, self.left = proxy, copies

    def add(self, nbytes: int) -> None:
        super().add(nbytes)
        self.left -= 1
        if self.left == 0:
            self.proxy.stall()


def fill_media(box, count: int = 48) -> list[str]:
    client = box.s3.client()
    keys = [f"singleauditreport/{i:04d}.pdf" for i in range(count)]
    for key in keys:
        client.put_object(Bucket=box.media, Key=key, Body=key.encode() * 64)
    return keys


@pytest.mark.parametrize("job", ["media_sync", "media_restore"])
def test_a_media_sync_under_a_stall_ends_within_the_limit_naming_its_cause(sample_db, s3_proxy, job):
    """S3 goes silent after a few copies, with 16 in flight: the whole sync ends within the limit plus
    the margin (not wave after wave of timeouts), its error names the copy and the endpoint, and its
    figures say how far it got."""
    box = sample_db
    keys = fill_media(box)
    args: tuple[str, ...] = ()
    options: dict = {}
    if job == "media_restore":
        backup = box.run("scheduled_backup")  # its media step copies every object into the mirror
        assert backup.outcome == "success", backup.error
        args, options = (backup.steps[1].figures["backup_id"],), {"confirm": "fac-private-s3"}
        box.s3.client().delete_objects(Bucket=box.media, Delete={"Objects": [{"Key": k} for k in keys]})
    route_s3(box, s3_proxy)
    box.config(FAC_BACKUP_STALL_SECONDS=str(LIMIT))
    watch = SessionWatch(box, "db")  # the run's lock, on fac-db
    result = box.run(job, *args, options=options, progress=StallAfterCopies(s3_proxy, 3))
    took = assert_stopped_in_time(result, s3_proxy, time.monotonic(), "S3 COPY of s3://", s3_proxy.url)
    assert result.steps[-1].figures["copied"] >= 3, result.steps[-1].figures
    released = watch.gone() - s3_proxy.stalled_at
    print(f"{job}: error {took:.1f} s, last fac-db session {released:.1f} s after the stall")


# --- SIGTERM still wins ---------------------------------------------------------------------------

def test_sigterm_stops_a_one_off_run_blocked_on_a_silent_s3_within_cf_stops_grace(sample_db, s3_proxy):
    """`python -m service run db_to_s3` blocked in S3 requests that get no answer (the watchdog far
    away): SIGTERM ends it within 10 s as aborted (exit 5), the upload aborted, nothing under
    backups/, and no session of the service left on fac-db."""
    box = sample_db
    add_big_table(box)
    route_s3(box, s3_proxy)
    env = dict(box.environ, FAC_BACKUP_STALL_SECONDS="600", FAC_BACKUP_COMPRESSION="0",
               FAC_BACKUP_MIN_PART_MIB="5")
    s3_proxy.stall_after(7 * MIB, "up", new_connections="forward")
    watch = SessionWatch(box, "db")
    child = subprocess.Popen([sys.executable, "-m", "service", "run", "db_to_s3"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: s3_proxy.stalled_at is not None or child.poll() is not None, 60, "the stall")
        assert child.poll() is None, child.communicate()
        time.sleep(0.5)  # the requests now wait on the silent connections (a stall, not a race)
        signalled = time.monotonic()
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 5, err[-2000:]
    assert took < 10, took
    assert '"job.aborted"' in out
    released = watch.gone() - signalled
    assert released < 10, released
    assert_only_the_journal_record(box, "aborted", "SIGTERM")
    assert box.open_uploads() == []
    print(f"SIGTERM under a stall: exit 5 after {took:.1f} s, last fac-db session {released:.1f} s")


# --- the daemon: healthy whatever S3 does; the watchdog fails a run, the next one runs; SIGTERM wins -

def runs(daemon, job: str, outcome: str) -> float | None:
    return daemon.value("fac_backup_job_runs_total", job=job, outcome=outcome)


def trigger_when_idle(daemon, job: str) -> dict:
    """Trigger `job` once the daemon has let go of its previous run: the run's outcome is counted a
    moment before the run leaves the daemon's list of running jobs, and until then a trigger is
    refused as already running."""
    return wait_for(lambda: (lambda reply: reply if reply.get("ok") else None)(
        daemon.ctl("trigger", job=job, args=[], options={})), 30, f"{job} to be accepted")


def test_the_daemon_starts_healthy_on_a_silent_s3_and_stays_so_through_stalls(sample_db, s3_proxy):
    """Started while S3 accepts connections and never answers, the daemon answers /healthz 200 within
    seconds and says (log, metric) that the bucket's first reading is pending; once S3 answers, the
    catch-up is decided and runs. A run stalled later fails on the watchdog (counted) while /healthz
    stays 200, the next run succeeds, and SIGTERM under a stall exits within 10 s logging job.aborted."""
    box = sample_db
    route_s3(box, s3_proxy)
    s3_proxy.stall()
    env = dict(box.environ, PORT=str(free_port()), FAC_BACKUP_SCHEDULED_CRON=NEVER,
               FAC_BACKUP_DAILY_CRON=NEVER, FAC_BACKUP_CHECK_CRON="off", FAC_BACKUP_VERIFY_CRON="off",
               FAC_BACKUP_CATCH_UP="true", FAC_BACKUP_METRICS_REFRESH_SECONDS="1", FAC_BACKUP_STALL_SECONDS="3")
    daemon = Daemon(env, box.tmp)
    try:
        assert daemon.wait_healthy(timeout=30) < 10
        started = next(e for e in daemon.events() if e["event"] == "daemon.started")
        assert set(started["pending"]) == {"catalog", "bucket_rules"}
        assert daemon.value("fac_backup_start_pending", task="catalog") == 1
        s3_proxy.heal()
        wait_for(lambda: runs(daemon, "scheduled_backup", "success") == 1, 90, "the catch-up backup")
        assert any(e["event"] == "daemon.catch_up" for e in daemon.events())
        assert daemon.value("fac_backup_start_pending", task="catalog") == 0

        s3_proxy.stall()
        daemon.ctl("trigger", job="db_to_s3", args=[], options={})
        wait_for(lambda: runs(daemon, "db_to_s3", "failure") == 1, 60, "the stalled run to fail")
        assert daemon.value("fac_backup_job_stalls_total", job="db_to_s3") == 1
        assert daemon.get("/healthz")[0] == 200
        assert any(e["event"] == "step.stalled" and e["job"] == "db_to_s3" for e in daemon.events())
        s3_proxy.heal()  # the failed run lets go once its journal record is written (or its 4 s are up)
        trigger_when_idle(daemon, "db_to_s3")
        wait_for(lambda: runs(daemon, "db_to_s3", "success") == 1, 60, "the next run to succeed")

        s3_proxy.stall()
        reply = trigger_when_idle(daemon, "db_to_s3")
        wait_for(lambda: any(e["event"] == "step.started" and e.get("run_id") == reply["run_id"]
                             for e in daemon.events()), 30, "the third run's step")
        time.sleep(0.5)  # its first request now waits on the silent S3
        code, seconds = daemon.stop()
    finally:
        daemon.stop()
    assert code == 0 and seconds < 10, (code, seconds, daemon.log_text())
    mine = [e for e in daemon.events() if e.get("run_id") == reply["run_id"]]
    assert any(e["event"] == "job.aborted" for e in mine), mine[-3:]
    print(f"daemon: stopped {seconds:.1f} s after SIGTERM under a stall")


# --- honest work is never stopped ----------------------------------------------------------------

def add_slow_index(box, rows: int = 1500) -> None:
    """An index whose every key costs 2 ms, in databases set `fac.slow = on`: building it moves no
    byte for ~3 s (longer than the limit). fac-db itself is not slowed (its own build is instant)."""
    with box.connect() as conn:
        conn.execute("""CREATE FUNCTION public.slow_key(i integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE
                        AS $$ BEGIN IF current_setting('fac.slow', true) = 'on' THEN PERFORM pg_sleep(0.002);
                        END IF; RETURN i; END $$""")
        conn.execute(f"CREATE TABLE public.slow AS SELECT i FROM generate_series(1, {int(rows)}) i")
        conn.execute("CREATE INDEX slow_idx ON public.slow (public.slow_key(i))")


def slow_down(box, database: str) -> None:
    with box.pg.connect() as admin:
        admin.execute(f'ALTER DATABASE "{database}" SET fac.slow = on')


def test_a_slow_but_moving_drill_and_a_long_index_build_are_not_stopped(sample_db, scratch, s3_proxy):
    """The drill reads every object through a link of 1.2 MB/s (the large table takes longer than the
    limit, bytes arriving all along), then builds an index that moves no byte for longer than the
    limit: the server says its session works, and the drill succeeds."""
    box = sample_db
    add_big_table(box, rows=40000)
    add_slow_index(box)
    box.config(FAC_BACKUP_COMPRESSION="0")
    backup_id = take_backup(box)  # public-big.dump is ~2.9 MB: read twice (verify, load), 2.4 s each
    route_s3(box, s3_proxy)
    slow_down(box, scratch())
    box.config(FAC_BACKUP_STALL_SECONDS=str(LIMIT))
    s3_proxy.throttle(1_200_000)
    started = time.monotonic()
    result = box.run("verify_backup", backup_id)
    took = time.monotonic() - started
    assert result.outcome == "success", result.error
    assert result.steps[0].figures["restored_tables"] > 0
    assert took > 2 * LIMIT, f"precondition: the drill took only {took:.1f} s"
    print(f"slow drill: {took:.1f} s with a {LIMIT:g} s limit")


def test_a_snapshot_copy_with_a_long_index_build_is_not_stopped(sample_db):
    """db_to_db's post-data builds an index that moves no byte for longer than the limit, on its
    own psycopg connection: the server says the session works, and the copy commits."""
    box = sample_db
    add_slow_index(box)
    slow_down(box, box.snapshot_db)
    box.config(FAC_BACKUP_STALL_SECONDS=str(LIMIT))
    started = time.monotonic()
    result = box.run("db_to_db")
    took = time.monotonic() - started
    assert result.outcome == "success", result.error
    assert took > LIMIT, f"precondition: the copy took only {took:.1f} s"
    print(f"slow index in db_to_db: {took:.1f} s with a {LIMIT:g} s limit")


def test_a_backup_whose_row_counts_take_longer_than_the_limit_is_not_stopped(sample_db, monkeypatch):
    """Each table's exact count runs before its pg_dump and moves no byte: a count that takes longer
    than the limit (a large table on a busy server) is work the server reports, and the backup succeeds."""
    from service.tasks import backup

    box = sample_db
    box.config(FAC_BACKUP_STALL_SECONDS=str(LIMIT), FAC_BACKUP_PARALLEL="1")
    real_count = backup.count_rows

    def slow_count(conn, schema, name):
        if name == "dissemination_general":  # one table counts for 1.5 limits, in the server
            conn.execute("SELECT pg_sleep(%s)", (1.5 * LIMIT,))
        return real_count(conn, schema, name)

    monkeypatch.setattr(backup, "count_rows", slow_count)
    started = time.monotonic()
    result = box.run("db_to_s3")
    took = time.monotonic() - started
    assert result.outcome == "success", result.error
    assert took > 1.5 * LIMIT, f"precondition: the backup took only {took:.1f} s"
