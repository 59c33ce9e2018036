"""A throwaway PostgreSQL cluster and a local S3 server, for the demo, the tests and bench.

Nothing here runs in production. `LocalPostgres` uses an existing server when
given a URL (FAC_BACKUP_TEST_DATABASE_URL / DATABASE_URL), else it runs
`initdb` and `pg_ctl` in a temporary directory (as the `postgres` user through
`runuser` when we are root, since initdb refuses root). `LocalS3` is moto's
server mode on an ephemeral loopback port.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_program(name: str) -> str:
    """A PostgreSQL server program from PATH or the Debian layout, newest major first."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    raise RuntimeError(f"{name} not found: install postgresql-15 (apt-get install postgresql-15)")


class LocalPostgres:
    """A PostgreSQL server for tests: an existing one (by URL) or a throwaway cluster.

    The throwaway cluster skips fsync and full-page writes, which tests do not
    need; `durable=True` keeps PostgreSQL's defaults for both, as production
    has them, for benchmarks whose figures depend on what each write costs.
    """

    def __init__(self, url: str | None = None, *, durable: bool = False) -> None:
        self.url = url
        self.durable = durable
        self.tmpdir: str | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.user = "postgres"
        self.password = ""

    def start(self) -> LocalPostgres:
        if self.url:
            params = conninfo_to_dict(self.url)
            self.host = params.get("host") or "127.0.0.1"
            self.port = int(params.get("port") or 5432)
            self.user = params.get("user") or "postgres"
            self.password = params.get("password") or ""
            return self
        self.tmpdir = tempfile.mkdtemp(prefix="fac-backup-pg-")
        data = os.path.join(self.tmpdir, "data")
        as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.tmpdir, "postgres", "postgres")
            as_postgres = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        subprocess.run(
            [*as_postgres, find_pg_program("initdb"), "-D", data, "-A", "trust", "-U", "postgres",
             "-E", "UTF8", "--no-sync", "--locale=C"],
            check=True, capture_output=True,
        )
        options = f"-p {self.port} -k {self.tmpdir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(
            [*as_postgres, find_pg_program("pg_ctl"), "-D", data, "-o", options, "-w",
             "-l", os.path.join(self.tmpdir, "server.log"), "start"],
            check=True, capture_output=True,
        )
        return self

    def stop(self) -> None:
        if self.tmpdir is None:
            return
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*as_postgres, find_pg_program("pg_ctl"), "-D", os.path.join(self.tmpdir, "data"),
             "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(host=self.host, port=self.port, user=self.user,
                               password=self.password or None, dbname=dbname, autocommit=autocommit)

    def create_database(self, name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:10]}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def rds_binding(self, service_name: str, dbname: str) -> dict:
        """A VCAP_SERVICES aws-rds binding pointing at `dbname` on this server."""
        return {
            "name": service_name,
            "label": "aws-rds",
            "credentials": {
                "db_name": dbname, "host": self.host, "port": str(self.port), "name": dbname,
                "username": self.user, "password": self.password or "local-trust",
                "uri": "",
            },
        }


class LocalS3:
    """moto's S3 server on an ephemeral loopback port."""

    def __init__(self) -> None:
        self.server = None
        self.endpoint_url = ""

    def start(self) -> LocalS3:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-gov-west-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"b-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-gov-west-1"}
        )
        return name

    def s3_binding(self, service_name: str, bucket: str, additional: tuple[str, ...] = ()) -> dict:
        """A VCAP_SERVICES s3 binding for `bucket` on this server."""
        return {
            "name": service_name,
            "label": "s3",
            "credentials": {
                "access_key_id": "testing", "secret_access_key": "testing",
                "region": "us-gov-west-1", "bucket": bucket, "endpoint": self.endpoint_url,
                "uri": "", "additional_buckets": list(additional),
            },
        }


def build_vcap(pg: LocalPostgres, s3: LocalS3, *, db: str, snapshot_db: str, media: str,
               backups: str) -> str:
    """VCAP_SERVICES JSON for the four bindings, as cloud.gov would give them."""
    return json.dumps({
        "aws-rds": [pg.rds_binding("fac-db", db), pg.rds_binding("fac-snapshot-db", snapshot_db)],
        "s3": [s3.s3_binding("fac-private-s3", media, (backups,)),
               s3.s3_binding("backups", backups, (media,))],
    })


def write_vcap_file(directory: Path, vcap: str) -> Path:
    path = Path(directory) / "vcap.json"
    path.write_text(vcap, encoding="utf-8")
    return path
