"""`python -m bench.media`: our media sync beside `aws s3 sync`, on one moto server, in one run.

5,000 objects of 2 KB to 400 KB (random sizes and bytes from a fixed seed) go
into a source bucket. Each tool then syncs into its own fresh destination
bucket: the first copy, a rerun with nothing changed, and a rerun after 1% of
the objects were rewritten with new bytes of the same size (reruns three times
each, aws and ours in turn, compared by their medians). The
AWS CLI gets its credentials from the environment of its own process; ours
come from bucket bindings, as in production. Our copy is then checked: the
same keys, sizes and ETags (the MD5 of the bytes) as the source, and the
rewritten objects byte for byte.

Ours runs in this process, as it does in the daemon that schedules it; the
AWS CLI is a process per run, as it was under the old cron. Beside each wall
time the table gives the CPU seconds the moto server spent serving that run
(read from /proc): both tools ask the same server for the same listings and
copies, and when the server's own time is most of a run, no client can go
below "server floor" (our server CPU over aws's wall time).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import print_table, ratio, run_child
from service.sandbox import LocalS3
from service.storage import S3ObjectStore
from service.tasks.sync import sync_bucket
from service.vcap import BucketBinding

SEED = 20260611
TARGET = 0.50
FOLDERS = ("singleaudit", "excel", "pdf/2024", "pdf/2025", "workbooks/federal awards")


def _binding(s3: LocalS3, bucket: str, *reachable: str) -> BucketBinding:
    key_id, secret = s3.bucket_key((bucket, *reachable))  # the server checks each binding's rights
    return BucketBinding("bench", bucket, "us-gov-west-1", s3.endpoint_url, key_id, secret, reachable)


def make_objects(count: int, seed: int = SEED) -> dict[str, int]:
    """key -> size, deterministic."""
    rng = random.Random(seed)
    return {f"{FOLDERS[i % len(FOLDERS)]}/report-{i:05d}.pdf": rng.randint(2 * 1024, 400 * 1024)
            for i in range(count)}


def write_objects(store: S3ObjectStore, sizes: dict[str, int], seed: int) -> None:
    """Write every object with bytes derived from `seed` and the key, 16 at a time."""
    def put(key: str) -> None:
        store.put_bytes(key, random.Random(f"{seed}:{key}").randbytes(sizes[key]))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, sizes))


def server_cpu_seconds(child: subprocess.Popen) -> float:
    """User + system CPU seconds the moto server process has used so far."""
    fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_s3_server() -> tuple[subprocess.Popen, LocalS3]:
    """LocalS3 in a child process, so that neither client shares the server's interpreter
    (the AWS CLI is a process of its own; ours would otherwise compete with moto for one GIL)."""
    code = ("import sys; from service.sandbox import LocalS3; s = LocalS3().start(); "
            "print(s.endpoint_url, *s.admin_key, flush=True); sys.stdin.read(); s.stop()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=Path(__file__).resolve().parent.parent)
    s3 = LocalS3()
    line = child.stdout.readline().split()
    if len(line) != 3:
        raise RuntimeError("the moto server did not start")
    s3.endpoint_url, s3.admin_key = line[0], (line[1], line[2])
    return child, s3


def time_aws(s3: LocalS3, src: str, dst: str) -> float:
    """Seconds of one `aws s3 sync` (a child process, credentials in its environment)."""
    aws = str(Path(sys.executable).parent / "aws")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=s3.admin_key[0], AWS_SECRET_ACCESS_KEY=s3.admin_key[1],
               AWS_DEFAULT_REGION="us-gov-west-1")
    seconds = run_child([aws, "--endpoint-url", s3.endpoint_url, "s3", "sync", "--only-show-errors",
                            f"s3://{src}", f"s3://{dst}"], env)
    return seconds


def time_ours(s3: LocalS3, src: str, dst: str, concurrency: int) -> tuple[float, dict]:
    """Seconds of one sync_bucket, clients included; and its figures."""
    start = time.perf_counter()
    source = S3ObjectStore(_binding(s3, src, dst))
    dest = S3ObjectStore(_binding(s3, dst))
    report = sync_bucket(source, dest, concurrency=concurrency)
    return time.perf_counter() - start, report.figures()


def check_copy(s3: LocalS3, src: str, dst: str, changed: list[str]) -> list[str]:
    """Problems found in `dst` compared with `src` (empty when the copy is exact)."""
    source, dest = S3ObjectStore(_binding(s3, src)), S3ObjectStore(_binding(s3, dst))
    want = {o.key: (o.size, o.etag) for o in source.list_objects()}
    got = {o.key: (o.size, o.etag) for o in dest.list_objects()}
    problems = [f"missing {k}" for k in sorted(want.keys() - got.keys())]
    problems += [f"extra {k}" for k in sorted(got.keys() - want.keys())]
    problems += [f"differs {k}" for k in sorted(want.keys() & got.keys()) if want[k] != got[k]]
    problems += [f"bytes differ {k}" for k in changed if source.get_bytes(k) != dest.get_bytes(k)]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when our copy is exact and every ratio meets the target."""
    parser = argparse.ArgumentParser(prog="python -m bench.media")
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each rerun case")
    args, _unknown = parser.parse_known_args(argv or [])
    child, s3 = start_s3_server()
    try:
        src, dst_aws, dst_ours = s3.create_bucket(), s3.create_bucket(), s3.create_bucket()
        sizes = make_objects(args.objects)
        t0 = time.perf_counter()
        write_objects(S3ObjectStore(_binding(s3, src)), sizes, SEED)
        print(f"bench.media: {len(sizes)} objects, {sum(sizes.values()) / 1e6:.0f} MB written in "
              f"{time.perf_counter() - t0:.1f} s")
        rows, ok, changed = [], True, set()
        for case in ("first copy", "rerun, nothing changed", "rerun, 1% changed"):
            # Reruns are repeated (aws and ours in turn) and the medians compared: the
            # machine is shared, and one slow moment should not decide a ratio.
            rounds = 1 if case == "first copy" else args.repeat
            aws_times, our_times, aws_cpu, our_cpu = [], [], [], []
            for n in range(rounds):
                if case.startswith("rerun, 1%"):
                    picked = random.Random(SEED + n).sample(sorted(sizes), max(1, len(sizes) // 100))
                    write_objects(S3ObjectStore(_binding(s3, src)), {k: sizes[k] for k in picked}, SEED + 1 + n)
                    changed.update(picked)
                cpu = server_cpu_seconds(child)
                aws_times.append(time_aws(s3, src, dst_aws))
                aws_cpu.append(server_cpu_seconds(child) - cpu)
                cpu = server_cpu_seconds(child)
                ours_s, figures = time_ours(s3, src, dst_ours, args.concurrency)
                our_cpu.append(server_cpu_seconds(child) - cpu)
                our_times.append(ours_s)
            aws_s, ours_s = statistics.median(aws_times), statistics.median(our_times)
            aws_c, ours_c = statistics.median(aws_cpu), statistics.median(our_cpu)
            ok &= ours_s / aws_s <= TARGET
            rows.append((case, f"{aws_s:.2f}", f"{aws_c:.2f}", f"{ours_s:.2f}", f"{ours_c:.2f}",
                         ratio(ours_s, aws_s), ratio(ours_c, aws_s), rounds,
                         f"{figures['copied']} copied, {figures['skipped']} skipped, {figures['failed']} failed"))
        print_table(f"media sync, {len(sizes)} objects (target ratio <= {TARGET:.2f})", rows,
                    ("case", "aws s", "server cpu s", "ours s", "server cpu s", "ratio", "server floor",
                     "runs (median)", "ours did, last run"))
        problems = check_copy(s3, src, dst_ours, sorted(changed))
        print("our copy: " + ("exact (keys, sizes, ETags; rewritten objects byte for byte)" if not problems
                              else f"{len(problems)} problem(s): " + "; ".join(problems[:10])))
        return 0 if ok and not problems else 1
    finally:
        child.stdin.close()
        child.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
