"""Privileges and sequences through s3_restore, db_restore and db_to_db, against real PostgreSQL and moto.

The sample database carries FAC's grants to an API role (schema USAGE, view SELECT, table,
column, sequence and function grants, a REVOKE EXECUTE ... FROM PUBLIC, default privileges);
the production-like test adds what else production databases carry. Every test compares
whole-database fingerprints (tests.fingerprint), privileges included.
"""

from __future__ import annotations

import json
import uuid

import pytest
from psycopg import sql
from structlog.testing import capture_logs

from service import catalog, layout, privileges
from tests.fingerprint import assert_same_database, fingerprint

pytestmark = pytest.mark.integration

CONFIRM = {"confirm": "fac-db"}

# Beyond the sample: what else a production database carries (the list), written here
# so nothing is downloaded at test time. Circular foreign keys, a custom aggregate, comments,
# a schema and an enum label in non-ASCII letters, a generated column.
PRODUCTION_EXTRAS_SQL = """
CREATE SCHEMA "données";
CREATE TYPE "données"."état" AS ENUM ('reçu', 'validé');
CREATE TABLE "données".auditor (id int PRIMARY KEY, firm text NOT NULL, lead_report int);
CREATE TABLE "données".engagement (
    id int PRIMARY KEY,
    auditor_id int NOT NULL REFERENCES "données".auditor (id) DEFERRABLE INITIALLY DEFERRED,
    "état" "données"."état" NOT NULL DEFAULT 'reçu',
    fee numeric(12, 2) NOT NULL,
    fee_cents bigint GENERATED ALWAYS AS ((fee * 100)::bigint) STORED);
ALTER TABLE "données".auditor ADD CONSTRAINT auditor_lead_fk FOREIGN KEY (lead_report)
    REFERENCES "données".engagement (id) DEFERRABLE INITIALLY DEFERRED;
BEGIN;
INSERT INTO "données".auditor VALUES (1, 'Müller & Søn', 10), (2, 'Ørsted LLP', 20);
INSERT INTO "données".engagement (id, auditor_id, "état", fee)
    VALUES (10, 1, 'validé', 1200.50), (20, 2, 'reçu', 99.99);
COMMIT;
CREATE FUNCTION "données".fee_sum_step(numeric, numeric) RETURNS numeric LANGUAGE sql IMMUTABLE
    AS 'SELECT coalesce($1, 0) + $2';
CREATE AGGREGATE "données".total_fee(numeric) (SFUNC = "données".fee_sum_step, STYPE = numeric);
REVOKE ALL ON FUNCTION "données".total_fee(numeric) FROM PUBLIC;
COMMENT ON TABLE "données".engagement IS 'engagements, one per audit';
COMMENT ON COLUMN "données".engagement.fee IS 'in dollars';
GRANT USAGE ON SCHEMA "données" TO {role};
GRANT SELECT ON "données".engagement TO {role};
GRANT EXECUTE ON FUNCTION "données".total_fee(numeric) TO {role};
GRANT SELECT, UPDATE ON SEQUENCE support.cog_summary_id_seq TO {role};
REVOKE USAGE ON TYPE "données"."état" FROM PUBLIC;
GRANT USAGE ON TYPE "données"."état" TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA "données" GRANT SELECT ON SEQUENCES TO {role};
ALTER DEFAULT PRIVILEGES REVOKE USAGE ON TYPES FROM PUBLIC;
"""


def damage_privileges(conn, role: str) -> None:
    """Grants lost, access widened, default privileges changed: what a bad restore leaves."""
    r = sql.Identifier(role).as_string(conn)
    conn.execute(f"REVOKE ALL ON SCHEMA api_v1_1_0 FROM {r}")
    conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA api_v1_1_0 FROM {r}")
    conn.execute("GRANT EXECUTE ON FUNCTION public.audit_year_of(text) TO PUBLIC")
    conn.execute("GRANT SELECT ON support.staff_note TO PUBLIC")
    conn.execute(f"ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM {r}")
    conn.execute(f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {r}")
    conn.execute("SELECT nextval('support.cog_summary_id_seq')")


def take_backup(box) -> str:
    result = box.run("db_to_s3")
    assert result.outcome == "success", result.error
    return result.steps[-1].figures["backup_id"]


def succeeded(result) -> dict:
    assert result.steps and result.steps[0].outcome == "success", str(result.error)
    return result.steps[0].figures


def public_can_execute(conn, function: str) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_proc p, aclexplode(coalesce(p.proacl, "
                        "acldefault('f', p.proowner))) a WHERE p.oid = %s::regprocedure AND a.grantee = 0)",
                        (function,)).fetchone()[0]


@pytest.fixture
def production_db(sample_db, api_role):
    """The sample plus what else production databases carry."""
    with sample_db.connect() as conn:
        conn.execute(PRODUCTION_EXTRAS_SQL.replace("{role}", sql.Identifier(api_role).as_string(conn)))
    return sample_db


@pytest.fixture
def gone_role(pg_server):
    """A role of this test only (roles are cluster-wide): dropped by the test, or at teardown."""
    name = f"fac_backup_gone_{uuid.uuid4().hex[:10]}"
    with pg_server.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    yield name
    with pg_server.connect() as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def drop_role_everywhere(box, role: str) -> None:
    """Drop a role after removing its privileges from every database of the sandbox."""
    for name in (box.db, box.snapshot_db):
        with box.pg.connect(name) as conn:  # the server's administrator: DROP OWNED needs it
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with box.pg.connect() as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_production_like_database_round_trips_exactly(production_db, api_role):
    """A database with partitions, domains, enums, plpgsql functions and an audit trigger, a populated and
    an unpopulated materialized view, an extension, a policy, circular keys, an aggregate, comments,
    non-ASCII names and grants comes back identical, privileges included, through db_to_db, s3_restore
    over fac-db, db_restore, and s3_restore into an empty database."""
    box = production_db
    with box.connect() as conn:
        source = fingerprint(conn)
        assert not public_can_execute(conn, "public.audit_year_of(text)")
    assert source["rows support.cog_summary"][0] > 0 and ("support", "history_by_year") in [
        (s, n) for s, n, kind, populated, *_ in source["relations"] if kind == "m" and not populated]

    copied = box.run("db_to_db")
    assert succeeded(copied)["privileges_applied"] > 40 and copied.steps[0].figures["roles_missing"] == 0
    with box.connect() as conn, box.connect("snapshot_db") as snap:
        assert_same_database(conn, snap)

    backup_id = take_backup(box)
    with box.connect() as conn:
        damage_privileges(conn, api_role)
        assert fingerprint(conn) != source
    restored = succeeded(box.run("s3_restore", backup_id, options=CONFIRM))
    assert restored["privileges_in_backup"] and restored["roles_missing"] == 0
    with box.connect() as conn:
        assert fingerprint(conn) == source
        assert not public_can_execute(conn, "public.audit_year_of(text)")

    with box.connect() as conn:
        damage_privileges(conn, api_role)
    assert succeeded(box.run("db_restore", options={**CONFIRM, "force": True}))["privileges_applied"] > 40
    with box.connect() as conn:
        assert fingerprint(conn) == source

    empty = box.pg.create_database()
    try:
        box.db = empty
        succeeded(box.run("s3_restore", backup_id, options=CONFIRM))
        with box.connect() as conn:
            got = fingerprint(conn)
    finally:
        box.db = box.snapshot_db  # anything but the database about to be dropped
        box.pg.drop_database(empty)
    assert got == source


def test_grant_to_a_role_missing_on_the_target_is_skipped_and_named(sample_db, gone_role, api_role):
    """s3_restore of a backup whose grants name a role the server no longer has: those grants are
    skipped, the role named in one warning and counted; every other privilege is applied."""
    box = sample_db
    with box.connect() as conn:
        role = sql.Identifier(gone_role).as_string(conn)
        conn.execute(f"GRANT SELECT ON public.dissemination_general TO {role}")
        conn.execute(f"GRANT SELECT (report_id) ON public.dissemination_finding TO {role}")
        conn.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA support GRANT SELECT ON TABLES TO {role}")
    backup_id = take_backup(box)
    drop_role_everywhere(box, gone_role)
    with box.connect() as conn:
        expected = fingerprint(conn)  # the source as it is without that role
        damage_privileges(conn, api_role)
    with capture_logs() as logs:
        figures = succeeded(box.run("s3_restore", backup_id, options=CONFIRM))
    warnings = [e for e in logs if e["event"] == "privileges.roles_missing"]
    assert len(warnings) == 1 and warnings[0]["roles"] == [gone_role] and warnings[0]["log_level"] == "warning"
    assert figures["roles_missing"] == 1 and figures["privileges_skipped"] == 3
    assert figures["privileges_applied"] > 20
    with box.connect() as conn:
        assert fingerprint(conn) == expected


def test_db_to_db_skips_roles_the_snapshot_server_lacks(sample_db, api_role, monkeypatch):
    """db_to_db onto a server without the API role (the snapshot is a separate instance) commits
    the copy, grants everything else, and names the role once."""
    real = privileges.read_target_roles

    def without_api_role(conn):
        roles, member_of = real(conn)
        return roles - {api_role}, member_of - {api_role}

    monkeypatch.setattr(privileges, "read_target_roles", without_api_role)
    with capture_logs() as logs:
        figures = succeeded(sample_db.run("db_to_db"))
    warnings = [e for e in logs if e["event"] == "privileges.roles_missing"]
    assert len(warnings) == 1 and warnings[0]["roles"] == [api_role]
    assert figures["roles_missing"] == 1 and figures["privileges_skipped"] >= 9
    with sample_db.connect("snapshot_db") as snap:
        acl = fingerprint(snap)
        assert api_role not in repr(acl["relations"]) + repr(acl["schemas"]) + repr(acl["functions"])
        assert not public_can_execute(snap, "public.audit_year_of(text)")
        assert snap.execute("SELECT count(*) FROM public.dissemination_general").fetchone()[0] == 300


def test_sequences_end_at_the_source_value_after_the_refresh(sample_db):
    """A materialized view that draws ids with nextval is refreshed by a restore and a copy; its
    sequence still ends at exactly the source's value (9 stays 9, not 18), and its rows match."""
    box = sample_db
    with box.connect() as conn:
        conn.execute("INSERT INTO support.cog_over (uei, cognizant_agency) "
                     "SELECT 'EXTRA' || i, lpad((i + 40)::text, 2, '0') FROM generate_series(1, 9) i")
        conn.execute("TRUNCATE support.cog_over CASCADE")
        conn.execute("INSERT INTO support.cog_over (uei, cognizant_agency) "
                     "SELECT 'U' || i, lpad((i + 10)::text, 2, '0') FROM generate_series(1, 9) i")
        conn.execute("ALTER SEQUENCE support.cog_summary_id_seq RESTART")
        conn.execute("REFRESH MATERIALIZED VIEW support.cog_summary")
        assert conn.execute("SELECT last_value FROM support.cog_summary_id_seq").fetchone()[0] == 9
        rows = conn.execute("SELECT * FROM support.cog_summary ORDER BY id").fetchall()
    backup_id = take_backup(box)
    succeeded(box.run("db_to_db"))
    succeeded(box.run("s3_restore", backup_id, options=CONFIRM))
    for which in ("snapshot_db", "db"):
        with box.connect(which) as conn:
            assert conn.execute("SELECT last_value, is_called FROM support.cog_summary_id_seq").fetchone() == (9, True)
            assert conn.execute("SELECT * FROM support.cog_summary ORDER BY id").fetchall() == rows


def test_backup_made_before_privileges_were_kept_restores_with_a_warning(sample_db, api_role):
    """A manifest without privileges (an older backup) still restores: everything but the grants,
    and a warning saying the backup holds no privileges."""
    box = sample_db
    backup_id = take_backup(box)
    store = box.store()
    manifest = json.loads(store.get_bytes(layout.manifest_key(backup_id)))
    del manifest["privileges"]
    store.put_bytes(layout.manifest_key(backup_id), json.dumps(manifest).encode())
    store.delete_objects([layout.privileges_key(backup_id)])
    assert not catalog.read_manifest(store, backup_id).privileges
    with box.connect() as conn:
        conn.execute("DELETE FROM public.lookup_00")
    with capture_logs() as logs:
        figures = succeeded(box.run("s3_restore", backup_id, options=CONFIRM))
    assert figures["privileges_in_backup"] is False
    assert any(e["event"] == "restore.privileges_not_in_backup" and e["log_level"] == "warning" for e in logs)
    with box.connect() as conn:
        assert conn.execute("SELECT count(*) FROM public.lookup_00").fetchone()[0] == 50
        assert not conn.execute("SELECT has_schema_privilege(%s, 'api_v1_1_0', 'USAGE')", (api_role,)).fetchone()[0]


def test_altered_privileges_file_is_refused_before_anything_changes(sample_db, api_role):
    """A privileges.json that is not what the manifest recorded fails the restore's verification;
    fac-db is untouched (a tampered file could otherwise widen access)."""
    box = sample_db
    backup_id = take_backup(box)
    store = box.store()
    key = layout.privileges_key(backup_id)
    body = store.get_bytes(key).replace(b'"SELECT"', b'"DELETE"', 1)
    store.put_bytes(key, body)
    with box.connect() as conn:
        conn.execute("DELETE FROM public.lookup_00")
        before = fingerprint(conn)
    result = box.run("s3_restore", backup_id, options=CONFIRM)
    assert result.outcome == "failure" and layout.PRIVILEGES_NAME in result.error.message
    with box.connect() as conn:
        assert fingerprint(conn) == before
