"""Benchmark of db_to_s3 (issue: the backup engine), all in one run against one moto server.

(a) the old tool's method, reproduced with the programs it runs: for each public
    table in turn, `pg_dump --format c -t TABLE | aws s3 cp - s3://...`;
(b) our `scheduled_backup` (row counts, one snapshot, parallel streamed dumps);
(c) one plain `pg_dump --format c` of the whole database to /dev/null, the
    single-process limit.
Prints the three times, both ratios, bytes of (a) and (b), and our peak memory,
also on a small database to show that memory does not grow with the data.
"""

from __future__ import annotations

import subprocess
import sys

from bench.clients import compare_clients
from bench.common import BenchEnv, database_size, mib, open_env, print_table, ratio, run_job_child, timed
from service.pgtools import build_table_pattern
from service.sample_data import load_sample_database
from service.sandbox import find_pg_program


def public_tables(env: BenchEnv, db: str) -> list[str]:
    with env.pg.connect(db) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def old_method(env: BenchEnv, db: str, bucket: str) -> None:
    """What the old bash + Go tool did: one table at a time, pg_dump piped into `aws s3 cp -`."""
    pg_dump = find_pg_program("pg_dump")
    for table in public_tables(env, db):
        dump = subprocess.Popen([pg_dump, "--format", "c", "--no-owner", "--no-privileges",
                                 "-t", build_table_pattern("public", table)],
                                env=env.pg_env(db), stdout=subprocess.PIPE)
        subprocess.run([*env.aws(), "s3", "cp", "-", f"s3://{bucket}/backups/old/public-{table}.dump"],
                       env=env.aws_env(), stdin=dump.stdout, check=True, stdout=subprocess.DEVNULL)
        dump.stdout.close()
        if dump.wait() != 0:
            raise RuntimeError(f"pg_dump of {table} failed")


def plain_dump(env: BenchEnv, db: str) -> None:
    # stdout, not -f: pg_dump 15 fsyncs a named output file, which /dev/null refuses.
    subprocess.run([find_pg_program("pg_dump"), "--format", "c", "--no-owner", "--no-privileges"],
                   env=env.pg_env(db), check=True, stdout=subprocess.DEVNULL)


def bucket_bytes(env: BenchEnv, bucket: str, prefix: str) -> int:
    total = 0
    for page in env.s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        total += sum(o["Size"] for o in page.get("Contents", []))
    return total


def main(argv: list[str] | None = None) -> int:
    argv = argv or []
    env = open_env(rebuild="--rebuild" in argv)
    try:
        size = database_size(env)
        snapshot = env.new_database()  # a distinct snapshot binding keeps the configuration valid
        old_bucket = env.s3.create_bucket()
        t_old, _ = timed(old_method, env, env.db, old_bucket)
        old_bytes = bucket_bytes(env, old_bucket, "backups/old/")
        t_plain, _ = timed(plain_dump, env, env.db)
        t_ours, rss, our_bytes = ours_with_snapshot(env, env.db, snapshot)
        small = env.new_database()
        with env.pg.connect_as_owner(small) as conn:
            load_sample_database(conn, general_rows=2000, awards_per_audit=2, small_tables=40)
        _, rss_small, _ = ours_with_snapshot(env, small, snapshot)
        t_progress_off, t_progress_on = progress_cost(env, snapshot)
        print_table(
            f"db_to_s3 on a {mib(size)} FAC-like database (same run, same moto server)",
            [("old method: pg_dump -Fc | aws s3 cp, per public table", f"{t_old:.1f} s", mib(old_bytes), "1.00x"),
             ("one plain pg_dump -Fc > /dev/null", f"{t_plain:.1f} s", "-", ratio(t_plain, t_old)),
             ("ours: scheduled_backup", f"{t_ours:.1f} s", mib(our_bytes), ratio(t_ours, t_old))],
            ("method", "time", "bytes", "time vs old"),
        )
        print(f"\nours / old method          : {ratio(t_ours, t_old)}   (target <= 0.35x)")
        print(f"ours / plain pg_dump -Fc   : {ratio(t_ours, t_plain)}   (target <= 1.00x)")
        print(f"bytes ours / old method    : {ratio(our_bytes, old_bytes)}   (target <= 1.25x)")
        print(f"peak RSS of our process    : {mib(rss)} on {mib(size)}; {mib(rss_small)} on a small database "
              "(target <= 200 MiB, flat)")
        print(f"progress on / off          : {ratio(t_progress_on, t_progress_off)}   ({t_progress_on:.1f} s with "
              f"step.progress every second, {t_progress_off:.1f} s with FAC_BACKUP_PROGRESS_SECONDS=0; best of "
              f"{PROGRESS_ROUNDS} alternating runs each; target: no visible change)")
        compare_clients(env, env.db)  # the newer client on the same database, same run
        return 0
    finally:
        env.close()


PROGRESS_ROUNDS = 2


def progress_cost(env: BenchEnv, snapshot: str) -> tuple[float, float]:
    """Best times of our backup with progress off and with an event every second, alternating
    the two so that the machine's load falls on both alike: (seconds off, seconds on)."""
    off, on = [], []
    for _ in range(PROGRESS_ROUNDS):
        off.append(ours_with_snapshot(env, env.db, snapshot, FAC_BACKUP_PROGRESS_SECONDS="0")[0])
        on.append(ours_with_snapshot(env, env.db, snapshot, FAC_BACKUP_PROGRESS_SECONDS="1")[0])
    return min(off), min(on)


def ours_with_snapshot(env: BenchEnv, db: str, snapshot: str, **extra: str) -> tuple[float, int, int]:
    """Our scheduled_backup in a child: (seconds, peak RSS of that Python process, bytes written)."""
    backups, media = env.s3.create_bucket(), env.s3.create_bucket()
    child_env = env.vcap_env(db=db, snapshot_db=snapshot, media=media, backups=backups, **extra)
    seconds, summary = run_job_child(["scheduled_backup"], child_env)
    return seconds, summary["peak_rss_bytes"], bucket_bytes(env, backups, "backups/")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
