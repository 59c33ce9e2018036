"""The old tool's table dumps, read as a legacy restore needs them; pure functions only.

Each legacy dump is `pg_dump --format c --table public.<t>`: the table's
definition (its columns as `CREATE TABLE`), the sequences it owns (serial and
identity columns) with their values, its rows, its indexes and constraints. A
legacy restore keeps fac-db's definitions and replaces only the rows, so it
needs from each dump its columns (to refuse when a migration changed the table
since) and the sequences whose values it sets (they must exist in fac-db).

It also needs an order: tables are emptied together with TRUNCATE except those
another table's foreign key points at from outside the TRUNCATE (those are
emptied with DELETE, children first), and loaded parents first, so that
non-deferrable foreign keys between the backup's tables hold row by row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_CREATE_TABLE = re.compile(r"^CREATE (?:UNLOGGED )?TABLE (.+) \($")
_SEQUENCE = re.compile(r"^(?:CREATE SEQUENCE (.+)$|\s+SEQUENCE NAME (.+)$)")
# Where a column's type ends in pg_dump's CREATE TABLE line (for messages only).
_AFTER_TYPE = re.compile(r" (?:COLLATE|DEFAULT|NOT NULL|CONSTRAINT|GENERATED) ")

# pg_trigger.tgenabled -> the ALTER TABLE clause that puts a trigger back in that state
TRIGGER_MODES = {"O": "ENABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}


@dataclass(frozen=True)
class DumpDefinition:
    """What one table dump says about its table: columns as written, and sequences it sets."""

    columns: tuple[tuple[str, str], ...]  # (column name, the rest of its line: type and options)
    sequences: tuple[str, ...]  # qualified names, quoted as pg_dump quotes them


def _split_identifier(text: str) -> tuple[str, str]:
    """(name, rest) of a line starting with an identifier, quoted the SQL way or bare."""
    if not text.startswith('"'):
        name, _, rest = text.partition(" ")
        return name, rest
    i = 1
    while True:
        j = text.index('"', i)
        if text[j + 1:j + 2] == '"':
            i = j + 2
            continue
        return text[1:j].replace('""', '"'), text[j + 2:]


def parse_definition(sql: str) -> DumpDefinition | None:
    """The columns and sequences of a table dump's pre-data SQL; None without a column list."""
    lines = sql.splitlines()
    columns: list[tuple[str, str]] = []
    sequences: list[str] = []
    found = False
    for i, line in enumerate(lines):
        seq = _SEQUENCE.match(line)
        if seq:
            sequences.append((seq.group(1) or seq.group(2)).strip())
        if found or not _CREATE_TABLE.match(line):
            continue
        found = True
        for body in lines[i + 1:]:
            if body.startswith(")"):
                break
            item = body.strip().removesuffix(",")
            if item and not item.startswith("CONSTRAINT "):
                columns.append(_split_identifier(item))
    return DumpDefinition(tuple(columns), tuple(sequences)) if found and columns else None


def column_type(rest: str) -> str:
    """The type part of pg_dump's column line (`integer` of `integer DEFAULT 0 NOT NULL`)."""
    match = _AFTER_TYPE.search(rest + " ")
    return (rest[:match.start()] if match else rest).strip()


def column_differences(dumped: Iterable[tuple[str, str]], live: Iterable[tuple[str, str]]) -> list[str]:
    """How the live columns (name, format_type) differ from the dump's, one phrase each; [] when
    every column has the same name and type (order and defaults may differ: rows load by name)."""
    dumped, live = dict(dumped), dict(live)
    problems = []
    for name, rest in dumped.items():
        if name not in live:
            problems.append(f"column {name} ({column_type(rest)}) is in the dump but not in the table")
        elif not (rest == live[name] or rest.startswith(live[name] + " ")):
            problems.append(f"column {name} is {column_type(rest)} in the dump, {live[name]} in the table")
    problems += [f"column {name} ({kind}) is in the table but not in the dump"
                 for name, kind in live.items() if name not in dumped]
    return problems


def load_order(tables: Iterable[str], references: Iterable[tuple[str, str]]) -> list[str]:
    """`tables` with every referenced table before the tables referring to it (child, parent
    pairs in `references`); a cycle is broken in name order (deferred keys do not mind)."""
    remaining = sorted(set(tables))
    parents = {t: set() for t in remaining}
    for child, parent in references:
        if child != parent and child in parents and parent in parents:
            parents[child].add(parent)
    ordered: list[str] = []
    while remaining:
        ready = [t for t in remaining if not parents[t] - set(ordered)] or remaining[:1]
        ordered += ready
        remaining = [t for t in remaining if t not in ready]
    return ordered


def split_emptying(tables: Iterable[str], references: Iterable[tuple[str, str]],
                   referenced_from_outside: Iterable[str]) -> tuple[list[str], list[str]]:
    """(TRUNCATE together, DELETE) for `tables`, given foreign keys (child, parent) between them.

    TRUNCATE refuses a table that a table outside its list refers to, so a table referred to from
    outside the backup, or by a table that is itself emptied by DELETE, is emptied by DELETE.
    """
    tables, references = set(tables), list(references)
    delete = set(referenced_from_outside) & tables
    changed = True
    while changed:
        changed = False
        for child, parent in references:
            if child in delete and parent not in delete and parent in tables:
                delete.add(parent)
                changed = True
    truncate = sorted(tables - delete)
    return truncate, [t for t in reversed(load_order(tables, references)) if t in delete]
