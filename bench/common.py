"""What every benchmark shares: the FAC-like database, the S3 server, timing and reporting.

The benchmark database (about 1 GB on disk: a few large tables and dozens of
small ones) is built once per server and reused while its marker table says
it has the requested scale; `--rebuild` forces a new one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from service.sample_data import load_sample_database
from service.sandbox import LocalPostgres, LocalS3, build_vcap, write_vcap_file

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
BENCH_DB = "fac_bench"
# ~1 GB on disk: dissemination_general 600k rows, 8 federal awards each, 40 lookup tables.
DEFAULT_SCALE = {"general_rows": 600_000, "awards_per_audit": 8, "small_tables": 40}


@dataclass
class BenchEnv:
    """A PostgreSQL server holding the benchmark database and a moto server."""

    pg: LocalPostgres
    s3: LocalS3
    db: str = BENCH_DB
    created: list = field(default_factory=list)

    def vcap_env(self, *, db: str | None = None, snapshot_db: str, media: str, backups: str, **extra) -> dict:
        """The environment a `python -m service` child needs to use these servers."""
        WORK.mkdir(parents=True, exist_ok=True)
        path = write_vcap_file(WORK, build_vcap(self.pg, self.s3, db=db or self.db, snapshot_db=snapshot_db,
                                                media=media, backups=backups))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAC_BACKUP_", "AWS_"))}
        env.pop("VCAP_SERVICES", None)
        env.update(FAC_BACKUP_VCAP_FILE=str(path), FAC_BACKUP_S3_FIPS="false", FAC_BACKUP_LOG_FORMAT="json")
        env.update(extra)
        return env

    def aws_env(self) -> dict:
        """Environment for the AWS CLI (the anchor) against the moto server, with an administrator's
        key (the server checks every request's key)."""
        key_id, secret = self.s3.admin_key
        return dict(os.environ, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret,
                    AWS_DEFAULT_REGION="us-gov-west-1")

    def pg_env(self, db: str) -> dict:
        """libpq environment for the programs an anchor method runs (the AWS CLI's variables too),
        as the database's owner role, which is what the old tool's binding gave it."""
        return dict(self.aws_env(), **self.pg.owner_env(db))

    def aws(self) -> list[str]:
        return [str(Path(sys.executable).parent / "aws"), "--endpoint-url", self.s3.endpoint_url]

    def new_database(self) -> str:
        name = self.pg.create_database()
        self.created.append(name)
        return name

    def close(self) -> None:
        for name in self.created:
            self.pg.drop_database(name)
        self.s3.stop()
        self.pg.stop()


def open_env(rebuild: bool = False, scale: dict | None = None) -> BenchEnv:
    """Start (or reuse) the servers and make sure the benchmark database is in place."""
    url = os.environ.get("FAC_BACKUP_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    # A throwaway cluster for benchmarks writes durably, as production does: without
    # fsync and full-page writes, methods that commit often would look cheaper.
    env = BenchEnv(LocalPostgres(url, durable=True).start(), LocalS3().start())
    ensure_database(env, BENCH_DB, scale or DEFAULT_SCALE, rebuild=rebuild)
    return env


def ensure_database(env: BenchEnv, name: str, scale: dict, rebuild: bool = False) -> str:
    """`name` holding the FAC-like database at `scale`, owned by its own login role as on RDS:
    kept from an earlier run while its marker table says it has that scale, else built anew."""
    marker = repr(sorted(scale.items())) + " owned by its role"
    with env.pg.connect() as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists and not rebuild:
        with env.pg.connect(name) as conn:
            row = conn.execute("SELECT to_regclass('public.bench_marker')").fetchone()
            found = row[0] and conn.execute("SELECT scale FROM public.bench_marker").fetchone()[0]
        if found == marker:
            env.pg.adopt_database(name)  # its role gets a new password for this run
            return name
    print(f"bench: building {name} ({marker}) ...", file=sys.stderr)
    env.pg.drop_database(name)
    env.pg.create_database(name)
    with env.pg.connect_as_owner(name) as conn:  # the data belongs to the binding's role, as on RDS
        load_sample_database(conn, **scale)
        conn.execute("CREATE TABLE public.bench_marker (scale text)")
        conn.execute(sql.SQL("INSERT INTO public.bench_marker VALUES ({})").format(sql.Literal(marker)))
    return name


def database_size(env: BenchEnv, db: str | None = None) -> int:
    with env.pg.connect(db or env.db) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def machine_busy_seconds() -> float:
    """CPU seconds every core of this machine has spent busy since boot (from /proc/stat).

    The difference across a run is the work of everything that ran, both
    database servers included; divided by the core count it is the shortest
    wall time that work could take, however well it were spread.
    """
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def run_child(argv: list[str], env: dict) -> float:
    """Run a child to completion; return its wall time in seconds. Fails loudly.

    Memory is not measured here: a child's ru_maxrss includes the size of the
    process it was forked from; our jobs report their own peak (run_job_child).
    """
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({done.returncode}): "
                           f"{done.stderr.decode('utf-8', 'replace')[-2000:]}")
    return time.perf_counter() - start


def run_job_child(args: list[str], env: dict) -> tuple[float, dict]:
    """`python -m service run ARGS` in a child; (seconds, its job summary event). Fails loudly.

    The summary carries `peak_rss_bytes`, the Python process's own high-water mark
    (the PostgreSQL programs it runs are separate processes and not counted); this adds
    `cpu_seconds`, the CPU the child and its own children used (user and system).
    """
    import json
    import resource

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    start, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run([sys.executable, "-m", "service", "run", *args], env=env, cwd=REPO,
                          capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, children_cpu() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"run {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    summary = next(e for e in reversed(events) if e.get("event") == "job.finished")
    return seconds, dict(summary, cpu_seconds=cpu)


def print_table(title: str, rows: list[tuple], headers: tuple[str, ...]) -> None:
    """A plain aligned table on stdout."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print(f"\n== {title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def ratio(ours: float, anchor: float) -> str:
    return f"{ours / anchor:.2f}x" if anchor else "n/a"


def mib(n: int) -> str:
    return f"{n / 1024 / 1024:,.1f} MiB"
