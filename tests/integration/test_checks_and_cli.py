"""row_count, check_tables, list, and the CLI's exit codes, against a real PostgreSQL and S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

ODD_TABLES = ['"Weird Schema"."Quote""d Name"', 'public."select"', 'public."Ünïcode tablé"', 'public."With Space"']


@pytest.fixture
def odd_db(sandbox):
    """fac-db holding tables whose names need quoting in every way."""
    with sandbox.connect() as conn:
        conn.execute('CREATE SCHEMA "Weird Schema"')
        for n, name in enumerate(ODD_TABLES):
            conn.execute(f"CREATE TABLE {name} (id int)")
            conn.execute(f"INSERT INTO {name} SELECT generate_series(1, {n + 2})")
    return sandbox


def test_row_count_counts_tables_with_any_name(odd_db):
    """Exact counts for names with quotes, spaces, capitals, non-ASCII letters and reserved words."""
    result = odd_db.run("row_count")
    assert result.outcome == "success", result.error
    counts = result.steps[0].figures["counts"]
    assert counts == {'Weird Schema.Quote"d Name': 2, "public.select": 3, "public.Ünïcode tablé": 4,
                      "public.With Space": 5}


def test_check_tables_names_every_missing_table_and_reports_extras(odd_db, tmp_path):
    """A manifest table absent from the database fails the job, listing all missing; extras are reported."""
    manifest = tmp_path / "tables.txt"
    manifest.write_text('"Weird Schema"."Quote""d Name"\nselect\nmissing_one\nother.missing_two\n')
    done = odd_db.cli("run", "check_tables", env=dict(odd_db.environ, FAC_BACKUP_TABLE_MANIFEST=str(manifest)))
    assert done.returncode == 1
    assert "public.missing_one, other.missing_two" in done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    unlisted = next(e for e in events if e["event"] == "check_tables.unlisted")
    assert set(unlisted["tables"]) == {"public.Ünïcode tablé", "public.With Space"}
    summary = events[-1]
    assert summary["event"] == "job.failed" and summary["failed_step"] == "check_tables"


def test_check_tables_passes_when_all_are_present(odd_db, tmp_path):
    """With every manifest table present the job succeeds and logs each table's rows."""
    manifest = tmp_path / "tables.txt"
    manifest.write_text("# all present\nselect\n\"With Space\"\n")
    done = odd_db.cli("run", "check_tables", env=dict(odd_db.environ, FAC_BACKUP_TABLE_MANIFEST=str(manifest)))
    assert done.returncode == 0, done.stderr
    events = map(json.loads, done.stdout.splitlines())
    rows = {e["table"]: e["rows"] for e in events if e["event"] == "check_tables.table"}
    assert rows == {"public.select": 3, "public.With Space": 5}


def test_unknown_job_exits_2_listing_jobs(sandbox):
    """A mistyped job name is a usage error that names the known jobs."""
    done = sandbox.cli("run", "schedueld_backup")
    assert done.returncode == 2
    assert "unknown job 'schedueld_backup'" in done.stderr and "scheduled_backup" in done.stderr


def test_bad_configuration_exits_2_naming_every_problem(sandbox, tmp_path):
    """Malformed settings stop the run before any work, each problem named, no secret printed."""
    env = dict(sandbox.environ, FAC_BACKUP_TIMEZONE="Pacific/Nowhere", FAC_BACKUP_COMPRESSION="11",
               FAC_BACKUP_BACKUPS_SERVICE="no-such-binding")
    done = sandbox.cli("run", "db_to_s3", env=env)
    assert done.returncode == 2
    for fragment in ("Pacific/Nowhere", "FAC_BACKUP_COMPRESSION=11", "'no-such-binding'"):
        assert fragment in done.stderr
    assert "testing" not in done.stderr and "local-trust" not in done.stderr


def test_list_shows_complete_and_incomplete_backups(sample_db):
    """`list --json` shows each backup with its job, tables and bytes, and flags an incomplete one."""
    assert sample_db.run("db_to_s3").outcome == "success"
    sample_db.store().put_bytes("backups/scheduled-06-04-10/public-x.dump", b"partial")
    done = sample_db.cli("list", "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["id"]: r for r in json.loads(done.stdout)}
    assert rows["scheduled-06-04-10"]["complete"] is False
    complete = [r for r in rows.values() if r["complete"]]
    assert len(complete) == 1 and complete[0]["job"] == "db_to_s3" and complete[0]["tables"] == 14


def test_demo_runs_the_main_job_end_to_end(pg_server):
    """The README's first command: scheduled_backup on a sandbox, printing the manifest summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAC_BACKUP_")}
    if pg_server.tmpdir is None:  # reuse the suite's server when it is an existing one
        env["FAC_BACKUP_TEST_DATABASE_URL"] = f"postgresql://{pg_server.user}@{pg_server.host}:{pg_server.port}/postgres"
    done = subprocess.run([sys.executable, "-m", "service", "demo", "--rows", "300"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backup scheduled-" in done.stdout and "support-cog_over.dump" in done.stdout
