"""`python -m bench report`: the time and memory of a contingency report over 1,000 backups.

A moto server (a child process) gets a backups bucket shaped like four months of
FAC's: 1,000 complete backups on the default schedule (seven scheduled a day in
working hours, one daily), each manifest listing FAC's 63 tables (deploy/fac-tables.txt)
with growing row counts, database sizes and integrity records (a daily session
purge, one mass deletion), a journal record per run (a failed run every ~100
slots, a half-day outage with no record at all), a weekly drill (one failed)
with its verified.json, a restore with its pre-restore backup and a refused one,
and 300 media objects with versions. Then `python -m service report` runs as an
operator would, in a child process: over the whole history (1,000 backups) and
over the last 30 days (the monthly report). The anchor is `python -m service list`
on the same bucket, which reads the same 1,000 manifests one at a time (the
report reads 16 at once). Wall time, each child's peak RSS (its own, from
wait4) and the CPU the moto server spent answering it are printed: when the
server's CPU is most of a run, the run is at moto's floor, not ours.

`--screenshot PNG` also opens the 30-day report in Debian's chromium and saves
its first screen (docs/report-sample.png, shown in docs/evidence.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.common import print_table, ratio
from bench.media import server_cpu_seconds, start_s3_server
from service import catalog, jobs, journal, layout
from service.config import DEFAULT_TABLE_MANIFEST
from service.storage import S3ObjectStore
from service.tasks.checks import read_table_manifest
from service.vcap import BucketBinding

REPO = Path(__file__).resolve().parent.parent
TZ = ZoneInfo("America/Los_Angeles")
SEED = 20261201
HOURS = (6, 8, 10, 12, 14, 16, 18, 20)  # the scheduled slots and the daily one


def slot_times(count: int, now: datetime) -> list[datetime]:
    """The newest `count` slots of the default schedule before `now`, oldest first (local days)."""
    slots, day = [], now.astimezone(TZ).date()
    while len(slots) < count:
        for hour in reversed(HOURS):
            when = datetime(day.year, day.month, day.day, hour, tzinfo=TZ)
            if when < now and len(slots) < count:
                slots.append(when)
        day -= timedelta(days=1)
    return sorted(slots)


def result(job, run_id, outcome, seconds, steps, error=None, confirmation=None):
    return jobs.JobResult(job, run_id, outcome, seconds, tuple(jobs.StepResult(*s) for s in steps), error,
                          False, confirmation)


def build_bucket(store: S3ObjectStore, count: int, now: datetime) -> dict:
    """Write the synthetic history (see the module docstring); return what was written."""
    from service.errors import BackupError, ConfirmationRequiredError

    rng = random.Random(SEED)
    tables = read_table_manifest(DEFAULT_TABLE_MANIFEST)
    rows = {f"{s}.{t}": rng.randint(10, 400_000) for s, t in tables}
    objects: dict[str, bytes] = {}
    slots = slot_times(int(count * 1.1) + 10, now)
    outage = set(slots[len(slots) // 2: len(slots) // 2 + 4])  # half a day the daemon was down

    def fails(when: datetime) -> bool:  # about one slot in a hundred, the same ones every run
        return int(when.timestamp()) // 7200 % 97 == 13

    good = [i for i, when in enumerate(slots) if when not in outage and not fails(when)]
    slots = slots[good[-count]:] if len(good) >= count else slots
    previous, made, deletion_at, failed = None, 0, slots[-60], 0
    for i, when in enumerate(slots):
        kind = "daily" if when.hour == 20 else "scheduled"
        job = f"{kind}_backup"
        run_id = f"r{i:05d}"
        if when in outage:
            continue
        if fails(when):
            failed += 1
            error = BackupError(f"backup {kind}-x failed at table public.audit_excelfile: pg_dump exited with "
                                "status 1", hint="no manifest was written; fix the cause and run the backup again")
            record = journal.build_run_record(result(job, run_id, "failure", 40.0, [("row_count", "success", 3.0, {}),
                                                     ("db_to_s3", "failure", 0.0, {})], error),
                                              trigger="scheduler", started_at=when, finished_at=when)
            objects[layout.journal_record_key(when, job, run_id)] = json.dumps(record).encode()
            continue
        for name in rows:
            rows[name] += rng.randint(0, 40)
        rows["public.django_session"] = rng.randint(100, 2000)
        if when == deletion_at:
            rows["public.dissemination_finding"] //= 2
        backup_id = layout.build_backup_id(kind, when) + f"-{i}"
        started = when + timedelta(seconds=4)
        entries = tuple(catalog.TableEntry(s, t, layout.table_key(backup_id, s, t), rows[f"{s}.{t}"] * 40,
                                           "0" * 64, rows[f"{s}.{t}"]) for s, t in tables)
        check = {}
        if previous is not None:
            from service.integrity import compare_tables

            check = compare_tables(previous, entries, allowed=("public.django_session",), threshold_percent=0.1)
        seconds = 1500 + rng.randint(-200, 300)
        manifest = catalog.Manifest(backup_id, job, started.isoformat(), (started + timedelta(seconds=seconds))
                                    .isoformat(), "15.12", "15.12", "fac", entries, integrity=check,
                                    database_bytes=70 * 10**9 + made * 12 * 10**6)
        objects[layout.manifest_key(backup_id)] = manifest.to_json()
        steps = [("row_count", "success", 30.0, {"tables": 63}),
                 ("db_to_s3", "success", float(seconds), {"backup_id": backup_id, "bytes": manifest.total_bytes}),
                 ("media_sync", "success", 20.0, {"copied": rng.randint(0, 40), "copied_bytes": rng.randint(0, 10**8),
                                                  "kept": rng.randint(0, 3)})]
        record = journal.build_run_record(result(job, run_id, "success", seconds + 50.0, steps), trigger="scheduler",
                                          started_at=when, finished_at=when + timedelta(seconds=seconds))
        objects[layout.journal_record_key(when, job, run_id)] = json.dumps(record).encode()
        previous, made = manifest, made + 1
        if when.weekday() == 5 and when.hour == 20:  # Sunday's drill proves Saturday's daily
            drill_at = (when + timedelta(hours=7)).replace(minute=0)
            ok = made % 7 != 3
            figures = {"backup_id": backup_id, "bytes": manifest.total_bytes, "rows": manifest.total_rows,
                       "restored_tables": 63, "restore_seconds": 2400.0 + rng.randint(0, 300)}
            error = None if ok else BackupError("the dump of table public.audit_history in backup "
                                                f"{backup_id} has been altered", hint="choose another backup")
            record = journal.build_run_record(result("verify_backup", f"d{i}", "success" if ok else "failure", 2900.0,
                                                     [("verify_backup", "success" if ok else "failure", 2900.0,
                                                       figures)], error),
                                              trigger="scheduler", started_at=drill_at, finished_at=drill_at)
            objects[layout.journal_record_key(drill_at, "verify_backup", f"d{i}")] = json.dumps(record).encode()
            if ok:
                objects[layout.verified_key(backup_id)] = json.dumps({"verified_at": drill_at.isoformat()}).encode()
    restore_at = slots[-20] + timedelta(minutes=50)
    confirmation = {"space": "production", "binding": "fac-db", "confirmation": "production/fac-db"}
    refused = ConfirmationRequiredError("s3_restore overwrites fac-db in space production and needs an explicit "
                                        "confirmation; nothing was touched", hint="repeat the command with --confirm")
    for offset, outcome in ((0, "rejected"), (3, "success")):
        at = restore_at + timedelta(minutes=offset)
        res = result("s3_restore", f"s{offset}", "failure" if outcome == "rejected" else "success", 3100.0,
                     [] if outcome == "rejected" else [("s3_restore", "success", 3000.0,
                                                        {"pre_restore_backup": "pre-restore-x"})],
                     refused if outcome == "rejected" else None, None if outcome == "rejected" else confirmation)
        record = journal.build_run_record(res, trigger="cli", started_at=at, finished_at=at,
                                          args=(previous.id,), kind="rejected" if outcome == "rejected" else "run")
        objects[layout.journal_record_key(at, "s3_restore", f"s{offset}")] = json.dumps(record).encode()
    for n in range(300):
        objects[f"singleauditreport/2026-{n:05d}.pdf"] = b"%PDF" * rng.randint(10, 200)
        if n % 30 == 0:
            key = layout.media_version_key(f"excel/2026-{n:05d}--awards.xlsx", now, now - timedelta(days=3))
            objects[key] = b"old workbook"

    def put(item) -> None:
        store.put_bytes(*item)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, objects.items()))
    return {"backups": made, "failed": failed, "objects": len(objects), "first": slots[0]}


def bindings(s3, backups: str, media: str) -> dict:
    rds = {"host": "127.0.0.1", "port": "1", "db_name": "fac", "name": "fac", "username": "u", "password": "p",
           "uri": "postgres://127.0.0.1:1/fac"}
    return {"aws-rds": [{"name": n, "label": "aws-rds", "credentials": {**rds, "db_name": d}}
                        for n, d in (("fac-db", "fac"), ("fac-snapshot-db", "snap"))],
            "s3": [s3.s3_binding("fac-private-s3", media), s3.s3_binding("backups", backups)]}


def measure(argv: list[str], env: dict) -> tuple[float, int, str]:
    """Wall seconds and peak RSS (bytes, the child's own, from wait4) of `python -m service ARGV`."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "service", *argv], env=env, cwd=REPO, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {err.read()[-2000:]}")
        return seconds, usage.ru_maxrss * 1024, out.read()


def screenshot(html: Path, png: Path) -> None:
    """The report's first screen, as Debian's chromium renders it."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True,
                                                        args=args, viewport={"width": 1000, "height": 900})
        page = context.new_page()
        page.goto(html.as_uri())
        page.screenshot(path=str(png))
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench report")
    parser.add_argument("--backups", type=int, default=1000)
    parser.add_argument("--screenshot", metavar="PNG", help="save the 30-day report's first screen here")
    args, _unknown = parser.parse_known_args(argv or [])
    child, s3 = start_s3_server()
    try:
        backups, media = s3.create_bucket(), s3.create_bucket()
        store = S3ObjectStore(BucketBinding("backups", backups, "us-gov-west-1", s3.endpoint_url,
                                            *s3.bucket_key((backups,))))
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        made = build_bucket(store, args.backups, now)
        print(f"bench.report: {made['backups']} backups, {made['failed']} failed runs, {made['objects']} objects "
              f"written in {time.perf_counter() - t0:.1f} s")
        with tempfile.TemporaryDirectory() as tmp:
            vcap = Path(tmp) / "vcap.json"
            vcap.write_text(json.dumps(bindings(s3, backups, media)))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("FAC_BACKUP_", "AWS_"))}
            env.update(FAC_BACKUP_VCAP_FILE=str(vcap), FAC_BACKUP_S3_FIPS="false", FAC_BACKUP_LOG_FORMAT="json",
                       FAC_BACKUP_BUCKET_EXPIRY_DAYS="60")
            whole = ["report", "--since", made["first"].isoformat(), "--until", now.isoformat(),
                     "--out", f"{tmp}/all.html"]
            month = ["report", "--since", (now - timedelta(days=30)).isoformat(), "--until", now.isoformat(),
                     "--out", f"{tmp}/month.html"]
            runs = {}
            for name, argv in (("list (anchor)", ["list"]), (f"report, {made['backups']} backups", whole),
                               ("report, last 30 days", month)):
                cpu = server_cpu_seconds(child)
                runs[name] = (*measure(argv, env), server_cpu_seconds(child) - cpu)
            listed = runs["list (anchor)"]
            rows = [(name, f"{s:.1f} s", f"{rss / 2**20:.0f} MiB", ratio(s, listed[0]), f"{server:.1f} s")
                    for name, (s, rss, _, server) in runs.items()]
            print_table("contingency report over the synthetic bucket", rows,
                        ("command", "wall", "peak RSS", "x list", "S3 server CPU"))
            print(f"report size: {Path(tmp, 'all.html').stat().st_size / 1e3:.0f} kB (all), "
                  f"{Path(tmp, 'month.html').stat().st_size / 1e3:.0f} kB (30 days)")
            if args.screenshot:
                screenshot(Path(tmp) / "month.html", Path(args.screenshot))
                print(f"screenshot: {args.screenshot}")
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
