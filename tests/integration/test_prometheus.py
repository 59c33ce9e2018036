"""A real Prometheus server, with the shipped rules loaded, scrapes the real daemon over HTTP
and raises FacBackupJobFailed when a backup fails."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.integration.test_daemon import NEVER, Daemon, free_port, wait_for
from tests.tools import require_tool

pytestmark = pytest.mark.integration
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-alerts.yml"


class Prometheus:
    """`prometheus` on an ephemeral port and a temporary storage directory, scraping every second."""

    def __init__(self, tmp: Path, target_port: int) -> None:
        program = require_tool("prometheus")
        self.port = free_port()
        config = tmp / "prometheus.yml"
        # The scrape configuration docs/metrics.md shows, with intervals short enough for a test.
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "fac-backup", "honor_labels": True,
                                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }))
        self.log_path = tmp / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [program, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str):
        """The `data` of a Prometheus HTTP API answer, or None while the server is not up."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/{path}{query}",
                                        timeout=2) as reply:
                return json.load(reply)["data"]
        except (urllib.error.URLError, OSError):
            assert self.proc.poll() is None, f"prometheus exited: {self.log_text()}"
            return None

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        return data["result"] if data else []

    def alerts(self, name: str) -> list[dict]:
        data = self.api("alerts")
        return [a for a in (data or {}).get("alerts", []) if a["labels"]["alertname"] == name]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def write_failing_pg_dump(directory: Path) -> Path:
    """A FAC_BACKUP_PG_BIN whose pg_dump answers --version truthfully and then fails every dump."""
    from service.sandbox import find_pg_program

    directory.mkdir()
    real = find_pg_program("pg_dump")
    script = directory / "pg_dump"
    script.write_text("#!/bin/sh\n"
                      f'[ "$1" = "--version" ] && exec "{real}" --version\n'
                      'echo "pg_dump: error: injected failure for the alert test" >&2\nexit 1\n')
    script.chmod(0o755)
    for name in ("psql", "pg_restore"):
        (directory / name).symlink_to(find_pg_program(name))
    return directory


def test_prometheus_raises_job_failed_when_a_backup_fails(sample_db, tmp_path):
    """Prometheus scraping the daemon with the shipped rules: a failed db_to_s3 turns
    FacBackupJobFailed{job="db_to_s3"} pending or firing in Prometheus' API."""
    env = dict(sample_db.environ, PORT=str(free_port()), FAC_BACKUP_SCHEDULED_CRON=NEVER,
               FAC_BACKUP_DAILY_CRON=NEVER, FAC_BACKUP_CHECK_CRON="off", FAC_BACKUP_VERIFY_CRON="off",
               FAC_BACKUP_REPORT_CRON="off", FAC_BACKUP_CATCH_UP="false",
               FAC_BACKUP_PG_BIN=str(write_failing_pg_dump(tmp_path / "pgbin")))
    daemon = Daemon(env, tmp_path)
    prometheus = None
    try:
        daemon.wait_healthy(30)
        prometheus = Prometheus(tmp_path, daemon.port)
        wait_for(lambda: prometheus.query('fac_backup_job_runs_total{job="db_to_s3",outcome="failure"}'),
                 60, "Prometheus to scrape the daemon's failure counter")
        groups = prometheus.api("rules")["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} >= {"FacBackupJobFailed"}
        assert not prometheus.alerts("FacBackupJobFailed")

        reply = daemon.ctl("trigger", job="db_to_s3", args=[], options={})
        assert reply["accepted"]
        wait_for(lambda: daemon.value("fac_backup_job_runs_total", job="db_to_s3", outcome="failure") == 1,
                 60, "the backup to fail")
        alerts = wait_for(lambda: [a for a in prometheus.alerts("FacBackupJobFailed")
                                   if a["state"] in ("pending", "firing")],
                          60, "FacBackupJobFailed to become pending or firing")
        assert alerts[0]["labels"]["job"] == "db_to_s3"
        assert alerts[0]["labels"]["outcome"] == "failure"
        assert alerts[0]["annotations"]["summary"] == "fac-backup job db_to_s3 failed"
    finally:
        if prometheus is not None:
            prometheus.stop()
        daemon.stop()
