"""Progress of real long steps: events from a restore, gauges and `ctl status` from the daemon."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from service import catalog
from tests.fakes import make_pg_bin
from tests.integration.test_daemon import start_daemon, wait_for, write_pg_bin  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
CONFIRM = {"confirm": "fac-db"}


def test_a_restore_reports_progress_against_what_the_manifest_says_it_will_read(sample_db):
    """s3_restore with slow pg_restore runs: step.progress events whose total is known in advance."""
    sample_db.extra_env["FAC_BACKUP_PROGRESS_SECONDS"] = "0.3"
    backup = sample_db.run("db_to_s3")
    assert backup.outcome == "success", backup.error
    manifest = catalog.read_manifest(sample_db.store(), backup.steps[0].figures["backup_id"])
    pg_bin = make_pg_bin(sample_db.tmp / "pgbin", pg_restore='sleep 0.2; exec "$REAL" "$@"')
    sample_db.extra_env["FAC_BACKUP_PG_BIN"] = str(pg_bin)
    with capture_logs() as logs:
        result = sample_db.run("s3_restore", manifest.id, options=CONFIRM)
    assert result.outcome == "success", result.error
    events = [e for e in logs if e["event"] == "step.progress"]
    assert len(events) >= 3, [e["event"] for e in logs]
    assert {e["step"] for e in events} == {"s3_restore"}
    tables = sum(t.bytes for t in manifest.tables)
    schema = int(manifest.schema["bytes"])
    grants = int(manifest.privileges["bytes"])
    # From the start: verify every object once, then load each table once and schema.dump four
    # times; the pre-restore backup adds its estimate (this very backup's table sizes) when it starts.
    restore_alone = (tables + schema + grants) + (tables + 4 * schema)
    assert {e["expected_bytes"] for e in events} <= {restore_alone, restore_alone + tables + schema}
    assert events[-1]["expected_bytes"] == restore_alone + tables + schema
    assert events[-1]["tables_total"] == 2 * len(manifest.tables)  # dumped for pre-restore, then loaded
    moved = [e["bytes"] for e in events]
    assert moved == sorted(moved) and moved[-1] > 0  # never backwards within the step
    assert all(e["bytes"] <= e["expected_bytes"] for e in events)
    finished = next(i for i, e in enumerate(logs) if e["event"] == "step.finished" and e["step"] == "s3_restore")
    assert all(e["step"] != "s3_restore" for e in logs[finished:] if e["event"] == "step.progress")


def test_the_daemon_exposes_a_running_jobs_progress_and_resets_it_after(sample_db, start_daemon):  # noqa: F811
    """While db_to_s3 runs: bytes and expected bytes in /metrics and in ctl status; 0 again after."""
    with sample_db.connect() as conn:  # a table large enough to be seen moving
        conn.execute("CREATE TABLE public.bulky AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) "
                     "AS payload FROM generate_series(1, 150000) g")
        conn.execute("ANALYZE public.bulky")
    flag = sample_db.tmp / "go"
    pg_bin = make_pg_bin(sample_db.tmp / "pgbin", pg_dump=f"""case "$*" in
  *bulky*) "$REAL" "$@"; while [ ! -e "{flag}" ]; do sleep 0.05; done ;;
  *) exec "$REAL" "$@" ;;
esac""")
    daemon = start_daemon(FAC_BACKUP_PG_BIN=str(pg_bin), FAC_BACKUP_PROGRESS_SECONDS="0.3",
                          FAC_BACKUP_COMPRESSION="0")
    daemon.wait_healthy()
    assert daemon.value("fac_backup_job_progress_bytes", job="db_to_s3") == 0
    daemon.ctl("trigger", job="db_to_s3", args=[], options={})
    # bulky's dump has been written into the pipe and its pg_dump waits for the flag: bytes stand still
    done = wait_for(lambda: (daemon.value("fac_backup_job_progress_bytes", job="db_to_s3") or 0) > 5_000_000
                    and daemon.value("fac_backup_job_progress_bytes", job="db_to_s3"), 60,
                    "the running backup's bytes in /metrics")
    expected = daemon.value("fac_backup_job_expected_bytes", job="db_to_s3")
    assert expected > 5_000_000  # the catalog's estimate of bulky alone is more than that
    status = daemon.ctl("status")
    running = [r for r in status["running"] if r["job"] == "db_to_s3"]
    assert running and running[0]["progress"]["step"] == "db_to_s3"
    assert running[0]["progress"]["bytes"] >= done
    assert running[0]["progress"]["expected_bytes"] == expected
    assert running[0]["progress"]["tables_total"] >= 1
    flag.touch()
    wait_for(lambda: daemon.ctl("status")["last"].get("db_to_s3"), 60, "the backup to finish")
    assert daemon.ctl("status")["last"]["db_to_s3"]["outcome"] == "success"
    assert daemon.value("fac_backup_job_progress_bytes", job="db_to_s3") == 0
    assert daemon.value("fac_backup_job_expected_bytes", job="db_to_s3") == 0
    assert any(e["event"] == "step.progress" and e["job"] == "db_to_s3" for e in daemon.events())
