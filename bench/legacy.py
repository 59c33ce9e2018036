"""Benchmark of a legacy restore (issue 10): the old tool's backup, restored both ways in one run.

A backup of the benchmark database's public tables is written the way the old
tool writes it (per table `pg_dump --format c --no-owner --no-privileges
--table public.<t> | aws s3 cp - s3://.../backups/scheduled/<ISO stamp>/public-<t>.dump`).
Two copies of the benchmark database (`CREATE DATABASE ... TEMPLATE`) are the
targets, so both methods replace the rows of a database that has its schema:

(a) the old manner, with the programs it ran: the backup's tables truncated
    together, then for each dump in turn `aws s3 cp` to a temporary directory
    and `pg_restore --data-only -d` from that file, each its own transaction.
    It loads the tables parents first (the order ours uses): in the old tool's
    alphabetical order a non-deferrable foreign key fails on the first child;
(b) ours: `python -m service run s3_restore scheduled/<stamp> --confirm fac-db`
    in a child: the pre-restore backup of the whole database, the checks, then
    one transaction (triggers off, TRUNCATE, every dump streamed from S3 into
    `pg_restore --data-only`, foreign keys checked). The time without the
    pre-restore backup is printed too: the old manner takes none.

Prints the times and ratios, and checks that both targets hold the source's rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from psycopg import sql

from bench.common import REPO, BenchEnv, database_size, mib, open_env, print_table, ratio, timed
from service.legacy import load_order
from service.loader import quote_ident
from service.pgtools import build_table_pattern
from service.sandbox import find_pg_program

LEGACY_ID = "scheduled/2026-06-25T09:03:26-0400"

FOREIGN_KEYS_SQL = """
SELECT c.relname, p.relname FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid
WHERE k.contype = 'f' AND c.relnamespace = 'public'::regnamespace AND p.relnamespace = 'public'::regnamespace
"""


def public_tables(env: BenchEnv, db: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The public tables, parents first, and their foreign keys (child, parent)."""
    with env.pg.connect(db) as conn:
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        references = conn.execute(FOREIGN_KEYS_SQL).fetchall()
    return load_order(tables, references), references


def write_old_tool_backup(env: BenchEnv, bucket: str, tables: list[str]) -> None:
    """Per public table `pg_dump ... | aws s3 cp -`, as the old tool does."""
    pg_dump = find_pg_program("pg_dump")
    for table in tables:
        # The old tool pasted `public.<t>` unquoted; quoted here so the sample's odd table name dumps too.
        dump = subprocess.Popen([pg_dump, "--no-privileges", "--no-owner", "--format", "c", "--table",
                                 build_table_pattern("public", table)], env=env.pg_env(env.db),
                                stdout=subprocess.PIPE)
        subprocess.run([*env.aws(), "s3", "cp", "-", f"s3://{bucket}/backups/{LEGACY_ID}/public-{table}.dump"],
                       env=env.aws_env(), stdin=dump.stdout, check=True, stdout=subprocess.DEVNULL)
        dump.stdout.close()
        if dump.wait() != 0:
            raise RuntimeError(f"pg_dump of public.{table} failed")


def copy_database(env: BenchEnv) -> str:
    """A new database with the benchmark database's schema and rows."""
    name = f"bench_legacy_{os.urandom(4).hex()}"
    with env.pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(env.db)))
    env.created.append(name)
    return name


def old_manner(env: BenchEnv, bucket: str, tables: list[str], db: str) -> None:
    """TRUNCATE the tables together; then per dump `aws s3 cp` to disk and `pg_restore --data-only -d`."""
    pg_restore = find_pg_program("pg_restore")
    with env.pg.connect(db) as conn:
        conn.execute("TRUNCATE TABLE " + ", ".join(f"public.{quote_ident(t)}" for t in tables))
    with tempfile.TemporaryDirectory(prefix="bench-legacy-old-") as directory:
        for table in tables:
            path = os.path.join(directory, f"public-{table}.dump")
            subprocess.run([*env.aws(), "s3", "cp", f"s3://{bucket}/backups/{LEGACY_ID}/public-{table}.dump", path],
                           env=env.aws_env(), check=True, stdout=subprocess.DEVNULL)
            subprocess.run([pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--data-only",
                            "-d", db, path], env=env.pg_env(db), check=True)
            os.remove(path)  # as the old tool did, one file on disk at a time


def ours(env: BenchEnv, db: str, snapshot: str, backups: str, media: str) -> tuple[float, dict]:
    """Our s3_restore of the legacy id in a child: (wall seconds, the pre-restore backup's seconds and
    the job summary)."""
    child_env = env.vcap_env(db=db, snapshot_db=snapshot, media=media, backups=backups)
    argv = [sys.executable, "-m", "service", "run", "s3_restore", LEGACY_ID, "--confirm", "fac-db"]
    start = time.perf_counter()
    done = subprocess.run(argv, env=child_env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"s3_restore failed ({done.returncode}): {done.stderr[-2000:]}{done.stdout[-2000:]}")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    pre = next(e for e in events if e.get("event") == "backup.finished")
    summary = next(e for e in reversed(events) if e.get("event") == "job.finished")
    return seconds, {"pre_restore_seconds": pre["seconds"], "summary": summary}


def counts(env: BenchEnv, db: str, tables: list[str]) -> dict[str, int]:
    with env.pg.connect(db) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM public.{quote_ident(t)}").fetchone()[0] for t in tables}


def main(argv: list[str] | None = None) -> int:
    argv = argv or []
    env = open_env(rebuild="--rebuild" in argv)
    try:
        size = database_size(env)
        tables, _ = public_tables(env, env.db)
        source = counts(env, env.db, tables)
        snapshot = env.new_database()
        backups, media = env.s3.create_bucket(), env.s3.create_bucket()
        t_write, _ = timed(write_old_tool_backup, env, backups, tables)
        listing = env.s3.client().list_objects_v2(Bucket=backups, Prefix=f"backups/{LEGACY_ID}/")["Contents"]
        dump_bytes = sum(o["Size"] for o in listing)
        old_db, our_db = copy_database(env), copy_database(env)
        t_old, _ = timed(old_manner, env, backups, tables, old_db)
        t_ours, figures = ours(env, our_db, snapshot, backups, media)
        for db in (old_db, our_db):
            if counts(env, db, tables) != source:
                raise RuntimeError(f"{db}: row counts differ from {env.db} after the restore")
        t_pre = figures["pre_restore_seconds"]
        print_table(
            f"legacy restore of a {mib(size)} FAC-like database ({len(tables)} public tables, {mib(dump_bytes)} of "
            f"old-tool dumps under backups/{LEGACY_ID}/) over a copy of itself, same run, same moto server",
            [("old manner: TRUNCATE, per dump aws s3 cp to disk, pg_restore --data-only -d", f"{t_old:.1f} s",
              "1.00x"),
             ("ours: s3_restore, whole job (pre-restore backup, checks, one transaction)", f"{t_ours:.1f} s",
              ratio(t_ours, t_old)),
             ("ours without its pre-restore backup", f"{t_ours - t_pre:.1f} s", ratio(t_ours - t_pre, t_old))],
            ("method", "time", "vs old"),
        )
        print(f"\n(the old tool's backup written first in {t_write:.1f} s; our pre-restore backup took {t_pre:.1f} s; "
              f"both targets hold the source's {sum(source.values()):,} rows)")
        print(f"ours / old manner          : {ratio(t_ours, t_old)} whole job, "
              f"{ratio(t_ours - t_pre, t_old)} without the pre-restore backup")
        print(f"peak RSS of our process    : {mib(figures['summary'].get('peak_rss_bytes', 0))}")
        return 0
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
