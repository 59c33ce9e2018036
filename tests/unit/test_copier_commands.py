"""COPY statements, producer command lines and DDL clean-up for db_to_db."""

from __future__ import annotations

from service.copier import TableCopy, build_copy_out_command, clean_ddl

ODD = TableCopy('we"ird schema', 'Odd Name "quoted" é', ("id", 'Label "x"'))


def test_copy_statements_quote_every_name():
    """Schema, table and column names with quotes, spaces, capitals and accents are quoted."""
    out = ODD.copy_statement("TO STDOUT").as_string(None)
    assert out == ('COPY "we""ird schema"."Odd Name ""quoted"" é" ("id", "Label ""x""") '
                   "TO STDOUT (FORMAT binary)")
    into = ODD.copy_statement("FROM STDIN").as_string(None)
    assert into.endswith("FROM STDIN (FORMAT binary, FREEZE)")


def test_table_without_copyable_columns_copies_without_a_list():
    """A table whose columns are all generated copies with no column list (an empty one is invalid)."""
    statement = TableCopy("public", "t", ()).copy_statement("TO STDOUT").as_string(None)
    assert statement == 'COPY "public"."t" TO STDOUT (FORMAT binary)'


def test_producer_reads_inside_the_exported_snapshot():
    """The source psql imports the snapshot in a read-only REPEATABLE READ transaction and stops on error."""
    argv = build_copy_out_command("/usr/bin/psql", "0000-1'x", ODD)
    assert argv[0] == "/usr/bin/psql"
    assert "--set=ON_ERROR_STOP=1" in argv and "--no-psqlrc" in argv
    commands = [argv[i + 1] for i, a in enumerate(argv) if a == "-c"]
    assert commands[0] == "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
    assert commands[1] == "SET TRANSACTION SNAPSHOT '0000-1''x'"
    assert commands[3].startswith('COPY "we""ird schema"')
    assert commands[-1] == "COMMIT"


def test_producer_command_carries_no_secret():
    """Connection details travel in the environment; argv holds no host, user or password."""
    argv = " ".join(build_copy_out_command("psql", "snap", ODD))
    assert "PGPASSWORD" not in argv and "postgresql://" not in argv and "-h" not in argv.split()


def test_clean_ddl_removes_psql_restrict_lines_only():
    """pg_dump's \\restrict and \\unrestrict lines go; SQL, including backslashes inside it, stays."""
    script = ("--\n\\restrict AbC123\n\nSET x = 1;\nCREATE FUNCTION f() RETURNS text AS $$ SELECT '\\d' $$"
              " LANGUAGE sql;\n\\unrestrict AbC123\n")
    cleaned = clean_ddl(script)
    assert "restrict" not in cleaned
    assert "SET x = 1;" in cleaned and "SELECT '\\d'" in cleaned
