"""Benchmark of db_to_db (fac-db -> fac-snapshot-db): the old method and both of ours, in one run.

(a) the old tool's method, reproduced with the programs it runs: for each public
    table in turn, `DROP TABLE ... CASCADE` on the target, then
    `pg_dump --format plain -t TABLE source | psql target`;
(b) ours in place: the db_to_db job through the registry, the method it takes
    when fac-snapshot-db's storage cannot hold two copies (production's) or is
    not known: the old contents dropped first, then each table committed;
(c) ours all or nothing: the same job told the storage holds both copies (one
    snapshot, one transaction, binary COPY byte pumps).
Each runs into a fresh target and then again into the target it populated
(the replace before a deploy). The old method cannot create a table whose
type it was not given, so its fresh target first receives the source's
definitions, untimed (a head start ours does not get). Between runs the
written database is vacuumed and checkpointed, untimed, so no run pays for
the previous one's background work. Row counts of every table copied are
checked against the source. Each time is the best of ROUNDS runs.

During each replace, a thread samples what the target server's disk holds
for it, from the data directory: the target database's directory, pg_wal and
the temporary files (on a shared benchmark server the other databases stay
as they are). The peak is printed against one copy (the target database's
size after a whole copy) and against the old method's peak. It needs the
throwaway cluster's data directory (not FAC_BACKUP_TEST_DATABASE_URL).

Source and target share this machine's cores, so beside the times the bench
prints the CPU seconds the whole machine spent on each method (both servers,
every program). Ours divided by the core count is the shortest time our work
could take on this machine however it were scheduled: its ratio to the old
method's time is the floor under our ratio here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

from psycopg import sql

from bench.common import BenchEnv, database_size, machine_busy_seconds, mib, open_env, print_table, ratio, timed
from service import jobs
from service.config import load_config
from service.log import configure_logging
from service.pgtools import build_table_pattern
from service.sandbox import find_pg_program

TARGET_RATIO = 0.70
ROUNDS = 2  # each figure is the best of its rounds: the machine is shared, noise is one-sided
QUIET = open(os.devnull, "w")  # noqa: SIM115 - the job's log, for the life of the process



def psql_argv(*extra: str) -> list[str]:
    return [find_pg_program("psql"), "--no-psqlrc", "--quiet", *extra]


def public_tables(env: BenchEnv, db: str) -> list[str]:
    with env.pg.connect(db) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def give_definitions(env: BenchEnv, source: str, target: str) -> None:
    """Untimed set-up for the old method: the source's definitions, without rows."""
    dump = subprocess.Popen([find_pg_program("pg_dump"), "--schema-only", "--section=pre-data", "--no-owner",
                             "--no-privileges"], env=env.pg_env(source), stdout=subprocess.PIPE)
    subprocess.run(psql_argv("--set=ON_ERROR_STOP=1"), env=env.pg_env(target), stdin=dump.stdout,
                   check=True, stdout=subprocess.DEVNULL)
    dump.stdout.close()
    if dump.wait() != 0:
        raise RuntimeError("pg_dump of the definitions failed")


def old_method(env: BenchEnv, source: str, target: str) -> None:
    """What the old tool did: per public table, drop it on the target, then pg_dump | psql."""
    for table in public_tables(env, source):
        drop = sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier("public", table)).as_string(None)
        subprocess.run(psql_argv("-c", drop), env=env.pg_env(target), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        dump = subprocess.Popen([find_pg_program("pg_dump"), "--format", "plain", "--no-owner", "--no-privileges",
                                 "-t", build_table_pattern("public", table)],
                                env=env.pg_env(source), stdout=subprocess.PIPE)
        subprocess.run(psql_argv(), env=env.pg_env(target), stdin=dump.stdout, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dump.stdout.close()
        if dump.wait() != 0:
            raise RuntimeError(f"pg_dump of {table} failed")


METHODS = {"in place": {}, "all or nothing": {"FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB": "1000"}}


def ours(env: BenchEnv, source: str, target: str, method: str = "in place") -> float:
    """The db_to_db job through the registry, in this process, by `method`; its wall time.

    The service lock is left out: other benchmarks may hold it on the same
    database, and waiting for them is not copying.
    """
    buckets = {"media": env.s3.create_bucket(), "backups": env.s3.create_bucket()}
    config = load_config(env.vcap_env(db=source, snapshot_db=target, **buckets, **METHODS[method]))
    configure_logging("json", QUIET)
    seconds, result = timed(jobs.run_job, config, "db_to_db", lock_guard=lambda _ctx: contextlib.nullcontext())
    if result.outcome != "success":
        raise RuntimeError(f"db_to_db failed: {result.error}")
    chosen = result.steps[0].figures["method"]
    if chosen != method.replace(" ", "_"):
        raise RuntimeError(f"db_to_db went {chosen}, not {method}")
    return seconds


class DiskPeak:
    """Samples, on a thread, the bytes a target database occupies in the data directory (its directory and
    the temporary files), and those with the WAL; `peak` and `peak_with_wal` are the most seen. Files come
    and go while it walks: those are skipped."""

    def __init__(self, env: BenchEnv, db: str) -> None:
        with env.pg.connect() as conn:
            oid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (db,)).fetchone()[0]
        data = env.pg.data_dir
        self.data_dirs = [os.path.join(data, "base", str(oid)), os.path.join(data, "base", "pgsql_tmp")]
        self.wal_dir = os.path.join(data, "pg_wal")
        self.peak = self.peak_with_wal = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-peak", daemon=True)

    @staticmethod
    def _bytes(directory: str) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
        return total

    def sample(self) -> None:
        data = sum(self._bytes(d) for d in self.data_dirs)
        self.peak = max(self.peak, data)
        self.peak_with_wal = max(self.peak_with_wal, data + self._bytes(self.wal_dir))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.05)

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def settle(env: BenchEnv, db: str) -> None:
    """Untimed: vacuum what a run just wrote and checkpoint, so the next run does not pay for it.

    Without this, autovacuum of one method's fresh 1 GB (and the checkpoint of
    its WAL) runs during the next measurement and is charged to the other.
    """
    with env.pg.connect(db) as conn:
        conn.execute("VACUUM (FREEZE, ANALYZE)")
        conn.execute("CHECKPOINT")


def table_counts(env: BenchEnv, db: str, schemas: tuple[str, ...]) -> dict:
    with env.pg.connect(db) as conn:
        tables = conn.execute("SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY(%s)",
                              (list(schemas),)).fetchall()
        return {(s, t): conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(s, t))).fetchone()[0]
                for s, t in tables}


def verify(env: BenchEnv, source: str, target: str, schemas: tuple[str, ...], label: str) -> int:
    """Every table of `schemas` has the source's row count in the target; return the rows."""
    expected, got = table_counts(env, source, schemas), table_counts(env, target, schemas)
    if expected != got:
        wrong = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise RuntimeError(f"{label}: row counts differ from the source for {wrong[:5]}")
    return sum(expected.values())


LABELS = {"old": "old: DROP CASCADE + pg_dump -t | psql, per public table",
          "in place": "ours in place: old contents dropped first, each table committed",
          "all or nothing": "ours all or nothing: one snapshot, one transaction"}


def main(argv: list[str] | None = None) -> int:
    argv = argv or []
    env = open_env(rebuild="--rebuild" in argv)
    sampled = env.pg.tmpdir is not None  # the data directory is ours to read
    try:
        size = database_size(env)
        times = {(m, kind): [] for m in LABELS for kind in ("fresh", "replace")}
        cpu = {k: [] for k in times}
        peaks: dict[str, list[float]] = {m: [] for m in LABELS}  # replace peak / one copy
        peak_bytes: dict[str, list[int]] = {m: [] for m in LABELS}
        wal_bytes: dict[str, list[int]] = {m: [] for m in LABELS}
        rows: dict[str, int] = {}
        schemas = {"old": ("public",), "in place": ("public", "support"), "all or nothing": ("public", "support")}

        def run(method: str, target: str) -> float:
            if method == "old":
                return timed(old_method, env, env.db, target)[0]
            return ours(env, env.db, target, method)

        for _ in range(ROUNDS):
            targets = {m: env.new_database() for m in LABELS}
            give_definitions(env, env.db, targets["old"])
            settle(env, env.db)
            for kind in ("fresh", "replace"):
                for method, target in targets.items():
                    busy = machine_busy_seconds()
                    with DiskPeak(env, target) if sampled else contextlib.nullcontext() as peak:
                        times[(method, kind)].append(run(method, target))
                    cpu[(method, kind)].append(machine_busy_seconds() - busy)
                    rows[method] = verify(env, env.db, target, schemas[method], f"{method}, {kind}")
                    settle(env, target)
                    if kind == "replace" and peak is not None:
                        one_copy = database_size(env, target)
                        peaks[method].append(peak.peak / one_copy)
                        peak_bytes[method].append(peak.peak)
                        wal_bytes[method].append(peak.peak_with_wal)
        best = {k: min(v) for k, v in times.items()}
        print("all runs (s): " + "; ".join(f"{m} {kind} {', '.join(f'{x:.1f}' for x in v)}"
                                           for (m, kind), v in times.items()))
        table = []
        for method, label in LABELS.items():
            peak = f"{min(peaks[method]):.2f}x one copy" if peaks[method] else "n/a"
            peak_vs_old = ratio(min(peak_bytes[method]), min(peak_bytes["old"])) if peak_bytes[method] else "n/a"
            table.append((label, f"{best[(method, 'fresh')]:.1f} s", f"{best[(method, 'replace')]:.1f} s",
                          ratio(best[(method, "replace")], best[("old", "replace")]),
                          f"{mib(min(peak_bytes[method]))}" if peak_bytes[method] else "n/a", peak, peak_vs_old,
                          f"{mib(min(wal_bytes[method]))}" if wal_bytes[method] else "n/a", f"{rows[method]:,}"))
        print_table(f"db_to_db on a {mib(size)} FAC-like database (same run, same server)", table,
                    ("method", "fresh", "replace", "replace vs old", "replace peak disk", "peak / one copy",
                     "peak vs old", "peak with WAL", "rows"))
        for method in ("in place", "all or nothing"):
            for kind in ("fresh", "replace"):
                print(f"{method} / old method, {kind:<7}: {ratio(best[(method, kind)], best[('old', kind)])}   "
                      f"(target <= {TARGET_RATIO:.2f}x)")
        if not sampled:
            print("peak disk use not sampled: the server's data directory is not this benchmark's "
                  "(FAC_BACKUP_TEST_DATABASE_URL)")
        cores = os.cpu_count() or 1
        print("machine CPU per run (s): " + "; ".join(f"{m} {kind} {', '.join(f'{x:.1f}' for x in v)}"
                                                      for (m, kind), v in cpu.items()))
        floor = {k: min(v) / cores for k, v in cpu.items()}
        print(f"floor on {cores} cores (our least CPU / cores / old time): " + ", ".join(
            f"{m} {kind} {ratio(floor[(m, kind)], best[('old', kind)])}"
            for m in ("in place", "all or nothing") for kind in ("fresh", "replace")))
        print("peak disk: the target database's directory and the temporary files (with WAL: and pg_wal), "
              "sampled every 50 ms during the replace, best of the rounds; one copy: the target database once whole")
        print("row counts verified against the source for every table copied "
              "(ours also copies the support schema; the old method only public)")
        worst = max(best[(m, kind)] / best[("old", kind)] for m in ("in place", "all or nothing")
                    for kind in ("fresh", "replace"))
        return 0 if worst <= TARGET_RATIO else 1
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
