"""`python -m bench scale [--media-sizes=10000,100000] [--first-copy-sizes=...] [--db-scales=1,10]`:
does cost grow no faster than the work? Not part of `make bench`'s default run (it takes tens of minutes);
`make bench-scale` runs it. An empty list skips that half.

Media: a source bucket of N small objects (1-4 KB, fixed seed; moto keeps every
object in memory, so sizes stay small and the count is what is measured), for N
in --media-sizes (10,000 and 100,000). Our `media_sync` job (a child process, as
`cf run-task` runs it: lock, listing, copies, kept versions) and `aws s3 sync`
each copy it into a fresh bucket (for the --first-copy-sizes, by default the same;
other sizes start from destinations already holding the same bytes), then run again
with nothing changed. Same
moto server (in this process, idle meanwhile, so this process's CPU time is the
server's), same run.

Database: `scheduled_backup` and then `s3_restore` of that backup into an empty
database, on FAC-like databases of --db-scales times the benchmark database's
rows (1 is the ~0.9 GB of `fac_bench`), each built once and cached as
`fac_bench_s<scale>`.

Per size: wall time, time per object or per GB, and the peak memory (VmHWM) of
our process as its job summary reports it. Targets, larger size against the
smaller: peak memory within 10% (flat), time per unit at most 1.2x.
"""

from __future__ import annotations

import os
import random
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import (
    BENCH_DB,
    DEFAULT_SCALE,
    BenchEnv,
    database_size,
    ensure_database,
    mib,
    print_table,
    run_child,
    run_job_child,
)
from bench.restore import check_counts, read_manifest
from service.sandbox import LocalPostgres, LocalS3
from service.storage import S3ObjectStore
from service.vcap import BucketBinding

SEED = 20261126
MEMORY_TARGET = 1.10
TIME_TARGET = 1.20
FLOOR_PART = "listing alone: server CPU (floor)"
FOLDERS = ("singleauditreport", "excel", "pdf/2024", "pdf/2025", "workbooks/federal awards")


def _option(argv: list[str], name: str, default: str) -> str:
    """`--name=value` (python -m bench hands a part only the arguments starting with '-')."""
    for arg in argv:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def _server_cpu() -> float:
    """CPU seconds of this process, which hosts the moto server and idles during a measured run."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fill_bucket(env: BenchEnv, bucket: str, count: int) -> int:
    """`count` objects of 1-4 KB in `bucket` (the same bytes for the same count); their bytes.

    Written straight into the moto backend of this process (a hundred times faster than
    one PUT each; setting up is not what is measured), through S3 if it cannot be found.
    """
    rng = random.Random(SEED)
    sizes = {f"{FOLDERS[i % len(FOLDERS)]}/{i:07d}--general.pdf": rng.randint(1024, 4096) for i in range(count)}
    backend = _moto_backend(bucket)
    if backend is not None:
        for key, size in sizes.items():
            backend.put_object(bucket, key, random.Random(f"{SEED}:{key}").randbytes(size))
        return sum(sizes.values())
    key_id, secret = env.s3.bucket_key((bucket,))  # the server checks every request's key
    store = S3ObjectStore(BucketBinding("bench", bucket, "us-gov-west-1", env.s3.endpoint_url, key_id, secret))

    def put(key: str) -> None:
        store.put_bytes(key, random.Random(f"{SEED}:{key}").randbytes(sizes[key]))

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, sizes))
    return sum(sizes.values())


def _moto_backend(bucket: str):
    """The in-process moto S3 backend holding `bucket`, or None."""
    try:
        from moto.s3.models import s3_backends
    except ImportError:
        return None
    for account in list(s3_backends):
        for backend in s3_backends[account].values():
            if bucket in backend.buckets:
                return backend
    return None


def media_part(env: BenchEnv, sizes: list[int], first_copy_sizes: list[int]) -> tuple[list[tuple], list[dict]]:
    """Per size: the first copy (when asked for that size), then a run with nothing changed. A size
    without a measured first copy gets both destinations filled beforehand with the same bytes."""
    rows, measured = [], []
    db, snapshot = env.new_database(), env.new_database()  # fac-db only holds the job's lock here
    for count in sorted(set(sizes) | set(first_copy_sizes)):
        src, ours_dst, aws_dst = env.s3.create_bucket(), env.s3.create_bucket(), env.s3.create_bucket()
        t0 = time.perf_counter()
        total = fill_bucket(env, src, count)
        cases = []
        if count in first_copy_sizes:
            cases.append("first copy")
        else:
            fill_bucket(env, ours_dst, count)
            fill_bucket(env, aws_dst, count)  # written after the source: aws s3 sync skips by time
        if count in sizes:
            cases.append("no change")
        print(f"bench.scale: {count:,} objects ({total / 1e6:.0f} MB) set up in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        job_env = env.vcap_env(db=db, snapshot_db=snapshot, media=src, backups=ours_dst)
        for case in cases:
            cpu = _server_cpu()
            wall, summary = run_job_child(["media_sync"], job_env)
            our_cpu = _server_cpu() - cpu
            step = summary["steps"][0]
            cpu = _server_cpu()
            aws = run_child([*env.aws(), "s3", "sync", "--only-show-errors", f"s3://{src}", f"s3://{aws_dst}"],
                            env.aws_env())
            aws_cpu = _server_cpu() - cpu
            job_s = summary["duration_seconds"]
            measured.append({"part": f"media sync, {case}", "size": count, "seconds": job_s,
                             "per_unit": job_s / count, "peak": summary["peak_rss_bytes"],
                             "cpu_per_unit": summary["cpu_seconds"] / count})
            rows.append((f"media sync, {case}", f"{count:,} objects", f"{wall:.1f}", f"{job_s:.1f}",
                         f"{job_s / count * 1e3:.2f} ms", mib(summary["peak_rss_bytes"]),
                         f"{summary['cpu_seconds'] / count * 1e3:.2f} ms", f"{our_cpu:.1f}",
                         f"{aws:.1f}", f"{aws_cpu:.1f}", f"{job_s / aws:.2f}x",
                         f"{step['copied']} copied, {step['skipped']} skipped, {step['kept']} kept"))
        if count in sizes:
            cpu = list_everything(env, (src, ours_dst))
            measured.append({"part": FLOOR_PART, "size": count, "seconds": cpu, "per_unit": cpu / count, "peak": 0})
            rows.append((FLOOR_PART, f"{count:,} objects", "", "", f"{cpu / count * 1e3:.2f} ms", "", "",
                         f"{cpu:.1f}", "", "", "", "server CPU to list both buckets, nothing else"))
    return rows, measured


def list_everything(env: BenchEnv, buckets: tuple[str, ...]) -> float:
    """Server CPU seconds to list every object of `buckets` as our sync does (each top-level folder
    on its own, 1,000 keys a page), one request at a time: the least any sync must ask of the
    server, whoever sends it. On moto each page scans the whole bucket and sorts the folder, so
    this grows faster than the objects do; real S3 pages through an index."""
    client = env.s3.client()
    pages = client.get_paginator("list_objects_v2")
    cpu, own = _server_cpu(), time.thread_time()  # the client runs on this thread: its CPU is not the server's
    for bucket in buckets:
        top = client.list_objects_v2(Bucket=bucket, Delimiter="/")
        for prefix in [p["Prefix"] for p in top.get("CommonPrefixes", [])]:
            for _page in pages.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}):
                pass
    return (_server_cpu() - cpu) - (time.thread_time() - own)


def scaled_database(env: BenchEnv, scale: float) -> str:
    """The benchmark database at `scale` times its rows, built once and cached under its own
    name (so that the other benchmarks' `fac_bench` is never rebuilt under their feet)."""
    wanted = dict(DEFAULT_SCALE, general_rows=int(DEFAULT_SCALE["general_rows"] * scale))
    if scale == 1:
        return ensure_database(env, BENCH_DB, wanted)
    return ensure_database(env, f"fac_bench_s{scale:g}".replace(".", "_"), wanted)


def database_part(env: BenchEnv, scales: list[float]) -> tuple[list[tuple], list[dict]]:
    rows, measured = [], []
    for scale in scales:
        db = scaled_database(env, scale)
        gb = database_size(env, db) / 1e9
        snapshot, target = env.new_database(), env.new_database()
        backups, media = env.s3.create_bucket(), env.s3.create_bucket()
        wall, summary = run_job_child(["scheduled_backup"], env.vcap_env(db=db, snapshot_db=snapshot, media=media,
                                                                         backups=backups))
        manifest = read_manifest(env, backups)
        results = [("scheduled_backup", wall, summary)]
        wall, summary = run_job_child(["s3_restore", manifest["id"], "--confirm", "fac-db"],
                                      env.vcap_env(db=target, snapshot_db=snapshot, media=media, backups=backups))
        check_counts(env, target, manifest)
        results.append(("s3_restore", wall, summary))
        for part, wall, summary in results:
            job_s = summary["duration_seconds"]
            measured.append({"part": part, "size": gb, "seconds": job_s, "per_unit": job_s / gb,
                             "peak": summary["peak_rss_bytes"], "cpu_per_unit": summary["cpu_seconds"] / gb})
            rows.append((part, f"x{scale:g}: {gb:.2f} GB", f"{wall:.1f}", f"{job_s:.1f}", f"{job_s / gb:.1f} s/GB",
                         mib(summary["peak_rss_bytes"]), f"{summary['cpu_seconds'] / gb:.1f} s/GB"))
        env.pg.drop_database(target)
        env.created.remove(target)
    return rows, measured


def verdicts(measured: list[dict]) -> tuple[list[tuple], bool]:
    """Largest size against the smallest, per part."""
    rows, ok = [], True
    for part in dict.fromkeys(m["part"] for m in measured):
        runs = sorted((m for m in measured if m["part"] == part), key=lambda m: m["size"])
        if len(runs) < 2:
            continue
        small, large = runs[0], runs[-1]
        per_unit = large["per_unit"] / small["per_unit"]
        if part == FLOOR_PART:  # not ours: what the server costs any client, for the rows above
            rows.append((part, f"{large['size'] / small['size']:.1f}x", "", f"{per_unit:.2f}x", "", "floor"))
            continue
        memory = large["peak"] / small["peak"]
        cpu = large["cpu_per_unit"] / small["cpu_per_unit"] if small["cpu_per_unit"] else 0.0
        good = memory <= MEMORY_TARGET and per_unit <= TIME_TARGET
        ok &= good
        rows.append((part, f"{large['size'] / small['size']:.1f}x", f"{memory:.2f}x", f"{per_unit:.2f}x",
                     f"{cpu:.2f}x", "met" if good else "MISSED"))
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    argv = argv or []
    media_sizes = [int(n) for n in _option(argv, "--media-sizes", "10000,100000").split(",") if n]
    first_sizes = [int(n) for n in _option(argv, "--first-copy-sizes", ",".join(map(str, media_sizes))).split(",")
                   if n]
    db_scales = [float(s) for s in _option(argv, "--db-scales", "1,10").split(",") if s]
    url = os.environ.get("FAC_BACKUP_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    env = BenchEnv(LocalPostgres(url, durable=True).start(), LocalS3().start())
    try:
        measured = []
        if media_sizes or first_sizes:
            rows, found = media_part(env, media_sizes, first_sizes)
            measured += found
            print_table("media sync at scale: ours (media_sync job, a child) beside aws s3 sync, same moto server",
                        rows, ("part", "size", "ours wall s", "ours job s", "per object", "ours peak",
                               "our cpu/object", "server cpu s", "aws s", "server cpu s", "ours/aws", "ours did"))
        if db_scales:
            rows, found = database_part(env, db_scales)
            measured += found
            print_table("scheduled_backup and s3_restore at scale (each job a child; restore into an empty "
                        "database)", rows, ("job", "database", "wall s", "job s", "per GB", "peak", "our cpu per GB"))
        rows, ok = verdicts(measured)
        if rows:
            print_table(f"larger against smaller (targets: memory <= {MEMORY_TARGET:.2f}x, time per unit <= "
                        f"{TIME_TARGET:.2f}x)", rows, ("part", "size ratio", "peak memory", "time per unit",
                                                       "our cpu per unit", "verdict"))
        return 0 if ok else 1
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
