"""Benchmark of s3_restore (issue 4), both methods in one run against one moto server.

A backup of the benchmark database is made with our db_to_s3 (a child
`python -m service run db_to_s3`), then restored twice, each time into a new
empty database:

(a) the old manner, with the programs it ran: for each object in turn,
    `aws s3 cp` to a temporary directory, then `pg_restore -d` from that file.
    So that it reaches the same end state as ours in an empty database (the
    enum type and schema `support` live only in schema.dump), it restores
    schema.dump's pre-data first and its post-data and sequence values last,
    and each table with `--data-only`: the same SQL work as ours;
(b) ours: `python -m service run s3_restore ID --confirm fac-db` in a child.
    Its pre-restore backup is skipped by design, since the target has no user
    tables; everything else (verification of every sha256, one transaction,
    row counts checked before COMMIT, the media step) runs as in production.

Prints both times and the ratio (target <= 0.60x), and checks that both
databases hold the manifest's row count in every table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench.common import REPO, BenchEnv, database_size, mib, open_env, print_table, ratio, run_child, timed
from service.sandbox import find_pg_program

TARGET = 0.60



def read_manifest(env: BenchEnv, bucket: str) -> dict:
    client = env.s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="backups/").get("Contents", [])
            if o["Key"].endswith("/manifest.json")]
    if len(keys) != 1:
        raise RuntimeError(f"expected one complete backup in {bucket}, found {keys}")
    return json.loads(client.get_object(Bucket=bucket, Key=keys[0])["Body"].read())


def old_manner(env: BenchEnv, bucket: str, manifest: dict, db: str) -> None:
    """Download each dump to disk with `aws s3 cp`, then `pg_restore -d` it, one after the other."""
    pg_restore = find_pg_program("pg_restore")
    penv = env.pg_env(db)
    base = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "-d", db]

    def fetch(key: str, directory: str) -> str:
        path = os.path.join(directory, os.path.basename(key))
        subprocess.run([*env.aws(), "s3", "cp", f"s3://{bucket}/{key}", path], env=env.aws_env(),
                       check=True, stdout=subprocess.DEVNULL)
        return path

    with tempfile.TemporaryDirectory(prefix="bench-restore-old-") as directory:
        schema = fetch(manifest["schema"]["key"], directory)
        subprocess.run([*base, "--section=pre-data", schema], env=penv, check=True)
        for table in manifest["tables"]:
            path = fetch(table["key"], directory)
            subprocess.run([*base, "--data-only", path], env=penv, check=True)
            os.remove(path)  # as the old tool did, one file on disk at a time
        subprocess.run([*base, "--section=data", schema], env=penv, check=True)  # sequence values
        subprocess.run([*base, "--section=post-data", schema], env=penv, check=True)


def peak_of(pid: int) -> int:
    """VmHWM of a live process, in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            line = next(x for x in status if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return 0


def ours(env: BenchEnv, backup_id: str, db: str, snapshot: str, backups: str, media: str) -> int:
    """Run our restore in a child; return its peak RSS.

    Sampled from /proc (VmHWM) rather than wait4's ru_maxrss: a child forked from
    this process (which hosts the moto server and its objects) inherits the
    parent's high-water mark at exec, which would report the parent's size.
    """
    # Progress every 5 s, so that a restore of this size shows what an operator watching one sees.
    child_env = env.vcap_env(db=db, snapshot_db=snapshot, media=media, backups=backups,
                             FAC_BACKUP_PROGRESS_SECONDS="5")
    argv = [sys.executable, "-m", "service", "run", "s3_restore", backup_id, "--confirm", "fac-db"]
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(argv, env=child_env, cwd=REPO, stdout=log, stderr=subprocess.PIPE)
        peak = 0
        while child.poll() is None:
            peak = max(peak, peak_of(child.pid))
            time.sleep(0.1)
        stderr = child.stderr.read().decode("utf-8", "replace") if child.stderr else ""
        if child.returncode != 0:
            raise RuntimeError(f"s3_restore failed ({child.returncode}): {stderr[-2000:]}")
        log.seek(0)
        progress = [line for line in log.read().decode("utf-8", "replace").splitlines() if '"step.progress"' in line]
    print(f"s3_restore: {len(progress)} step.progress events; the middle one:\n"
          f"{progress[len(progress) // 2] if progress else '(none)'}")
    return peak


def check_counts(env: BenchEnv, db: str, manifest: dict) -> None:
    """Every table of the manifest, with its row count."""
    with env.pg.connect(db) as conn:
        for t in manifest["tables"]:
            name = '"{}"."{}"'.format(t["schema"].replace('"', '""'), t["table"].replace('"', '""'))
            rows = conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            if rows != t["rows"]:
                raise RuntimeError(f"{db}: {t['schema']}.{t['table']} has {rows} rows, manifest {t['rows']}")


def main(argv: list[str] | None = None) -> int:
    argv = argv or []
    env = open_env(rebuild="--rebuild" in argv)
    try:
        size = database_size(env)
        snapshot = env.new_database()  # a distinct snapshot binding keeps the configuration valid
        backups, media = env.s3.create_bucket(), env.s3.create_bucket()
        t_backup = run_child([sys.executable, "-m", "service", "run", "db_to_s3"],
                                env.vcap_env(snapshot_db=snapshot, media=media, backups=backups))
        manifest = read_manifest(env, backups)
        old_db, our_db = env.new_database(), env.new_database()
        t_old, _ = timed(old_manner, env, backups, manifest, old_db)
        t_ours, rss = timed(ours, env, manifest["id"], our_db, snapshot, backups, media)
        check_counts(env, old_db, manifest)
        check_counts(env, our_db, manifest)
        dump_bytes = sum(t["bytes"] for t in manifest["tables"]) + manifest["schema"]["bytes"]
        print_table(
            f"s3_restore of a {mib(size)} FAC-like database ({len(manifest['tables'])} tables, "
            f"{mib(dump_bytes)} of dumps) into an empty database, same run, same moto server",
            [("old manner: per dump aws s3 cp to disk, then pg_restore -d", f"{t_old:.1f} s", "1.00x"),
             ("ours: s3_restore (verify, stream, one transaction, counts)", f"{t_ours:.1f} s", ratio(t_ours, t_old))],
            ("method", "time", "vs old"),
        )
        print(f"\n(backup made first with db_to_s3 in {t_backup:.1f} s; row counts of both restores match the "
              f"manifest: {sum(t['rows'] for t in manifest['tables']):,} rows)")
        print(f"ours / old manner          : {ratio(t_ours, t_old)}   (target <= {TARGET:.2f}x)")
        print(f"peak RSS of our process    : {mib(rss)} (VmHWM sampled every 0.1 s)")
        return 0 if t_ours <= TARGET * t_old else 1
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
