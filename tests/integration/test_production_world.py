"""The test world is shaped like production, and failures in it keep secrets secret.

Every binding logs in as a non-superuser role that owns its database, with a
password checked over TCP with scram-sha-256 (as on RDS); each bucket binding
has keys of its own that reach only its bucket and its additional_buckets (as
cloud.gov issues them). A wrong password, a wrong key or another binding's
bucket fails the way it would there, and no secret appears in what a failing
run prints or in /metrics.
"""

from __future__ import annotations

import psycopg
import pytest

from service.errors import StorageError
from service.sandbox import new_secret
from service.storage import S3ObjectStore
from service.tasks.sync import sync_bucket
from tests.integration import test_daemon
from tests.integration.test_daemon import wait_for

pytestmark = pytest.mark.integration
start_daemon = test_daemon.start_daemon  # the daemon fixture of test_daemon, used here too


def binding_secrets(box) -> list[str]:
    """Every secret value of the sandbox's bindings (passwords, access keys, secret keys)."""
    creds = [b["credentials"] for bindings in box.vcap().values() for b in bindings]
    return [c[k] for c in creds for k in ("password", "access_key_id", "secret_access_key") if c.get(k)]


def assert_no_secret(text: str, secrets: list[str]) -> None:
    leaked = [s[:4] + "..." for s in secrets if s in text]
    assert not leaked, f"secrets in the output: {leaked}"


def server_checks_passwords(box) -> bool:
    """False on a server that trusts every TCP connection (a developer's FAC_BACKUP_TEST_DATABASE_URL)."""
    role = box.pg.owners[box.db][0]
    try:
        psycopg.connect(host=box.pg.host, port=box.pg.port, user=role, password="not-the-password",
                        dbname=box.db).close()
    except psycopg.OperationalError:
        return True
    return False


def test_bindings_log_in_as_password_roles_that_own_their_databases(sandbox):
    """fac-db and fac-snapshot-db are each owned by their binding's role, which is not a superuser."""
    config = sandbox.config()
    with sandbox.admin() as admin:
        for db in (config.fac_db, config.snapshot_db):
            row = admin.execute(
                "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolpassword IS NOT NULL, d.datdba = r.oid "
                "FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid, pg_database d "
                "WHERE r.rolname = %s AND d.datname = %s", (db.username, db.dbname)).fetchone()
            assert row == (False, False, False, True, True), db.name
            assert db.username != "postgres" and len(db.password) >= 24
    assert config.fac_db.password != config.snapshot_db.password
    assert config.media.secret_access_key != config.backups.secret_access_key
    assert config.media.access_key_id != config.backups.access_key_id


def test_the_throwaway_cluster_checks_passwords_with_scram(sandbox):
    """Over TCP every role needs its password (scram-sha-256); the superuser's is random too."""
    if sandbox.pg.tmpdir is None:
        pytest.skip("FAC_BACKUP_TEST_DATABASE_URL names an existing server: its authentication is its own")
    assert server_checks_passwords(sandbox)
    with sandbox.admin() as admin:
        rules = admin.execute("SELECT type, auth_method FROM pg_hba_file_rules").fetchall()
        assert ("host", "scram-sha-256") in rules and all(m != "trust" for t, m in rules if t == "host")
        stored = admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                               (sandbox.pg.owners[sandbox.db][0],)).fetchone()[0]
        assert stored.startswith("SCRAM-SHA-256$")


def test_a_wrong_database_password_fails_clearly_and_prints_no_secret(sample_db):
    """A rotated password: the run fails naming the binding and the cause; neither password is printed."""
    box = sample_db
    if not server_checks_passwords(box):
        pytest.skip("the server named by FAC_BACKUP_TEST_DATABASE_URL does not check passwords")
    wrong = new_secret()
    box.credential_overrides["fac-db"] = {"password": wrong}
    secrets = binding_secrets(box) + [box.pg.owners[box.db][1]]
    result = box.cli("run", "db_to_s3")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "cannot connect to fac-db" in out and "password authentication failed" in out
    assert_no_secret(out, secrets)


@pytest.mark.parametrize("fault", ["another_bucket's_key", "wrong_secret"])
def test_s3_refusing_the_key_fails_clearly_and_prints_no_secret(sample_db, fault):
    """A backups binding whose key S3 refuses (403) fails db_to_s3; no key or password is printed."""
    box = sample_db
    if fault == "wrong_secret":
        box.credential_overrides["backups"] = {"secret_access_key": new_secret()}
        expected = "SignatureDoesNotMatch"
    else:
        key_id, secret = box.s3.bucket_key((box.media,))  # a real key, for the media bucket only
        box.credential_overrides["backups"] = {"access_key_id": key_id, "secret_access_key": secret}
        expected = "AccessDenied"
    secrets = binding_secrets(box)
    result = box.cli("run", "db_to_s3")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert expected in out and f"s3://{box.backups}" in out
    assert_no_secret(out, secrets)


def test_a_copy_issued_with_the_wrong_bindings_client_is_refused(sample_db):
    """Media lists backups in additional_buckets, backups lists nothing: media_sync copies server-side
    with media's key, media_restore must stream, and a copy into media with backups' key gets a 403."""
    box = sample_db
    media_client = box.s3.client_for(box.media)
    for n in range(3):
        media_client.put_object(Bucket=box.media, Key=f"singleauditreport/{n}.pdf", Body=b"%PDF" + bytes([n]) * 99)
    vcap = box.vcap()
    backups_binding = next(b for b in vcap["s3"] if b["name"] == "backups")
    key_id, secret = box.s3.bucket_key((box.backups,))  # a binding of backups alone
    box.credential_overrides["backups"] = {"access_key_id": key_id, "secret_access_key": secret,
                                           "additional_buckets": []}
    assert backups_binding["credentials"]["additional_buckets"] == [box.media]
    synced = box.run("media_sync")
    assert synced.outcome == "success", synced.error
    for n in range(3):
        media_client.delete_object(Bucket=box.media, Key=f"singleauditreport/{n}.pdf")
    config = box.config()
    backups = S3ObjectStore(config.backups)
    assert backups.copier_for(S3ObjectStore(config.media)) is None  # not reachable: it must stream
    with pytest.raises(StorageError) as denied:
        S3ObjectStore(config.backups, bucket=box.media).copy_from(backups, "singleauditreport/0.pdf", size=103)
    assert "AccessDenied" in str(denied.value.detail)
    report = sync_bucket(backups, S3ObjectStore(config.media))  # what the media_restore step runs
    assert report.copied == 3 and not report.failures, report.failures
    body = media_client.get_object(Bucket=box.media, Key="singleauditreport/2.pdf")["Body"].read()
    assert body == b"%PDF" + b"\2" * 99


def test_metrics_and_log_of_failing_runs_hold_no_secret(sample_db, start_daemon):
    """After runs that failed on a wrong password and on an S3 403, /metrics and the log carry no secret."""
    box = sample_db
    key_id, secret = box.s3.bucket_key((box.media,))
    box.credential_overrides["backups"] = {"access_key_id": key_id, "secret_access_key": secret}
    jobs = ["db_to_s3"]
    if server_checks_passwords(box):
        box.credential_overrides["fac-snapshot-db"] = {"password": new_secret()}
        jobs.append("db_to_db")
    secrets = binding_secrets(box) + [box.pg.owners[box.db][1], box.pg.owners[box.snapshot_db][1]]
    daemon = start_daemon(FAC_BACKUP_WEBHOOK_URL=f"http://127.0.0.1:9/hook-{new_secret()}")
    daemon.wait_healthy()
    for job in jobs:
        assert daemon.ctl("trigger", job=job, args=[], options={})["accepted"]
        wait_for(lambda job=job: daemon.value("fac_backup_job_runs_total", job=job, outcome="failure") == 1,
                 60, f"{job} failure counted")
    status, metrics = daemon.get("/metrics")
    assert status == 200
    secrets.append(daemon.env["FAC_BACKUP_WEBHOOK_URL"].rsplit("/", 1)[1])
    assert_no_secret(metrics, secrets)
    daemon.stop()
    log = daemon.log_path.read_text(errors="replace")
    assert "AccessDenied" in log
    assert_no_secret(log, secrets)
