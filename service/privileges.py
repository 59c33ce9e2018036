"""A database's privileges: read at the source, replayed on the target of a restore or copy.

Dumps are written with `--no-owner --no-privileges` (so one table restores by
hand as any user), which leaves out every GRANT. This module carries them
separately, as a small JSON document (`privileges.json` beside schema.dump,
or in memory for db_to_db):

- objects: every schema, and every table, view, materialized view, sequence,
  column, function/procedure/aggregate and type whose ACL is not the default,
  with each privilege as (grantee, privilege, grantable); PUBLIC is null;
- default privileges (`ALTER DEFAULT PRIVILEGES`), global and per schema;
- the roles that own the source's objects.

Ownership is not carried (`--no-owner`): the restoring user owns what it
creates. So a privilege the source's owner held on its own object (its
"owner entry") becomes the restoring user's, and default privileges of a role
that owned the source's objects become the restoring user's. Privileges of
every other role keep that role's name; grantors are not kept (every
privilege is granted by the restoring user, the new owner). A role missing on
the target is skipped, never fatal: the caller names it in one warning.

Replay is exact, so access is never widened: objects are created with no
default privileges in force (`build_clear_defaults_sql`, run before the
definitions), then each recorded object is first stripped (`REVOKE ALL ...
FROM PUBLIC, CURRENT_USER`) and granted exactly what the source had, a
`REVOKE EXECUTE ... FROM PUBLIC` included.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import psycopg

FORMAT = 1

# Names come out schema-qualified only when search_path does not reach them.
QUALIFY_NAMES_SQL = "SET LOCAL search_path = pg_catalog"

_USER_SCHEMA = "n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'"


def _not_extension_member(catalog: str, oid: str) -> str:
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
            f"AND e.objid = {oid} AND e.deptype = 'e')")


# Every schema (its ACL is never left to chance: a restore recreates `public` with its own),
# and every other object whose ACL was changed from the default. An empty ACL (everything
# revoked, even from the owner) still yields one row, with a null privilege.
OBJECTS_SQL = f"""
WITH objects(kind, name, col, owner, acl) AS (
    SELECT 'SCHEMA', quote_ident(n.nspname), NULL::name, n.nspowner, coalesce(n.nspacl, acldefault('n', n.nspowner))
    FROM pg_namespace n WHERE {_USER_SCHEMA} AND {_not_extension_member('pg_namespace', 'n.oid')}
  UNION ALL
    SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
           quote_ident(n.nspname) || '.' || quote_ident(c.relname), NULL, c.relowner, c.relacl
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.relacl IS NOT NULL AND {_USER_SCHEMA}
      AND {_not_extension_member('pg_class', 'c.oid')}
  UNION ALL
    SELECT 'TABLE', quote_ident(n.nspname) || '.' || quote_ident(c.relname), a.attname, c.relowner, a.attacl
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE a.attacl IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped AND {_USER_SCHEMA}
      AND {_not_extension_member('pg_class', 'c.oid')}
  UNION ALL
    SELECT 'ROUTINE', p.oid::regprocedure::text, NULL, p.proowner, p.proacl
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE p.proacl IS NOT NULL AND {_USER_SCHEMA} AND {_not_extension_member('pg_proc', 'p.oid')}
  UNION ALL
    SELECT 'TYPE', format_type(t.oid, NULL), NULL, t.typowner, t.typacl
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE t.typacl IS NOT NULL AND t.typtype IN ('b', 'c', 'd', 'e', 'r') AND {_USER_SCHEMA}
      AND NOT EXISTS (SELECT 1 FROM pg_type arr WHERE arr.typarray = t.oid)
      AND (t.typrelid = 0 OR (SELECT r.relkind FROM pg_class r WHERE r.oid = t.typrelid) = 'c')
      AND {_not_extension_member('pg_type', 't.oid')}
)
SELECT o.kind, o.name, o.col, pg_get_userbyid(o.owner),
       CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable
FROM objects o LEFT JOIN LATERAL aclexplode(o.acl) a ON true
ORDER BY 1, 2, 3 NULLS FIRST, 5 NULLS FIRST, 6
"""

DEFAULTS_SQL = """
SELECT pg_get_userbyid(d.defaclrole), n.nspname, d.defaclobjtype::text,
       CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable
FROM pg_default_acl d
LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
LEFT JOIN LATERAL aclexplode(d.defaclacl) a ON true
ORDER BY 1, 2 NULLS FIRST, 3, 4 NULLS FIRST, 5
"""

OWNERS_SQL = f"""
SELECT current_user::text
UNION SELECT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE {_USER_SCHEMA}
UNION SELECT pg_get_userbyid(p.proowner) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE {_USER_SCHEMA}
ORDER BY 1
"""

# pg_default_acl.defaclobjtype -> the word ALTER DEFAULT PRIVILEGES uses
DEFAULT_KINDS = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES", "n": "SCHEMAS"}

# Objects are created under the restoring user's default privileges. Those the target
# already has (global ones survive the schemas being dropped) are put back to the built-in
# default first, so every new object starts from PostgreSQL's default ACL; the source's
# own default privileges are set at the end. Only roles the restoring user may act for.
CLEAR_DEFAULTS_SQL = """
DO $fac_clear_defaults$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT d.defaclrole::regrole::text AS role,
           CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' WHEN 'f' THEN 'FUNCTIONS'
                                WHEN 'T' THEN 'TYPES' WHEN 'n' THEN 'SCHEMAS' END AS kind,
           coalesce(string_agg(DISTINCT a.grantee::regrole::text, ', ') FILTER (WHERE a.grantee <> 0), '') AS others
    FROM pg_default_acl d LEFT JOIN LATERAL aclexplode(d.defaclacl) a ON true
    WHERE d.defaclnamespace = 0 AND pg_has_role(d.defaclrole, 'MEMBER')
    GROUP BY 1, 2
  LOOP
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s REVOKE ALL ON %s FROM PUBLIC, %s%s',
                   r.role, r.kind, r.role, CASE WHEN r.others = '' THEN '' ELSE ', ' || r.others END);
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s GRANT ALL ON %s TO %s', r.role, r.kind, r.role);
    IF r.kind IN ('FUNCTIONS', 'TYPES') THEN
      EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s GRANT ALL ON %s TO PUBLIC', r.role, r.kind);
    END IF;
  END LOOP;
END
$fac_clear_defaults$;
"""

TARGET_ROLES_SQL = "SELECT rolname, pg_has_role(oid, 'MEMBER') FROM pg_roles"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_privileges(conn: psycopg.Connection) -> dict:
    """The privileges document of the database `conn` is in (inside its current transaction:
    in the backup's snapshot, so the grants are of the same moment as the data)."""
    conn.execute(QUALIFY_NAMES_SQL)
    objects: dict[tuple, dict] = {}
    for kind, name, col, owner, grantee, privilege, grantable in conn.execute(OBJECTS_SQL).fetchall():
        entry = objects.setdefault((kind, name, col), {"kind": kind, "name": name, "column": col,
                                                        "owner": owner, "grants": []})
        if privilege is not None:
            entry["grants"].append([grantee, privilege, bool(grantable)])
    defaults: dict[tuple, dict] = {}
    for role, schema, objtype, grantee, privilege, grantable in conn.execute(DEFAULTS_SQL).fetchall():
        entry = defaults.setdefault((role, schema, objtype), {"role": role, "schema": schema,
                                                               "type": objtype, "grants": []})
        if privilege is not None:
            entry["grants"].append([grantee, privilege, bool(grantable)])
    owners = [row[0] for row in conn.execute(OWNERS_SQL).fetchall()]
    return {"format": FORMAT, "owners": owners, "objects": list(objects.values()),
            "defaults": list(defaults.values())}


def encode(document: dict) -> bytes:
    return json.dumps(document, indent=1, ensure_ascii=False, sort_keys=True).encode("utf-8")


def decode(raw: bytes) -> dict:
    """Parse a privileges document; ValueError when it is not one this version understands."""
    document = json.loads(raw)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"unknown privileges format {document.get('format') if isinstance(document, dict) else '?'}")
    for key in ("owners", "objects", "defaults"):
        if not isinstance(document.get(key), list):
            raise ValueError(f"privileges document without {key!r}")
    return document


def count_grants(document: dict) -> int:
    """How many single privileges the document holds (for the manifest and the figures)."""
    return sum(len(o["grants"]) for o in document["objects"]) + sum(len(d["grants"]) for d in document["defaults"])


@dataclass(frozen=True)
class Replay:
    """The SQL that gives the target the source's privileges, and what had to be left out."""

    sql: str
    applied: int
    skipped: int
    missing_roles: tuple[str, ...]  # grantees (or default-privilege roles) the target lacks
    foreign_roles: tuple[str, ...]  # roles whose default privileges the restoring user may not set

    def figures(self) -> dict:
        return {"privileges_applied": self.applied, "privileges_skipped": self.skipped,
                "roles_missing": len(self.missing_roles)}


def read_target_roles(conn: psycopg.Connection) -> tuple[set[str], set[str]]:
    """(every role of the target's server, the roles the connected user is a member of)."""
    rows = conn.execute(TARGET_ROLES_SQL).fetchall()
    return {r[0] for r in rows}, {r[0] for r in rows if r[1]}


def build_clear_defaults_sql() -> str:
    """Run before the definitions are created: see CLEAR_DEFAULTS_SQL."""
    return CLEAR_DEFAULTS_SQL


def build_replay_sql(document: dict, roles: set[str], member_of: set[str]) -> Replay:
    """GRANT/REVOKE statements giving the freshly created objects exactly the document's
    privileges, for a target whose server has `roles` (the restoring user a member of
    `member_of`). Run after every object exists, inside the same transaction."""
    lines: list[str] = []
    counts = {"applied": 0, "skipped": 0}
    missing: set[str] = set()
    foreign: set[str] = set()

    def grant(grants, owner: str, owner_sql: str, template: str) -> None:
        """One GRANT per grantee and grant option; the owner's own entry goes to `owner_sql`."""
        grouped: dict[tuple[str, bool], list[str]] = defaultdict(list)
        for grantee, privilege, grantable in grants:
            if grantee is None:
                target = "PUBLIC"
            elif grantee == owner:
                target = owner_sql
            elif grantee in roles:
                target = quote_ident(grantee)
            else:
                missing.add(grantee)
                counts["skipped"] += 1
                continue
            grouped[(target, bool(grantable))].append(privilege)
            counts["applied"] += 1
        for (target, grantable), privileges in grouped.items():
            lines.append(template.format(privileges=", ".join(privileges), grantee=target)
                         + (" WITH GRANT OPTION;" if grantable else ";"))

    # Schemas last: naming an object inside one needs USAGE on it, which the owner's own
    # REVOKE ALL takes away until the schema's grants are back.
    for obj in sorted(document["objects"], key=lambda o: o["kind"] == "SCHEMA"):
        kind, name, column = obj["kind"], obj["name"], obj["column"]
        template = f"GRANT {{privileges}} ON {kind} {name} TO {{grantee}}"
        if column is None:
            lines.append(f"REVOKE ALL ON {kind} {name} FROM PUBLIC, CURRENT_USER;")
            grant(obj["grants"], obj["owner"], "CURRENT_USER", template)
        else:
            # Column privileges of a new table start empty: there is only something to add.
            grant([[g, f"{p} ({quote_ident(column)})", o] for g, p, o in obj["grants"]],
                  obj["owner"], "CURRENT_USER", template)
    owners = set(document["owners"])
    for entry in document["defaults"]:
        role, kind = entry["role"], DEFAULT_KINDS.get(entry["type"])
        if kind is None:
            continue
        if role in owners:  # the source's owner: the restoring user now
            for_role, role_sql = "", "CURRENT_USER"
        elif role not in roles or role not in member_of:
            (missing if role not in roles else foreign).add(role)
            counts["skipped"] += len(entry["grants"])
            continue
        else:
            for_role, role_sql = f" FOR ROLE {quote_ident(role)}", quote_ident(role)
        if entry["schema"] is None:
            # A global entry is the whole default: start from nothing, grant what it lists.
            lines.append(f"ALTER DEFAULT PRIVILEGES{for_role} REVOKE ALL ON {kind} FROM PUBLIC, {role_sql};")
            template = f"ALTER DEFAULT PRIVILEGES{for_role} GRANT {{privileges}} ON {kind} TO {{grantee}}"
        else:
            # A per-schema entry only adds to the global one.
            template = (f"ALTER DEFAULT PRIVILEGES{for_role} IN SCHEMA {quote_ident(entry['schema'])} "
                        f"GRANT {{privileges}} ON {kind} TO {{grantee}}")
        grant(entry["grants"], role, role_sql, template)
    return Replay("\n".join(lines) + ("\n" if lines else ""), counts["applied"], counts["skipped"],
                  tuple(sorted(missing)), tuple(sorted(foreign)))


def report(log, replay: Replay, target: str) -> None:
    """The events of one replay: what was applied, and each skipped role named once."""
    if replay.missing_roles:
        log.warning("privileges.roles_missing", target=target, roles=list(replay.missing_roles),
                    privileges_skipped=replay.skipped,
                    reason=f"these roles do not exist on {target}'s server; their privileges were not granted",
                    hint="create the roles and restore again, or grant by hand")
    if replay.foreign_roles:
        log.warning("privileges.default_privileges_skipped", target=target, roles=list(replay.foreign_roles),
                    reason="the restoring user is not a member of these roles, so it cannot set their "
                           "default privileges")
    log.info("privileges.applied", target=target, **replay.figures())
