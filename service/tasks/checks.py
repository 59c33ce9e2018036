"""row_count and check_tables: what is in fac-db, and whether it matches the table manifest.

The table manifest is a plain file, one `schema.table` or `table` (meaning
`public.table`) a line; `#` starts a comment. A name holding a dot or other
odd characters may be double-quoted the SQL way: `"my schema"."odd.name"`.
"""

from __future__ import annotations

import re
from pathlib import Path

from service.database import connect, count_rows, list_user_tables
from service.errors import CheckError, ConfigError

_PART = r'(?:"(?:[^"]|"")+"|[^".\s]+)'
_LINE = re.compile(rf"^({_PART})(?:\.({_PART}))?$")


def _unquote(part: str) -> str:
    if part.startswith('"') and part.endswith('"'):
        return part[1:-1].replace('""', '"')
    return part


def parse_table_manifest(text: str, source: str = "table manifest") -> list[tuple[str, str]]:
    """[(schema, table)] from the file's text; ConfigError naming every bad line."""
    tables, problems = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith('"') else raw.strip()
        if not line:
            continue
        match = _LINE.match(line)
        if not match:
            problems.append(f"line {number}: {raw.strip()!r} is not 'schema.table' or 'table'")
            continue
        first, second = match.group(1), match.group(2)
        tables.append(("public", _unquote(first)) if second is None else (_unquote(first), _unquote(second)))
    if problems:
        raise ConfigError(f"{source} has {len(problems)} bad line(s)", detail="\n".join(problems))
    return tables


def read_table_manifest(path: Path) -> list[tuple[str, str]]:
    """The table manifest at `path`; ConfigError when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the table manifest {path}: {exc.strerror}",
            hint="set FAC_BACKUP_TABLE_MANIFEST to the file listing the tables that must exist",
        ) from exc
    return parse_table_manifest(text, str(path))


def count_all_rows(ctx) -> dict:
    """row_count: exact rows of every user table of fac-db, logged one event per table."""
    settings = ctx.config.settings
    counts: dict[str, int] = {}
    with connect(ctx.config.fac_db, sslmode=settings.pg_sslmode, autocommit=True,
                 lock_timeout_seconds=settings.dump_lock_wait_seconds) as conn:
        for table in list_user_tables(conn):
            ctx.scope.check()
            rows = count_rows(conn, table.schema, table.name)
            counts[table.qualified] = rows
            ctx.log.info("row_count.table", table=table.qualified, rows=rows)
    ctx.log.info("row_count.finished", tables=len(counts), rows=sum(counts.values()))
    return {"tables": len(counts), "rows": sum(counts.values()), "counts": counts}


def check_tables(ctx) -> dict:
    """check_tables: every manifest table exists (with its row count); extras are reported."""
    settings = ctx.config.settings
    expected = read_table_manifest(settings.table_manifest)
    with connect(ctx.config.fac_db, sslmode=settings.pg_sslmode, autocommit=True,
                 lock_timeout_seconds=settings.dump_lock_wait_seconds) as conn:
        present = {(t.schema, t.name) for t in list_user_tables(conn)}
        counts = {}
        for schema, table in expected:
            if (schema, table) in present:
                ctx.scope.check()
                counts[f"{schema}.{table}"] = count_rows(conn, schema, table)
    missing = [f"{s}.{t}" for s, t in expected if (s, t) not in present]
    extra = sorted(f"{s}.{t}" for s, t in present - set(expected))
    for name, rows in counts.items():
        ctx.log.info("check_tables.table", table=name, rows=rows)
    if extra:
        ctx.log.warning(
            "check_tables.unlisted", tables=extra,
            hint="add them to the table manifest if they belong to the application",
        )
    figures = {"expected": len(expected), "missing": missing, "unlisted": extra, "counts": counts}
    ctx.figures_on_failure = figures
    if missing:
        raise CheckError(
            f"{len(missing)} table(s) of the table manifest are missing from {ctx.config.fac_db.name}",
            detail=", ".join(missing),
            hint="run the application's migrations, or remove retired tables from the manifest",
        )
    ctx.log.info("check_tables.finished", expected=len(expected), missing=0, unlisted=len(extra))
    return figures
