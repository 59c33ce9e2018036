"""Shared fixtures: a real PostgreSQL server, a real moto S3 server, fresh databases and buckets.

The server is the one in FAC_BACKUP_TEST_DATABASE_URL (or DATABASE_URL) when set,
otherwise a throwaway cluster started for the session. Each test gets its own
databases and buckets, so tests never see each other's data.

The world is shaped like production (service.sandbox): each database belongs to
a login role of its own with a password, and each bucket's binding has keys of
its own that the S3 server checks. `sandbox.connect()` is the service's role
(the data a test loads belongs to it, as FAC's does on RDS); `sandbox.admin()`
and `pg_server.connect(db)` are the superuser, for administration only
(terminating backends, creating other roles, inspecting the cluster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service import jobs
from service.config import load_config
from service.log import configure_logging
from service.sample_data import ensure_role, load_sample_database
from service.sandbox import LocalPostgres, LocalS3, build_vcap, write_vcap_file
from service.storage import S3ObjectStore

REPO = Path(__file__).resolve().parent.parent
INTEGRATION = REPO / "tests" / "integration"


def pytest_collection_modifyitems(config, items):
    """Every test under tests/integration must carry the `integration` marker (`-m "not integration"`
    is how a quick run leaves out what needs PostgreSQL and S3): a missing one stops the run."""
    unmarked = [item.nodeid for item in items
                if INTEGRATION in Path(str(item.path)).parents and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError("integration tests without @pytest.mark.integration "
                                "(add `pytestmark = pytest.mark.integration` to the module): "
                                + ", ".join(unmarked[:20]))


@pytest.fixture(scope="session")
def pg_server():
    url = os.environ.get("FAC_BACKUP_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    server = LocalPostgres(url).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    server = LocalS3().start()
    yield server
    server.stop()


@dataclass
class Sandbox:
    """One test's world: fac-db, fac-snapshot-db, the media and backups buckets, and a config."""

    pg: LocalPostgres
    s3: LocalS3
    tmp: Path
    db: str
    snapshot_db: str
    media: str
    backups: str
    extra_env: dict = field(default_factory=dict)
    # binding name -> credentials to change in VCAP_SERVICES (a wrong password, another bucket's key)
    credential_overrides: dict = field(default_factory=dict)

    def vcap(self) -> dict:
        """VCAP_SERVICES as the service will read it, with `credential_overrides` applied."""
        vcap = json.loads(build_vcap(self.pg, self.s3, db=self.db, snapshot_db=self.snapshot_db,
                                     media=self.media, backups=self.backups))
        for bindings in vcap.values():
            for binding in bindings:
                binding["credentials"].update(self.credential_overrides.get(binding["name"], {}))
        return vcap

    @property
    def environ(self) -> dict:
        vcap = write_vcap_file(self.tmp, json.dumps(self.vcap()))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAC_BACKUP_", "AWS_"))}
        env.pop("VCAP_SERVICES", None)
        env.update(FAC_BACKUP_VCAP_FILE=str(vcap), FAC_BACKUP_S3_FIPS="false",
                   FAC_BACKUP_CONTROL_SOCKET=str(self.tmp / "control.sock"), FAC_BACKUP_LOG_FORMAT="json")
        env.update(self.extra_env)
        return env

    def config(self, **overrides: str):
        self.extra_env.update(overrides)
        return load_config(self.environ)

    def run(self, job: str, *args: str, options: dict | None = None, **kwargs):
        """Run a job in-process through the registry, as the CLI does."""
        return jobs.run_job(self.config(), job, tuple(args), options=options or {}, **kwargs)

    def cli(self, *argv: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run `python -m service ARGV` in a child process, as an operator would."""
        return subprocess.run([sys.executable, "-m", "service", *argv], env=env or self.environ, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    def store(self) -> S3ObjectStore:
        return S3ObjectStore(self.config().backups)

    def media_store(self) -> S3ObjectStore:
        return S3ObjectStore(self.config().media)

    def connect(self, which: str = "db"):
        """A connection to fac-db (or `which`="snapshot_db") as the binding's own role."""
        return self.pg.connect_as_owner(getattr(self, which))

    def admin(self, which: str = "db"):
        """A superuser connection to fac-db (or `which`), for administering the test world."""
        return self.pg.connect(getattr(self, which))

    def open_uploads(self) -> list:
        return self.s3.client().list_multipart_uploads(Bucket=self.backups).get("Uploads", [])


@pytest.fixture
def sandbox(pg_server, s3_server, tmp_path) -> Sandbox:
    """Empty databases and buckets; load data with `sample_db` or by hand."""
    box = Sandbox(pg_server, s3_server, tmp_path, pg_server.create_database(), pg_server.create_database(),
                  s3_server.create_bucket(), s3_server.create_bucket())
    configure_logging("json", sys.stdout)
    yield box
    for name in (box.db, box.snapshot_db):
        pg_server.drop_database(name)


# A second role, as FAC's PostgREST role `api_fac_gov`: roles are cluster-wide, so it is
# created once (idempotently, by any test run on the server) and never dropped.
API_ROLE = "fac_backup_test_api"


@pytest.fixture(scope="session")
def api_role(pg_server) -> str:
    with pg_server.connect() as conn:
        ensure_role(conn, API_ROLE)
    return API_ROLE


@pytest.fixture
def sample_db(sandbox, api_role) -> Sandbox:
    """The sandbox with FAC-like sample data in fac-db, granted to the API role as FAC grants it."""
    with sandbox.connect() as conn:
        load_sample_database(conn, general_rows=300, awards_per_audit=3, small_tables=3, api_role=api_role)
    return sandbox
