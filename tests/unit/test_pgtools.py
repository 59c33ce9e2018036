"""Command lines for the PostgreSQL programs: secrets only in the environment, names quoted."""

from __future__ import annotations

import pytest

from service.pgtools import (
    build_pg_dump_command,
    build_pg_env,
    build_psql_command,
    build_table_pattern,
    parse_program_version,
)
from service.vcap import DatabaseBinding

DB = DatabaseBinding("fac-db", "db.internal", 5432, "fac", "fac_user", "p@ss w0rd")


def test_password_goes_to_the_environment_never_argv():
    """PGPASSWORD carries the secret; argv holds no password and no URL."""
    env = build_pg_env(DB, base={"PATH": "/usr/bin", "VCAP_SERVICES": "{secret}"})
    argv = build_pg_dump_command("pg_dump", snapshot="00000003-1", table=("public", "t"))
    assert env["PGPASSWORD"] == "p@ss w0rd" and env["PGHOST"] == "db.internal"
    assert not any("p@ss" in a or "://" in a for a in argv)


def test_child_environment_does_not_inherit_vcap():
    """A child sees PATH and libpq settings, not VCAP_SERVICES or AWS credentials."""
    env = build_pg_env(DB, base={"PATH": "/bin", "VCAP_SERVICES": "{}", "AWS_SECRET_ACCESS_KEY": "x"})
    assert "VCAP_SERVICES" not in env and "AWS_SECRET_ACCESS_KEY" not in env and env["PATH"] == "/bin"


@pytest.mark.parametrize("schema,table,expected", [
    ("public", "plain", '"public"."plain"'),
    ("My Schema", 'odd "name"', '"My Schema"."odd ""name"""'),
    ("public", "a.b*c?", '"public"."a.b*c?"'),
])
def test_table_pattern_matches_exactly_one_table(schema, table, expected):
    """Quotes make pattern characters literal; embedded quotes are doubled."""
    assert build_table_pattern(schema, table) == expected


def test_dump_command_is_custom_format_without_owner_or_privileges():
    """The per-table dump is the format users restore by hand, from the backup's snapshot."""
    argv = build_pg_dump_command("pg_dump", snapshot="S", table=("public", "t"), compression=1)
    assert "--format=custom" in argv and "--no-owner" in argv and "--no-privileges" in argv
    assert "--snapshot=S" in argv and "--strict-names" in argv and "--compress=1" in argv


def test_psql_stops_at_the_first_error():
    """psql runs with ON_ERROR_STOP and no psqlrc; single transaction unless told otherwise."""
    argv = build_psql_command("psql")
    assert "--set=ON_ERROR_STOP=1" in argv and "--no-psqlrc" in argv and "--single-transaction" in argv
    assert "--single-transaction" not in build_psql_command("psql", single_transaction=False)


def test_version_parsing():
    """Major and full version come from the program's --version line."""
    assert parse_program_version("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)") == (15, "15.20")
    assert parse_program_version("pg_dump (PostgreSQL) 16beta1")[0] == 16
    with pytest.raises(ValueError):
        parse_program_version("something else")


def test_lock_wait_is_bounded_when_asked():
    """A dump waiting on a migration's lock gives up after the configured time instead of hanging."""
    argv = build_pg_dump_command("pg_dump", table=("public", "t"), lock_wait_seconds=600)
    assert "--lock-wait-timeout=600s" in argv
    assert not any(a.startswith("--lock-wait-timeout") for a in build_pg_dump_command("pg_dump"))
