"""Bindings that point a job at itself, or that are malformed, stop everything before anything runs;
and the copy, the restore and the drill refuse such a pair again even if it got past configuration."""

from __future__ import annotations

import dataclasses
import json

import pytest

from service import catalog, jobs
from service.errors import SafetyError
from tests.integration.test_restore import CONFIRM, database_state

pytestmark = pytest.mark.integration


def events_of(done) -> list[str]:
    return [json.loads(line)["event"] for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("job,extra", [("db_to_db", []), ("db_restore", ["--confirm", "fac-db", "--force"]),
                                       ("row_count", [])])
def test_a_snapshot_binding_naming_fac_db_as_localhost_stops_every_job(sample_db, job, extra):
    """fac-snapshot-db bound to fac-db's own database as LOCALHOST (fac-db says 127.0.0.1): every
    job, db_to_db and its reverse db_restore included, exits 2 before it starts; fac-db is as it was."""
    with sample_db.connect() as conn:
        before = database_state(conn)
    sample_db.credential_overrides["fac-snapshot-db"] = {"host": "LOCALHOST", "db_name": sample_db.db}
    done = sample_db.cli("run", job, *extra)
    assert done.returncode == 2, done.stderr
    assert "'fac-snapshot-db' points at the same database as 'fac-db'" in done.stderr
    assert "job.started" not in events_of(done)
    with sample_db.connect() as conn:
        assert database_state(conn) == before


def test_malformed_binding_values_stop_the_run_before_row_count(sample_db):
    """A port of 99999 and an endpoint that is not a URL: exit 2 listing both, before any step
    (the endpoint used to exit 70 after row_count had run)."""
    sample_db.credential_overrides["fac-snapshot-db"] = {"port": "99999"}
    sample_db.credential_overrides["fac-private-s3"] = {"endpoint": "http://[::1"}
    done = sample_db.cli("run", "scheduled_backup")
    assert done.returncode == 2, done.stderr
    assert "port '99999' is not a TCP port" in done.stderr and "endpoint 'http://[::1'" in done.stderr
    assert "configuration has 2 problem(s)" in done.stderr
    assert events_of(done) == [] and "Traceback" not in done.stderr


def pointed_at_fac_db(config, attribute: str):
    """`config` with one binding naming fac-db's database as LOCALHOST: what configuration refuses,
    built past it, to see that the jobs refuse it themselves."""
    twin = dataclasses.replace(config.fac_db, name=getattr(config, attribute).name, host="LOCALHOST")
    return dataclasses.replace(config, **{attribute: twin})


@pytest.mark.parametrize("job", ["db_to_db", "db_restore"])
def test_the_copy_and_its_reverse_refuse_a_self_pointing_pair_before_touching_anything(sample_db, job):
    """db_to_db and db_restore given a snapshot that is fac-db: refused (exit 3) before any pre-restore
    backup or connection; fac-db unchanged and nothing written to the bucket."""
    with sample_db.connect() as conn:
        before = database_state(conn)
    config = pointed_at_fac_db(sample_db.config(), "snapshot_db")
    result = jobs.run_job(config, job, options={**CONFIRM, "force": True})
    assert result.outcome == "failure" and isinstance(result.error, SafetyError), result.error
    assert result.exit_code == 3 and "onto itself" in result.error.message
    assert catalog.list_backups(sample_db.store()) == []
    with sample_db.connect() as conn:
        assert database_state(conn) == before


def test_the_drill_refuses_a_scratch_binding_that_is_fac_db(sample_db):
    """verify_backup with a scratch binding naming fac-db (as LOCALHOST) refuses before loading."""
    assert sample_db.run("db_to_s3").outcome == "success"
    with sample_db.connect() as conn:
        before = database_state(conn)
    config = sample_db.config()
    config = dataclasses.replace(config, restore_test_db=dataclasses.replace(config.fac_db, name="scratch",
                                                                             host="LOCALHOST"))
    result = jobs.run_job(config, "verify_backup")
    assert isinstance(result.error, SafetyError) and "points at fac-db" in result.error.message
    with sample_db.connect() as conn:
        assert database_state(conn) == before
