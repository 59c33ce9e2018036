"""The real daemon as a subprocess, against a real PostgreSQL server and a moto S3 server."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import catalog, jobs, layout
from service.control import send_request
from service.metrics import OUTCOMES
from service.sandbox import find_pg_program

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
NEVER = "0 3 1 1 *"  # a schedule that will not fire during a test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str):
    """Poll `condition` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def write_pg_bin(directory: Path, slow_when: str, seconds: float, gate: Path | None = None) -> Path:
    """A FAC_BACKUP_PG_BIN whose pg_dump runs the real one, then, when its arguments match
    the shell pattern `slow_when`, sleeps `seconds` (or, with `gate`, waits up to `seconds`
    for that file to exist); psql and pg_restore are the real ones."""
    directory.mkdir()
    real = find_pg_program("pg_dump") if not Path("/usr/bin/pg_dump").exists() else "/usr/bin/pg_dump"
    wait = f"sleep {seconds}"
    if gate is not None:
        wait = f'i=0; while [ ! -e "{gate}" ] && [ $i -lt {int(seconds * 10)} ]; do sleep 0.1; i=$((i+1)); done'
    script = directory / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        f'"{real}" "$@"\nstatus=$?\n'
        f'case "$*" in {slow_when}) {wait} ;; esac\n'
        "exit $status\n"
    )
    script.chmod(0o755)
    for name in ("psql", "pg_restore"):
        (directory / name).symlink_to(find_pg_program(name))
    return directory


class Daemon:
    """`python -m service daemon` in a child process, with its log in a file."""

    def __init__(self, env: dict, tmp: Path, nofile: int | None = None) -> None:
        self.env = env
        self.port = int(env["PORT"])
        self.socket = Path(env["FAC_BACKUP_CONTROL_SOCKET"])
        self.log_path = tmp / "daemon.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()

        def limit_open_files() -> None:  # a container with a small open-file limit
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

        self.proc = subprocess.Popen([sys.executable, "-m", "service", "daemon"], env=env, cwd=REPO,
                                     stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=limit_open_files)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=1) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def wait_healthy(self, timeout: float = 15) -> float:
        started = time.monotonic()
        wait_for(lambda: self.get("/healthz")[0] == 200 or self.proc.poll() is not None,
                 timeout, "/healthz")
        assert self.proc.poll() is None, self.log_text()
        return time.monotonic() - started

    def samples(self) -> dict:
        status, text = self.get("/metrics")
        assert status == 200
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def value(self, name: str, **labels) -> float | None:
        return self.samples().get((name, frozenset(labels.items())))

    def ctl(self, command: str, **fields) -> dict:
        return send_request(self.socket, {"command": command, **fields})

    def events(self) -> list[dict]:
        """Every line the daemon wrote (stdout and stderr), each of which must be a JSON event,
        as `cf logs` needs; a partial last line (being written) is left for the next look."""
        text = self.log_path.read_text(errors="replace")
        out = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"the daemon wrote a line that is not JSON: {line[:500]!r}") from None
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 10) -> tuple[int, float]:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        return code, time.monotonic() - started


@pytest.fixture
def start_daemon(sandbox):
    started: list[Daemon] = []

    def start(nofile: int | None = None, **overrides: str) -> Daemon:
        env = dict(sandbox.environ, PORT=str(free_port()), FAC_BACKUP_SCHEDULED_CRON=NEVER,
                   FAC_BACKUP_DAILY_CRON=NEVER, FAC_BACKUP_CHECK_CRON="off", FAC_BACKUP_VERIFY_CRON="off",
                   FAC_BACKUP_REPORT_CRON="off",
                   FAC_BACKUP_CATCH_UP="false", FAC_BACKUP_METRICS_REFRESH_SECONDS="1")
        env.update(overrides)
        daemon = Daemon(env, sandbox.tmp, nofile)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def test_daemon_is_healthy_within_seconds_and_exports_the_metric_contract(sandbox, start_daemon):
    """/healthz answers 200 within seconds; every contract metric is there with bounded labels."""
    daemon = start_daemon()
    assert daemon.wait_healthy() < 10
    samples = daemon.samples()
    names = {name for name, _ in samples}
    for job in jobs.JOBS:
        for outcome in OUTCOMES:
            labels = frozenset({"job": job, "outcome": outcome}.items())
            assert samples[("fac_backup_job_runs_total", labels)] == 0
        assert samples[("fac_backup_job_running", frozenset({"job": job}.items()))] == 0
        assert ("fac_backup_job_duration_seconds_count", frozenset({"job": job}.items())) in samples
    assert {"fac_backup_job_last_success_timestamp_seconds", "fac_backup_job_next_run_timestamp_seconds",
            "fac_backup_job_skipped_total", "fac_backup_build_info"} <= names
    next_runs = {dict(labels)["job"]: value for (name, labels), value in samples.items()
                 if name == "fac_backup_job_next_run_timestamp_seconds"}
    assert set(next_runs) == {"scheduled_backup", "daily_backup"}
    assert datetime.fromtimestamp(next_runs["scheduled_backup"]).year >= datetime.now().year
    for _name, labels in samples:
        assert "backup_id" not in dict(labels)
    with sandbox.connect() as conn:
        server = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    version_series = wait_for(lambda: {dict(labels)["binding"]: dict(labels) for (name, labels) in daemon.samples()
                                       if name == "fac_backup_database_version_info"} or None,
                              15, "fac_backup_database_version_info")
    assert set(version_series) == {"fac-db", "fac-snapshot-db"}
    assert version_series["fac-db"]["server_version"] == server
    assert version_series["fac-db"]["client_version"].split(".")[0] == server.split(".")[0]
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(5)
        raw.connect(str(daemon.socket))
        raw.sendall(b"\x00garbage{\n")
        assert json.loads(raw.makefile("rb").readline())["ok"] is False
    assert daemon.ctl("status")["scheduler_running"] is True
    code, seconds = daemon.stop()
    assert code == 0 and seconds < 10
    assert not daemon.socket.exists()


def test_trigger_over_the_socket_runs_the_job_and_counters_move(sample_db, start_daemon):
    """`trigger db_to_s3` is accepted at once, runs in the daemon, and moves the counters."""
    daemon = start_daemon()
    daemon.wait_healthy()
    reply = daemon.ctl("trigger", job="db_to_s3", args=[], options={})
    assert reply["ok"] and reply["accepted"] and reply["run_id"]
    wait_for(lambda: daemon.value("fac_backup_job_runs_total", job="db_to_s3", outcome="success") == 1,
             60, "db_to_s3 success counted")
    complete = [b for b in catalog.list_backups(sample_db.store()) if b.complete]
    assert len(complete) == 1
    finished = datetime.fromisoformat(complete[0].finished_at).timestamp()
    assert daemon.value("fac_backup_job_last_success_timestamp_seconds", job="db_to_s3") >= finished
    wait_for(lambda: daemon.value("fac_backup_last_backup_tables", job="db_to_s3") == complete[0].tables,
             10, "the backup's table count in the gauge")
    status = daemon.ctl("status")
    assert status["last"]["db_to_s3"]["outcome"] == "success"
    assert status["last"]["db_to_s3"]["run_id"] == reply["run_id"]
    assert status["running"] == []


def test_protected_trigger_without_confirmation_is_refused(sample_db, start_daemon):
    """A restore triggered without --confirm is refused with exit code 3 and nothing runs."""
    daemon = start_daemon()
    daemon.wait_healthy()
    protected = next(s.name for s in jobs.JOBS.values() if s.protected_target)
    spec = jobs.JOBS[protected]
    reply = daemon.ctl("trigger", job=protected, args=["x"] * len(spec.arguments), options={})
    assert reply["ok"] is False and reply["exit_code"] == 3
    assert "--confirm" in reply["hint"]
    assert daemon.ctl("status")["running"] == []


def test_one_off_run_waits_for_the_daemons_run_and_they_never_overlap(sample_db, start_daemon):
    """A `run db_to_s3` in another process waits for the lock; both finish, one after the other.
    The daemon's backup holds the lock until the one-off says it is waiting (a gate, not a sleep:
    however slow the machine, the one-off finds the lock taken)."""
    gate = sample_db.tmp / "one-off-is-waiting"
    pg_bin = write_pg_bin(sample_db.tmp / "pgbin", "*exclude-table-data*", 90, gate=gate)
    daemon = start_daemon(FAC_BACKUP_PG_BIN=str(pg_bin))
    daemon.wait_healthy()
    daemon.ctl("trigger", job="db_to_s3", args=[], options={})
    wait_for(lambda: any(e["event"] == "backup.started" for e in daemon.events()), 30,
             "the daemon's backup to hold the lock")
    out = sample_db.tmp / "one-off.out"
    with open(out, "wb") as sink:
        one_off = subprocess.Popen([sys.executable, "-m", "service", "run", "db_to_s3"], cwd=REPO,
                                   env=dict(daemon.env, PORT=""), stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b'"lock.waiting"' in out.read_bytes(), 60, "the one-off run to wait for the lock")
        gate.touch()
        assert one_off.wait(timeout=120) == 0, out.read_text()
    finally:
        gate.touch()
        if one_off.poll() is None:
            one_off.kill()
    wait_for(lambda: daemon.value("fac_backup_job_runs_total", job="db_to_s3", outcome="success") == 1,
             60, "the daemon's run to finish")
    manifests = sorted((b.manifest for b in catalog.list_backups(sample_db.store()) if b.complete),
                       key=lambda m: m.started_at)
    assert len(manifests) == 2
    first, second = manifests
    assert datetime.fromisoformat(first.finished_at) <= datetime.fromisoformat(second.started_at)


def test_a_drill_from_before_the_daemon_started_keeps_the_verified_gauge_fresh(sample_db, start_daemon):
    """A drill records verified.json beside the backup it proved; a daemon started afterwards (a
    restart, a deploy) reads it back, so the drill-freshness alert does not forget across restarts."""
    older = sample_db.run("initial_backup")  # two kinds: two ids, whatever the minute
    newer = sample_db.run("db_to_s3")
    assert older.outcome == newer.outcome == "success", (older.error, newer.error)
    proved = catalog.read_manifest(sample_db.store(), older.steps[0].figures["backup_id"])
    drill = sample_db.run("verify_backup", proved.id)
    assert drill.outcome == "success" and drill.steps[0].figures["recorded"] is True, drill.error
    assert drill.steps[0].figures["backup_id"] == proved.id
    record = json.loads(sample_db.store().get_bytes(layout.verified_key(proved.id)))
    assert record["backup_id"] == proved.id and record["backup_started_at"] == proved.started_at
    assert record["objects"] == drill.steps[0].figures["objects"]
    summaries = {s.id: s for s in catalog.list_backups(sample_db.store())}
    assert summaries[proved.id].verified_at and not summaries[newer.steps[-1].figures["backup_id"]].verified_at
    daemon = start_daemon()
    daemon.wait_healthy()
    wait_for(lambda: daemon.value("fac_backup_last_verified_backup_timestamp_seconds")
             == datetime.fromisoformat(proved.started_at).timestamp(), 10, "the gauge to show the recorded drill")


def test_one_off_run_shows_in_the_daemons_last_success_gauge(sample_db, start_daemon):
    """A backup made outside the daemon appears in its gauges within the refresh interval."""
    daemon = start_daemon()
    daemon.wait_healthy()
    assert daemon.value("fac_backup_job_last_success_timestamp_seconds", job="deploy_backup") == 0
    result = sample_db.run("db_to_s3", trigger="cli")
    assert result.outcome == "success"
    manifest = next(b.manifest for b in catalog.list_backups(sample_db.store()) if b.complete)
    finished = datetime.fromisoformat(manifest.finished_at).timestamp()
    wait_for(lambda: daemon.value("fac_backup_job_last_success_timestamp_seconds", job="db_to_s3")
             == finished, 10, "the gauge to show the one-off run")
    assert daemon.value("fac_backup_last_backup_size_bytes", job="db_to_s3") == manifest.total_bytes
    assert daemon.value("fac_backup_job_runs_total", job="db_to_s3", outcome="success") == 0


def test_sigterm_mid_backup_exits_within_10s_leaving_no_manifest_and_no_open_upload(sample_db,
                                                                                     start_daemon):
    """SIGTERM during a catch-up backup's upload: exit 0 in < 10 s, run aborted, nothing left."""
    with sample_db.connect() as conn:  # one table big enough for a multipart upload
        conn.execute("CREATE TABLE public.bulky AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) "
                     "AS payload FROM generate_series(1, 150000) g")
    pg_bin = write_pg_bin(sample_db.tmp / "pgbin", '*bulky*', 60)
    daemon = start_daemon(FAC_BACKUP_PG_BIN=str(pg_bin), FAC_BACKUP_CATCH_UP="true",
                          FAC_BACKUP_SCHEDULED_CRON="0 6-18/2 * * *", FAC_BACKUP_COMPRESSION="0",
                          FAC_BACKUP_MIN_PART_MIB="5")
    daemon.wait_healthy()
    wait_for(sample_db.open_uploads, 60, "the catch-up backup's multipart upload to be open")
    assert any(e["event"] == "daemon.catch_up" for e in daemon.events())
    code, seconds = daemon.stop()
    assert code == 0, daemon.log_text()
    assert seconds < 10
    assert sample_db.open_uploads() == []
    assert not any(b.complete for b in catalog.list_backups(sample_db.store()))
    events = daemon.events()
    aborted = [e for e in events if e["event"] == "job.aborted"]
    assert aborted and aborted[0]["job"] == "scheduled_backup"
    assert not daemon.socket.exists()
    assert processes_mentioning(str(pg_bin)) == []


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (a leftover pg_dump would)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_a_bad_schedule_stops_the_daemon_before_it_listens(sandbox):
    """A malformed cron in the environment: exit 2 naming the variable; no socket, no port."""
    env = dict(sandbox.environ, PORT=str(free_port()), FAC_BACKUP_DAILY_CRON="0 9 * * 1-9")
    done = sandbox.cli("daemon", env=env, timeout=60)
    assert done.returncode == 2
    assert "FAC_BACKUP_DAILY_CRON" in done.stderr
    assert not Path(env["FAC_BACKUP_CONTROL_SOCKET"]).exists()


def test_every_line_the_daemon_writes_is_json_apschedulers_too(sandbox, start_daemon):
    """A snapshot database that accepts connections and never answers keeps the version check
    running past its 1 s interval, so APScheduler warns that it skipped the next one: that
    warning is a JSON event like every other line the daemon writes."""
    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        sandbox.credential_overrides["fac-snapshot-db"] = {"port": str(silent.getsockname()[1])}
        daemon = start_daemon()
        daemon.wait_healthy()
        warning = wait_for(lambda: next((e for e in daemon.events()
                                         if e.get("logger", "").startswith("apscheduler")), None),
                           30, "APScheduler's warning as a JSON event")
        assert warning["event"] == "library.log" and warning["level"] == "warning"
        assert "maximum number of running instances" in warning["message"]
    # Closed, the silent peer resets the stuck connection: the check ends and the daemon can stop
    # (a check stuck for its whole 30 s connect timeout would hold up the exit).
    code, _ = daemon.stop()
    assert code == 0
    assert len(daemon.events()) == len(daemon.log_path.read_text().splitlines())
