"""Failure notifications: one webhook call when a job fails or is aborted, and one on recovery.

A run also notifies, whatever its outcome, when its backup found rows dropped
(service.integrity) or when it stored a contingency report: its text then adds
one line each (`notes`).

The body is JSON that Slack-compatible receivers accept (a `text` line) and
generic ones can read field by field (`job`, `outcome`, `error`, `hint`,
`run_id`, `time`, `recovered`, `space`: the cloud.gov space, so one channel
can serve dev, staging and production). A restore (a job that overwrites a
protected database) is announced however it ends, and its body adds `binding`
and `confirmation`: what was overwritten and what the operator typed. It never holds a secret: no error detail
(stderr tails), no URL, every text scrubbed like the log. The webhook's own
failures are logged and counted and never change how a job ended.

Recovery is the first success of a job after a failure or abort of the same
job in this process (the daemon remembers; a one-off `cf run-task` starts
with no memory, so it can report a failure but not a recovery). The same
memory tells prune_backups whether the last backup run failed.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime

from service.log import get_logger, scrub

FAILED = ("failure", "aborted")
TIMEOUT_SECONDS = 3.0  # short: an aborted run reports inside cloud.gov's 10-second stop grace
SERVICE_NAME = "fac-backup"

_lock = threading.Lock()
_last: dict[str, tuple[str, int]] = {}  # job -> (outcome, order of recording), this process only
_order = itertools.count(1)


def last_outcomes() -> dict[str, tuple[str, int]]:
    """job -> (outcome, n) of the last run of each job in this process (skips excluded);
    a larger n was recorded later."""
    with _lock:
        return dict(_last)


def forget_outcomes() -> None:
    """Clear the memory (tests)."""
    with _lock:
        _last.clear()


def remember(job: str, outcome: str) -> str | None:
    """Record `outcome` for `job`; return the outcome it replaces (None: first run)."""
    with _lock:
        previous = _last.get(job, (None, 0))[0]
        if outcome != "skipped":  # a run that never happened says nothing about the job's health
            _last[job] = (outcome, next(_order))
    return previous


def evidence_lines(result) -> list[str]:
    """Lines a run adds to its notification whatever its outcome: the tables a backup found
    dropped (service.integrity) and where a contingency report was stored."""
    lines = []
    for step in getattr(result, "steps", ()) or ():
        figures = step.figures or {}
        dropped = figures.get("rows_dropped") or []
        if dropped:
            tables = "; ".join(f"{d['table']} {d['before']:,} -> "
                               f"{'gone' if d['after'] is None else format(d['after'], ',')}" for d in dropped)
            lines.append(f"rows dropped in backup {figures.get('backup_id')} against "
                         f"{figures.get('integrity_baseline')}: {tables}. The baseline is kept until the drop is "
                         f"acknowledged (run acknowledge_drop {figures.get('backup_id')} if it was a legitimate purge)")
        if step.name == "contingency_report" and figures.get("report_url"):
            lines.append(f"contingency report {figures['since'][:10]} to {figures['until'][:10]}: "
                         f"{figures['report_url']} ({figures['slots_kept']} of {figures['slots']} slots kept, "
                         f"{figures['flagged_unacknowledged']} unacknowledged drops)")
    return [scrub(line) for line in lines]


def build_payload(result, *, recovered: bool = False, now: datetime | None = None,
                  space: str | None = None, notes: list[str] | None = None) -> dict:
    """The JSON body for a finished run (jobs.JobResult); `space` names where it ran; `notes`
    (evidence_lines) are added to its text, one line each."""
    error = result.error
    space = scrub(space) if space else None
    origin = f"{SERVICE_NAME} ({space})" if space else SERVICE_NAME
    message = scrub(error.message) if error is not None and not recovered else ""
    hint = scrub(error.hint) if error is not None and not recovered else ""
    confirmed = {k: scrub(str(v)) for k, v in (getattr(result, "confirmation", None) or {}).items()}
    # A restore says which database of which space it overwrote, and what the operator typed.
    job = result.job
    if confirmed:
        target = f"{confirmed['space']}/{confirmed['binding']}" if confirmed.get("space") else confirmed["binding"]
        job += f" of {target} (--confirm {confirmed['confirmation']})"
    if recovered:
        text = f"{origin}: {job} succeeded again after a failure (run {result.run_id})"
    elif result.outcome == "success":
        text = f"{origin}: {job} succeeded (run {result.run_id})"
    else:
        text = f"{origin}: {job} {'was aborted' if result.outcome == 'aborted' else 'failed'}"
        text += f": {message}" if message else ""
        text += f" (hint: {hint})" if hint else ""
        text += f" (run {result.run_id})"
    text += "".join(f"\n{line}" for line in notes or ())
    extra = {"binding": confirmed["binding"], "confirmation": confirmed["confirmation"]} if confirmed else {}
    if notes:
        extra["notes"] = list(notes)
    return {
        "text": text,
        "service": SERVICE_NAME,
        "space": space,
        "job": result.job,
        "outcome": result.outcome,
        "recovered": recovered,
        "error": message,
        "hint": hint,
        "run_id": result.run_id,
        "time": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        **extra,
    }


def post_json(url: str, payload: dict, timeout: float = TIMEOUT_SECONDS) -> int:
    """POST `payload` as JSON; return the HTTP status, raise OSError/HTTPError on failure."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": SERVICE_NAME},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) checked in config
        return response.status


def notify_job_end(config, result, *, metrics=None, log=None) -> bool:
    """Remember how `result` ended and call the webhook if it failed or recovered, or if it
    overwrote a protected database (a restore is announced however it ended).

    Returns True when a notification was sent. Never raises: a notification
    must not turn a finished job into a failed one.
    """
    log = log or get_logger()
    try:
        previous = remember(result.job, result.outcome)
        failed = result.outcome in FAILED
        recovered = result.outcome == "success" and previous in FAILED
        url = getattr(config, "webhook_url", None)
        protected = bool(getattr(result, "confirmation", None)) and result.outcome != "skipped"
        notes = evidence_lines(result)
        if not url or not (failed or recovered or protected or notes):
            return False
        payload = build_payload(result, recovered=recovered, space=getattr(config, "space", None), notes=notes)
        try:
            status = post_json(url, payload)
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            reason = f"HTTP {exc.code}" if isinstance(exc, urllib.error.HTTPError) else type(exc).__name__
            log.warning("notify.failed", notified_job=result.job, reason=scrub(reason),
                        detail=scrub(str(getattr(exc, "reason", "")) or ""))
            _count(metrics, "failed")
            return False
        log.info("notify.sent", notified_job=result.job, outcome=result.outcome, recovered=recovered,
                 status=status)
        _count(metrics, "sent")
        return True
    except Exception:  # noqa: BLE001 - the notification is best effort by design
        log.exception("notify.crashed")
        _count(metrics, "failed")
        return False


def _count(metrics, outcome: str) -> None:
    if metrics is not None and hasattr(metrics, "notification_finished"):
        metrics.notification_finished(outcome)
