"""Restores in a cloud.gov space need the space in their confirmation: CLI, socket, events, manifest, webhook.

Real PostgreSQL and the moto server; VCAP_APPLICATION set as cloud.gov sets it.
"""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from service import catalog, notify
from tests.integration.test_daemon import start_daemon, wait_for  # noqa: F401 - start_daemon is a fixture
from tests.integration.test_notify import Receiver
from tests.integration.test_restore import database_state, pre_restore_ids, take_backup

pytestmark = pytest.mark.integration

PRODUCTION = json.dumps({"application_name": "fac-backup", "space_name": "production", "organization_name": "gsa"})
NEEDED = "repeat the command with --confirm production/fac-db"


@pytest.fixture
def production_db(sample_db):
    """The sample database, seen by a service that runs in space `production`."""
    sample_db.extra_env["VCAP_APPLICATION"] = PRODUCTION
    return sample_db


def test_in_a_space_a_restore_without_the_space_is_refused_and_touches_nothing(production_db):
    """`--confirm fac-db` (and another space's confirmation) exit 3 in production; fac-db is as it was."""
    backup_id = take_backup(production_db)
    with production_db.connect() as conn:
        conn.execute("DELETE FROM public.lookup_01")
        before = database_state(conn)
    bare = production_db.cli("run", "s3_restore", backup_id, "--confirm", "fac-db")
    assert bare.returncode == 3, bare.stderr
    assert ("s3_restore overwrites fac-db in space production and needs the space in its confirmation: "
            "--confirm fac-db does not name it; nothing was touched") in bare.stderr
    assert NEEDED in bare.stderr
    copied = production_db.cli("run", "s3_restore", backup_id, "--confirm", "dev/fac-db")
    assert copied.returncode == 3 and "the confirmation names space dev" in copied.stderr
    from_snapshot = production_db.cli("run", "db_restore", "--confirm", "fac-db")
    assert from_snapshot.returncode == 3 and NEEDED in from_snapshot.stderr
    with production_db.connect() as conn:
        assert database_state(conn) == before
    assert pre_restore_ids(production_db) == []


def test_in_a_space_the_space_qualified_restore_runs_and_every_record_names_it(production_db):
    """`--confirm production/fac-db` restores; restore.started, the pre-restore manifest and the
    webhook name the space, the binding and the confirmation."""
    with production_db.connect() as conn:
        before = database_state(conn)
    backup_id = take_backup(production_db)
    with production_db.connect() as conn:
        conn.execute("DELETE FROM public.lookup_01")
    notify.forget_outcomes()
    with Receiver() as receiver:
        production_db.extra_env["FAC_BACKUP_WEBHOOK_URL"] = receiver.url
        with capture_logs() as logs:
            result = production_db.run("s3_restore", backup_id, options={"confirm": "production/fac-db"})
        bodies = receiver.received()
    notify.forget_outcomes()
    assert result.outcome == "success", result.error
    with production_db.connect() as conn:
        assert database_state(conn) == before
    named = {"space": "production", "binding": "fac-db", "confirmation": "production/fac-db"}
    (started,) = [e for e in logs if e["event"] == "restore.started"]
    assert {k: started[k] for k in named} == named and started["backup_id"] == backup_id
    (pre_restore,) = pre_restore_ids(production_db)
    manifest = catalog.read_manifest(production_db.store(), pre_restore)
    assert manifest.before_restore == {**named, "source": backup_id, "run_id": result.run_id}
    shown = production_db.cli("show", pre_restore)
    assert (f"taken before restoring {backup_id} into production/fac-db "
            f"(--confirm production/fac-db, run {result.run_id})") in shown.stdout
    (body,) = bodies
    assert (body["space"], body["binding"], body["confirmation"]) == ("production", "fac-db", "production/fac-db")
    assert body["outcome"] == "success"
    assert body["text"].startswith("fac-backup (production): s3_restore of production/fac-db "
                                   "(--confirm production/fac-db) succeeded")


def test_in_a_space_db_restore_names_its_source_and_the_space(production_db):
    """db_restore with the space named: restore.started names the snapshot binding, the space, the confirmation."""
    assert production_db.run("db_to_db").outcome == "success"
    with capture_logs() as logs:
        result = production_db.run("db_restore", options={"confirm": "production/fac-db", "force": True})
    assert result.outcome == "success", result.error
    (started,) = [e for e in logs if e["event"] == "restore.started"]
    assert (started["source"], started["space"], started["binding"], started["confirmation"]) == (
        "fac-snapshot-db", "production", "fac-db", "production/fac-db")
    (pre_restore,) = pre_restore_ids(production_db)
    before = catalog.read_manifest(production_db.store(), pre_restore).before_restore
    assert before["source"] == "fac-snapshot-db" and before["space"] == "production"


def test_without_a_space_the_binding_alone_still_restores(sample_db):
    """No VCAP_APPLICATION (a laptop, the demo): `--confirm fac-db` restores as before; records have no space."""
    backup_id = take_backup(sample_db)
    with capture_logs() as logs:
        result = sample_db.run("s3_restore", backup_id, options={"confirm": "fac-db"})
    assert result.outcome == "success", result.error
    (started,) = [e for e in logs if e["event"] == "restore.started"]
    assert (started["space"], started["binding"], started["confirmation"]) == ("", "fac-db", "fac-db")
    refused = sample_db.cli("run", "s3_restore", backup_id, "--confirm", "production/fac-db")
    assert refused.returncode == 3 and "cannot be checked" in refused.stderr


def test_on_the_socket_a_restore_in_a_space_needs_the_space(production_db, start_daemon):  # noqa: F811
    """`ctl trigger s3_restore ID --confirm fac-db` is refused (exit 3, the hint names the space, nothing
    runs); `--confirm production/fac-db` runs the restore in the daemon."""
    backup_id = take_backup(production_db)
    with production_db.connect() as conn:
        conn.execute("DELETE FROM public.lookup_01")
        damaged = database_state(conn)
    daemon = start_daemon()
    daemon.wait_healthy()
    reply = daemon.ctl("trigger", job="s3_restore", args=[backup_id], options={"confirm": "fac-db"})
    assert reply["ok"] is False and reply["exit_code"] == 3
    assert "fac-db in space production" in reply["error"] and reply["hint"] == NEEDED
    client = production_db.cli("ctl", "trigger", "s3_restore", backup_id, "--confirm", "fac-db", env=daemon.env)
    assert client.returncode == 3 and NEEDED in client.stderr
    assert daemon.ctl("status")["running"] == []
    with production_db.connect() as conn:
        assert database_state(conn) == damaged
    accepted = daemon.ctl("trigger", job="s3_restore", args=[backup_id], options={"confirm": "production/fac-db"})
    assert accepted["ok"] is True, accepted
    finished = wait_for(lambda: [e for e in daemon.events() if e["event"] in ("job.finished", "job.failed")
                                 and e.get("job") == "s3_restore"], 120, "the restore to end")
    assert finished[0]["event"] == "job.finished", daemon.log_text()
    (started,) = [e for e in daemon.events() if e["event"] == "restore.started"]
    assert (started["space"], started["confirmation"]) == ("production", "production/fac-db")
    with production_db.connect() as conn:
        assert database_state(conn) != damaged
