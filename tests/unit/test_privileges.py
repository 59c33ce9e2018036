"""The privileges replay, statement by statement: owners mapped, missing roles skipped, nothing widened."""

from __future__ import annotations

import pytest

from service import privileges

DOC = {
    "format": 1,
    "owners": ["fac_owner"],
    "objects": [
        {"kind": "SCHEMA", "name": "api_v1", "column": None, "owner": "fac_owner",
         "grants": [["fac_owner", "USAGE", False], ["fac_owner", "CREATE", False], ["api_fac_gov", "USAGE", False]]},
        {"kind": "ROUTINE", "name": "public.f(text)", "column": None, "owner": "fac_owner",
         "grants": [["fac_owner", "EXECUTE", False], ["api_fac_gov", "EXECUTE", True]]},
        {"kind": "TABLE", "name": "public.t", "column": "Clé", "owner": "fac_owner",
         "grants": [["gone", "SELECT", False], ['odd "role"', "UPDATE", False]]},
        {"kind": "SEQUENCE", "name": "public.s", "column": None, "owner": "fac_owner", "grants": []},
    ],
    "defaults": [
        {"role": "fac_owner", "schema": None, "type": "f", "grants": [["fac_owner", "EXECUTE", False]]},
        {"role": "fac_owner", "schema": "api_v1", "type": "r", "grants": [["api_fac_gov", "SELECT", False]]},
        {"role": "other_owner", "schema": None, "type": "r", "grants": [["api_fac_gov", "SELECT", False]]},
        {"role": "gone", "schema": "api_v1", "type": "S", "grants": [["api_fac_gov", "USAGE", False]]},
    ],
}
ROLES = {"restorer", "api_fac_gov", 'odd "role"', "other_owner"}


def replay(roles=ROLES, member_of=frozenset({"restorer"})) -> privileges.Replay:
    return privileges.build_replay_sql(DOC, set(roles), set(member_of))


def test_owner_entries_become_the_restoring_users():
    """The source owner's own privileges go to CURRENT_USER (the new owner), other grantees by name."""
    lines = replay().sql.splitlines()
    assert "GRANT EXECUTE ON ROUTINE public.f(text) TO CURRENT_USER;" in lines
    assert 'GRANT EXECUTE ON ROUTINE public.f(text) TO "api_fac_gov" WITH GRANT OPTION;' in lines
    assert "fac_owner" not in replay().sql


def test_every_object_is_stripped_first_so_a_revoke_from_public_survives():
    """Each object starts from nothing (PUBLIC's default EXECUTE included), and PUBLIC gets only what it had."""
    lines = replay().sql.splitlines()
    assert lines.index("REVOKE ALL ON ROUTINE public.f(text) FROM PUBLIC, CURRENT_USER;") < lines.index(
        "GRANT EXECUTE ON ROUTINE public.f(text) TO CURRENT_USER;")
    assert not any("TO PUBLIC" in line for line in lines)
    # An ACL emptied at the source (even the owner's privileges revoked) stays empty.
    assert "REVOKE ALL ON SEQUENCE public.s FROM PUBLIC, CURRENT_USER;" in lines
    assert not any(line.startswith("GRANT") and "public.s " in line for line in lines)


def test_schemas_come_last():
    """Naming an object needs USAGE on its schema, which the schema's own REVOKE takes away for a moment."""
    lines = replay().sql.splitlines()
    first_schema = next(i for i, line in enumerate(lines) if "ON SCHEMA" in line)
    assert all("ON SCHEMA" in line or "DEFAULT PRIVILEGES" in line for line in lines[first_schema:])


def test_roles_missing_on_the_target_are_skipped_named_and_counted():
    """A grantee, or a default-privilege role, the target lacks is left out; the rest is applied."""
    result = replay()
    assert result.missing_roles == ("gone",)
    # the column grant to gone, gone's default privilege, and other_owner's (not a member of it)
    assert result.skipped == 3
    assert "gone" not in result.sql
    assert 'GRANT UPDATE ("Clé") ON TABLE public.t TO "odd ""role""";' in result.sql.splitlines()
    assert result.figures() == {"privileges_applied": result.applied, "privileges_skipped": 3, "roles_missing": 1}


def test_default_privileges_of_the_source_owner_are_the_restoring_users():
    """A global default is rebuilt from nothing; a per-schema one only adds; another role's needs membership."""
    lines = replay().sql.splitlines()
    assert lines[-3:] == [
        "ALTER DEFAULT PRIVILEGES REVOKE ALL ON FUNCTIONS FROM PUBLIC, CURRENT_USER;",
        "ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO CURRENT_USER;",
        'ALTER DEFAULT PRIVILEGES IN SCHEMA "api_v1" GRANT SELECT ON TABLES TO "api_fac_gov";',
    ]
    assert replay().foreign_roles == ("other_owner",)
    member = replay(member_of={"restorer", "other_owner"})
    assert 'ALTER DEFAULT PRIVILEGES FOR ROLE "other_owner" GRANT SELECT ON TABLES TO "api_fac_gov";' in \
        member.sql.splitlines() and member.foreign_roles == ()


def test_documents_of_another_format_are_refused():
    """A privileges file this version does not understand is an error, not an empty grant set."""
    assert privileges.decode(privileges.encode(DOC)) == DOC
    with pytest.raises(ValueError, match="format"):
        privileges.decode(b'{"format": 2, "owners": [], "objects": [], "defaults": []}')
    with pytest.raises(ValueError, match="objects"):
        privileges.decode(b'{"format": 1, "owners": [], "defaults": []}')
