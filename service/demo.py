"""`python -m service demo`: the main job end to end with no cloud account.

Starts a throwaway PostgreSQL with FAC-like sample data and a local moto S3
server, points the service at them through a VCAP file, runs scheduled_backup
through the same registry as production, and prints the manifest summary.
"""

from __future__ import annotations

import os
import sys
import tempfile

from service import catalog, jobs
from service.config import load_config
from service.log import configure_logging
from service.sample_data import ensure_role, load_sample_database
from service.sandbox import LocalPostgres, LocalS3, build_vcap, write_vcap_file
from service.storage import S3ObjectStore

DEMO_API_ROLE = "api_fac_gov"  # FAC's PostgREST role, granted the sample's API schema


def run_demo(*, daemon: bool = False, rows: int = 5000) -> int:
    pg = LocalPostgres(os.environ.get("FAC_BACKUP_TEST_DATABASE_URL")).start()
    s3 = LocalS3().start()
    db = snapshot = None
    try:
        db, snapshot = pg.create_database(), pg.create_database()
        with pg.connect(db) as admin:  # roles belong to the cluster: the superuser creates them
            ensure_role(admin, DEMO_API_ROLE)
        with pg.connect_as_owner(db) as conn:  # the data belongs to the binding's role, as on RDS
            load_sample_database(conn, general_rows=rows, api_role=DEMO_API_ROLE)
        media, backups = s3.create_bucket("fac-private-s3-demo"), s3.create_bucket("fac-backups-demo")
        client = s3.client_for(media)  # the application writes with its own binding's keys
        for n in range(20):
            client.put_object(Bucket=media, Key=f"singleauditreport/2024/report-{n:03d}.pdf", Body=os.urandom(2048))
        with tempfile.TemporaryDirectory(prefix="fac-backup-demo-") as tmp:
            vcap = write_vcap_file(tmp, build_vcap(pg, s3, db=db, snapshot_db=snapshot, media=media, backups=backups))
            env = dict(os.environ, FAC_BACKUP_VCAP_FILE=str(vcap), FAC_BACKUP_S3_FIPS="false")
            env.pop("VCAP_SERVICES", None)
            config = load_config(env)
            configure_logging(config.settings.log_format, sys.stdout)
            if daemon:
                from service.daemon import run_daemon

                fast = dict(env, FAC_BACKUP_SCHEDULED_CRON="*/2 * * * *",
                            FAC_BACKUP_CONTROL_SOCKET=os.path.join(tmp, "control.sock"))
                print(f"demo: daemon on http://127.0.0.1:{config.settings.http_port}/metrics, "
                      f"socket {fast['FAC_BACKUP_CONTROL_SOCKET']}; Ctrl-C stops it", file=sys.stderr)
                return run_daemon(load_config(fast))
            result = jobs.run_job(config, "scheduled_backup", trigger="demo")
            if result.outcome != "success":
                print(f"demo: scheduled_backup ended {result.outcome}: {result.error}", file=sys.stderr)
                return result.exit_code
            print_summary(S3ObjectStore(config.backups))
            media = next((s.figures for s in result.steps if s.name == "media_sync"), {})
            print(f"media: {media.get('copied', 0)} objects copied ({media.get('copied_bytes', 0):,} bytes), "
                  f"{media.get('skipped', 0)} already there; run time {result.seconds:.1f} s")
            return 0
    finally:
        for name in (db, snapshot):
            if name:
                pg.drop_database(name)
        s3.stop()
        pg.stop()


def print_summary(store: S3ObjectStore) -> None:
    complete = [b for b in catalog.list_backups(store) if b.complete]
    m = complete[-1].manifest
    assert m is not None
    print(f"\nbackup {m.id}: {len(m.tables)} tables, {m.total_rows} rows, {m.total_bytes:,} bytes, "
          f"from {m.started_at} to {m.finished_at} (server {m.server_version}, pg_dump {m.pg_dump_version})")
    for t in m.tables:
        print(f"  {t.key:<64} {t.rows:>8} rows {t.bytes:>10,} bytes  sha256 {t.sha256[:12]}")
