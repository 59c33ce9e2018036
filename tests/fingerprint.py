"""The whole-database fingerprint the tests compare: two databases with equal fingerprints
hold the same definitions, rows, sequence values and privileges.

Ownership is not part of it (a restore runs with --no-owner: the restoring user owns
what it creates). So in every privilege the object's own owner is written `<owner>`,
default privileges of a role that owns the database's objects are `<owner>`'s, and
grantors are left out (they are the owner after a restore). Every other grantee is
compared by name, PUBLIC included, so a lost GRANT and a lost REVOKE both show.
"""

from __future__ import annotations

from psycopg import sql

USER = "{n}.nspname <> 'information_schema' AND {n}.nspname NOT LIKE 'pg\\_%'"
NOT_EXTENSION = ("NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
                 "AND e.objid = {oid} AND e.deptype = 'e')")


def _acl(acl: str, owner: str) -> str:
    """(grantee, privilege, grantable) of an ACL, sorted, with the owner as <owner>."""
    return f"""(SELECT coalesce(array_agg(x ORDER BY x), '{{}}') FROM (SELECT ARRAY[
                  CASE WHEN a.grantee = 0 THEN 'PUBLIC' WHEN a.grantee = {owner} THEN '<owner>'
                       ELSE pg_get_userbyid(a.grantee) END,
                  a.privilege_type, a.is_grantable::text] AS x
               FROM aclexplode({acl}) a) acl)"""


RELATION_ACL = """coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))"""

QUERIES = {
    "schemas": f"""
        SELECT n.nspname, {_acl("coalesce(n.nspacl, acldefault('n', n.nspowner))", "n.nspowner")}
        FROM pg_namespace n WHERE {USER.format(n="n")} ORDER BY 1""",
    "relations": f"""
        SELECT n.nspname, c.relname, c.relkind, c.relispopulated, c.relrowsecurity,
               pg_get_expr(c.relpartbound, c.oid), pg_get_partkeydef(c.oid),
               {_acl(RELATION_ACL, "c.relowner")}
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER.format(n="n")} AND c.relkind <> 't' ORDER BY 1, 2""",
    "columns": f"""
        SELECT c.oid::regclass::text, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.attgenerated, pg_get_expr(d.adbin, d.adrelid),
               {_acl("a.attacl", "c.relowner")}
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attnum > 0 AND NOT a.attisdropped AND {USER.format(n="n")} ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, contypid::regtype::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE connamespace::regnamespace::text NOT LIKE 'pg\\_%'
          AND connamespace::regnamespace::text <> 'information_schema' ORDER BY 1, 2, 3""",
    "indexes": """
        SELECT schemaname, indexname, indexdef FROM pg_indexes
        WHERE schemaname <> 'information_schema' AND schemaname NOT LIKE 'pg\\_%' ORDER BY 1, 2""",
    "types": f"""
        SELECT format_type(t.oid, NULL), t.typtype, format_type(t.typbasetype, t.typtypmod),
               (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid),
               {_acl("coalesce(t.typacl, acldefault('T', t.typowner))", "t.typowner")}
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE {USER.format(n="n")} AND t.typtype IN ('d', 'e', 'r')
          AND {NOT_EXTENSION.format(catalog="pg_type", oid="t.oid")} ORDER BY 1""",
    "views": """
        SELECT schemaname, viewname, definition FROM pg_views
        WHERE schemaname <> 'information_schema' AND schemaname NOT LIKE 'pg\\_%'
        UNION ALL
        SELECT schemaname, matviewname, definition FROM pg_matviews
        ORDER BY 1, 2""",
    "functions": f"""
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid),
               {_acl("coalesce(p.proacl, acldefault('f', p.proowner))", "p.proowner")}
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {USER.format(n="n")} AND p.prokind <> 'a'
          AND {NOT_EXTENSION.format(catalog="pg_proc", oid="p.oid")} ORDER BY 1""",
    "aggregates": f"""
        SELECT p.oid::regprocedure::text,
               {_acl("coalesce(p.proacl, acldefault('f', p.proowner))", "p.proowner")}
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {USER.format(n="n")} AND p.prokind = 'a' ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "policies": """
        SELECT schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check
        FROM pg_policies ORDER BY 1, 2, 3""",
    "extensions": "SELECT extname, extversion, extnamespace::regnamespace::text FROM pg_extension ORDER BY 1",
    "comments": """
        SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description FROM pg_description d
        WHERE d.objoid >= 16384
          AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = d.objoid AND e.deptype = 'e')
        ORDER BY 1, 2""",
    # Default privileges of a role that owns objects here are the owner's (see the docstring).
    "default_privileges": f"""
        WITH owners AS (SELECT relowner AS oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE {USER.format(n="n")})
        SELECT CASE WHEN d.defaclrole IN (SELECT oid FROM owners) THEN '<owner>'
                    ELSE pg_get_userbyid(d.defaclrole) END,
               n.nspname, d.defaclobjtype::text, {_acl("d.defaclacl", "d.defaclrole")}
        FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace ORDER BY 1, 2, 3""",
}


def fingerprint(conn) -> dict:
    """Definitions and privileges, sequence values, and every table's, view's and populated
    materialized view's row count and content digest."""
    found = {name: conn.execute(query).fetchall() for name, query in QUERIES.items()}
    for schema, name, kind, populated, *_ in found["relations"]:
        ident = sql.Identifier(schema, name)
        if kind == "S":
            found[f"seq {schema}.{name}"] = conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(ident)).fetchone()
        elif kind in ("r", "p", "v") or (kind == "m" and populated):
            found[f"rows {schema}.{name}"] = conn.execute(sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
            ).format(ident)).fetchone()
    return found


def differences(expected: dict, got: dict) -> list[str]:
    """The keys whose values differ (or exist on one side only), for a readable failure."""
    keys = sorted(set(expected) | set(got))
    return [k for k in keys if expected.get(k) != got.get(k)]


def _diff(expected, got):
    """Only the rows that differ, when both sides are lists of rows."""
    if isinstance(expected, list) and isinstance(got, list):
        return {"only in source": [r for r in expected if r not in got],
                "only in target": [r for r in got if r not in expected]}
    return expected, got


def assert_same_database(source, target) -> dict:
    """Fingerprints of two connections are equal; returns the source's."""
    expected, got = fingerprint(source), fingerprint(target)
    wrong = differences(expected, got)
    assert not wrong, {k: _diff(expected.get(k), got.get(k)) for k in wrong}
    return expected
