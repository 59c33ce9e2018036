"""The table manifest file format and S3 part sizing."""

from __future__ import annotations

import pytest

from service.errors import ConfigError
from service.storage import MAX_PARTS, choose_part_size
from service.tasks.checks import parse_table_manifest


def test_lines_name_schema_and_table_or_default_to_public():
    """`table` means public.table; comments and blank lines are ignored; quotes allow odd names."""
    text = 'dissemination_general\n# retired\nsupport.cog_over  # trailing comment\n\n"My Schema"."odd.name ""x"""\n'
    assert parse_table_manifest(text) == [
        ("public", "dissemination_general"), ("support", "cog_over"), ("My Schema", 'odd.name "x"')]


def test_bad_lines_are_all_named():
    """Every malformed line is listed with its number."""
    with pytest.raises(ConfigError) as info:
        parse_table_manifest("a.b.c\nok\nx y\n")
    assert "line 1" in info.value.detail and "line 3" in info.value.detail


def test_shipped_manifest_is_facs_schema():
    """deploy/fac-tables.txt is FAC's schema as its migrations build it: 63 tables, none retired."""
    from service.config import DEFAULT_TABLE_MANIFEST
    from service.tasks.checks import read_table_manifest

    tables = read_table_manifest(DEFAULT_TABLE_MANIFEST)
    assert len(tables) == len(set(tables)) == 63
    assert ("curation", "record_version") in tables and ("public", "audit_audit") in tables
    assert {("public", "dissemination_unified"), ("public", "users_staffuserlog"),
            ("public", "census_historical_migration_elecaudits")} <= set(tables)
    for retired in ("support_cognizantbaseline", "support_stateagency", "users_staffusermanagementlog"):
        assert ("public", retired) not in tables


@pytest.mark.parametrize("table_bytes", [0, 10**6, 80 * 2**30, 70 * 10**9, 600 * 2**30])
def test_parts_fit_twice_the_table_inside_the_part_limit(table_bytes):
    """Part size leaves room for a dump up to twice the table's size within 10,000 parts."""
    size = choose_part_size(table_bytes)
    assert size >= 8 * 2**20 and size % 2**20 == 0
    assert size * (MAX_PARTS - 100) >= 2 * table_bytes or size == 5 * 2**30
