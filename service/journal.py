"""The run journal: one small JSON record per job run, kept in the backups bucket.

Logs expire and Prometheus keeps no history FAC can show an auditor; the journal
is the history the contingency report reads (service.history). Every run leaves
one record however it ends: `success`, `failure`, `aborted`, `skipped` (the
lock was busy), `rejected` (refused before it started: bad arguments, a
missing confirmation), and the scheduler's fires that never became a run
(`not_started`: the previous run was still going, or the slot was missed).
A record holds the job, trigger, space, arguments, start and end, outcome,
each step's figures (scalars, and small lists such as the tables a backup
found shrunk) and the error with its hint.

Records live under `backups/journal/runs/<YYYY-MM>/<start>_<job>_<run id>.json`
(service.layout): a month is one listing, and keys sort by start. The retention
(tasks.prune, `prune_journal`) owns them like everything else.

Writing never fails a job and never holds one up: the write runs on its own
thread and is waited for at most WRITE_TIMEOUT_SECONDS; a failed or late write
is logged (`journal.write_failed`) and counted, and the run ends as it would have.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from service import layout
from service.errors import LockBusyError, ServiceError
from service.log import get_logger, scrub
from service.storage import ObjectStore

FORMAT = 1
WRITE_TIMEOUT_SECONDS = 4.0  # with notify's 3 s, inside the daemon's stop grace
MAX_FIGURE_CHARS = 4000  # a figure longer than this as JSON (a prune's decision list) is recorded by its length
MAX_TEXT_CHARS = 2000
REASON_LOCK_BUSY = "lock_busy"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def _text(value) -> str:
    text = scrub(str(value or ""))
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "..."


def small_figures(figures: dict) -> dict:
    """A step's figures for the journal: scalars as they are, small lists and dicts too; a large
    one becomes its length (`<name>_count`), so a record stays a few kB."""
    kept: dict = {}
    for name, value in (figures or {}).items():
        if isinstance(value, str):
            kept[name] = _text(value)
        elif isinstance(value, (int, float, bool)) or value is None:
            kept[name] = value
        elif isinstance(value, (list, tuple, dict)):
            try:
                encoded = json.dumps(value, default=str)
            except (TypeError, ValueError):
                continue
            if len(encoded) <= MAX_FIGURE_CHARS:
                kept[name] = json.loads(encoded)
            else:
                kept[f"{name}_count"] = len(value)
    return kept


def build_run_record(result, *, trigger: str, started_at: datetime, finished_at: datetime,
                     args: tuple[str, ...] = (), options: dict | None = None, space: str | None = None,
                     kind: str = "run") -> dict:
    """The record of a finished run (jobs.JobResult); `kind` is "run" or "rejected"."""
    error = result.error
    outcome = "rejected" if kind == "rejected" else result.outcome
    record = {
        "format": FORMAT, "kind": kind, "job": result.job, "run_id": result.run_id, "trigger": trigger,
        "space": space or "", "args": [_text(a) for a in args],
        "options": {k: v for k, v in (options or {}).items() if v not in (None, False, "")},
        "started_at": _iso(started_at), "finished_at": _iso(finished_at), "seconds": result.seconds,
        "outcome": outcome, "crashed": bool(result.crashed),
        "steps": [{"step": s.name, "outcome": s.outcome, "seconds": s.seconds, "figures": small_figures(s.figures)}
                  for s in result.steps],
        "error": None, "reason": "",
    }
    if error is not None:
        record["error"] = {"message": _text(error.message), "detail": _text(error.detail),
                           "hint": _text(error.hint), "exit_code": result.exit_code}
        if outcome == "skipped" and isinstance(error, LockBusyError):
            record["reason"] = REASON_LOCK_BUSY
    if result.confirmation:
        record["confirmation"] = {k: _text(v) for k, v in result.confirmation.items()}
    return record


def build_skip_record(job: str, reason: str, *, when: datetime, run_id: str, space: str | None = None) -> dict:
    """The record of a scheduler fire that never became a run (`already_running`, `missed`)."""
    return {"format": FORMAT, "kind": "not_started", "job": job, "run_id": run_id, "trigger": "scheduler",
            "space": space or "", "args": [], "options": {}, "started_at": _iso(when), "finished_at": _iso(when),
            "seconds": 0.0, "outcome": "skipped", "crashed": False, "steps": [], "error": None, "reason": reason}


def write_record(store_factory: Callable[[], ObjectStore], record: dict, *, metrics=None, log=None,
                 timeout: float | None = None) -> bool:
    """Store `record`; True when it was written within `timeout` (WRITE_TIMEOUT_SECONDS). Never raises."""
    log = log or get_logger()
    timeout = WRITE_TIMEOUT_SECONDS if timeout is None else timeout
    done: list = []

    def put() -> None:
        try:
            started = datetime.fromisoformat(record["started_at"])
            key = layout.journal_record_key(started, record["job"], record["run_id"])
            body = json.dumps(record, indent=1, ensure_ascii=False).encode("utf-8")
            store_factory().put_bytes(key, body, content_type="application/json")
            done.append(key)
        except Exception as exc:  # noqa: BLE001 - a ServiceError or not, the journal must never fail a run
            done.append(exc)

    writer = threading.Thread(target=put, name="journal", daemon=True)
    try:
        writer.start()
        writer.join(timeout)
    except Exception as exc:  # noqa: BLE001 - e.g. no thread could be started
        done.append(exc)
    outcome = done[0] if done else None
    if isinstance(outcome, str):
        _count(metrics, "written")
        return True
    if outcome is None:
        reason = f"no answer within {timeout:g} s"
    elif isinstance(outcome, ServiceError):
        reason = outcome.message
    else:
        reason = f"{type(outcome).__name__}: {outcome}"
    log.warning("journal.write_failed", journaled_job=record.get("job"), journaled_run=record.get("run_id"),
                reason=scrub(reason), hint="the run itself is unaffected; the report will lack this record")
    _count(metrics, "failed")
    return False


def _count(metrics, outcome: str) -> None:
    if metrics is not None:
        metrics.journal_write(outcome)


def read_records(store: ObjectStore, since: datetime, until: datetime, *, workers: int = 1) -> list[dict]:
    """Every readable record of a run started in [since, until), oldest first (`workers` at once)."""
    def read(key: str) -> dict | None:
        try:
            record = json.loads(store.get_bytes(key))
        except (ServiceError, ValueError):
            return None  # expired meanwhile, or not one of ours: the report works with the rest
        return record if isinstance(record, dict) and record.get("job") and record.get("started_at") else None

    keys = [obj.key for obj in list_record_objects(store, since, until)]
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="journal") as pool:
        records = [r for r in pool.map(read, keys) if r is not None]
    return sorted(records, key=lambda r: (r["started_at"], r.get("run_id", "")))


def list_record_objects(store: ObjectStore, since: datetime, until: datetime) -> Iterator:
    """The journal objects of runs started in [since, until): one listing per month."""
    for month in months_between(since, until):
        for obj in store.list_objects(month):
            started = layout.journal_record_time(obj.key)
            if started is not None and since <= started < until:
                yield obj


def months_between(since: datetime, until: datetime) -> list[str]:
    """The month prefixes (UTC) that [since, until) touches."""
    prefixes, cursor = [], since.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = until.astimezone(UTC)
    while cursor < end:
        prefixes.append(layout.journal_month_prefix(cursor))
        cursor = (cursor + timedelta(days=32)).replace(day=1)
    return prefixes


def prune_journal(store: ObjectStore, now: datetime, keep_days: int, *, apply: bool, log=None) -> dict:
    """Delete (or, in a dry run, count) journal records and stored reports older than `keep_days`."""
    cutoff = now - timedelta(days=keep_days)
    doomed = []
    for obj in store.list_objects(layout.JOURNAL_PREFIX):
        when = layout.journal_record_time(obj.key) or layout.report_key_time(obj.key)
        if when is not None and when < cutoff:
            doomed.append(obj.key)
    if apply and doomed:
        store.delete_objects(doomed)
    if log is not None:
        log.info("prune.journal", applied=apply, keep_days=keep_days, deleted=len(doomed),
                 cutoff=cutoff.isoformat(timespec="seconds"))
    return {"journal_keep_days": keep_days, "journal_deleted": len(doomed)}


def record_run(config, result, *, trigger: str, started_at: datetime, args: tuple[str, ...] = (),
               options: dict | None = None, store: Callable[[], ObjectStore], metrics=None, log=None,
               kind: str = "run") -> bool:
    """The call at the end of jobs.run_job: build the run's record and write it; never raises."""
    try:
        record = build_run_record(result, trigger=trigger, started_at=started_at, finished_at=datetime.now(UTC),
                                  args=args, options=options, space=getattr(config, "space", None), kind=kind)
    except Exception:  # noqa: BLE001 - the journal must never fail a run
        (log or get_logger()).exception("journal.record_crashed")
        _count(metrics, "failed")
        return False
    return write_record(store, record, metrics=metrics, log=log)
