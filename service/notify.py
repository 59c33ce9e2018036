"""Notifications to the team: a webhook call and an email when a job fails or is aborted, on
recovery, and for every restore.

`notify_job_end(config, result)`: jobs.run_job calls it once per run; it decides whether the run
is worth a message (below) and sends it to every configured channel at once, each on its own
thread, waiting at most TIMEOUT_SECONDS for all of them together: the webhook (FAC_BACKUP_WEBHOOK_URL or _SERVICE),
through the proxy service.egress chooses, and the email (service.mail). A channel that fails or
runs out of time is logged (`notify.failed`: channel, reason, detail) and counted
(`fac_backup_notifications_total{channel, outcome="failed"}`) and never changes how a job ended.

A run also notifies, whatever its outcome, when its backup found rows dropped
(service.integrity) or when it stored a contingency report: its text then adds
one line each (`notes`).

The body is JSON that Slack-compatible receivers accept (a `text` line) and
generic ones can read field by field (`job`, `outcome`, `error`, `hint`,
`run_id`, `time`, `recovered`, `space`: the cloud.gov space, so one channel
can serve dev, staging and production); the email is the same text and fields as plain text, under
a subject naming the space, the job and the outcome. A restore (a job that overwrites a
protected database) is announced however it ends, and its body adds `binding`
and `confirmation`: what was overwritten and what the operator typed. It never holds a secret: no error detail
(stderr tails), no URL, every text scrubbed like the log.

Recovery is the first success of a job after a failure or abort of the same
job in this process (the daemon remembers; a one-off `cf run-task` starts
with no memory, so it can report a failure but not a recovery). The same
memory tells prune_backups whether the last backup run failed.
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime

from service.egress import DeliveryError, Egress, post_json
from service.log import get_logger, scrub
from service.mail import build_message, send_mail

FAILED = ("failure", "aborted")
TIMEOUT_SECONDS = 3.0  # short: an aborted run reports inside cloud.gov's 10-second stop grace
SERVICE_NAME = "fac-backup"
VERBS = {"success": "succeeded", "failure": "failed", "aborted": "was aborted"}

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


def _origin(space: str | None) -> str:
    return f"{SERVICE_NAME} ({space})" if space else SERVICE_NAME


def _confirmed(result) -> dict:
    return {k: scrub(str(v)) for k, v in (getattr(result, "confirmation", None) or {}).items()}


def _job_label(result, *, typed: bool = True) -> str:
    """The job's name; a restore's adds which database of which space it overwrote, and (`typed`)
    what the operator typed."""
    confirmed = _confirmed(result)
    if not confirmed:
        return result.job
    target = f"{confirmed['space']}/{confirmed['binding']}" if confirmed.get("space") else confirmed["binding"]
    return f"{result.job} of {target}" + (f" (--confirm {confirmed['confirmation']})" if typed else "")


def build_subject(result, *, recovered: bool = False, space: str | None = None) -> str:
    """The email's subject: space, job (a restore's target) and outcome, in one line."""
    verb = "succeeded again" if recovered else VERBS.get(result.outcome, result.outcome)
    return f"{_origin(scrub(space) if space else None)}: {_job_label(result, typed=False)} {verb}"


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
    origin = _origin(space)
    message = scrub(error.message) if error is not None and not recovered else ""
    hint = scrub(error.hint) if error is not None and not recovered else ""
    confirmed = _confirmed(result)
    job = _job_label(result)
    if recovered:
        text = f"{origin}: {job} succeeded again after a failure (run {result.run_id})"
    elif result.outcome == "success":
        text = f"{origin}: {job} succeeded (run {result.run_id})"
    else:
        text = f"{origin}: {job} {VERBS.get(result.outcome, 'failed')}"
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


def notify_job_end(config, result, *, metrics=None, log=None) -> bool:
    """Remember how `result` ended and notify the team if it failed or recovered, or if it
    overwrote a protected database (a restore is announced however it ended).

    Returns True when a channel delivered. Never raises: a notification
    must not turn a finished job into a failed one.
    """
    log = log or get_logger()
    try:
        previous = remember(result.job, result.outcome)
        failed = result.outcome in FAILED
        recovered = result.outcome == "success" and previous in FAILED
        protected = bool(getattr(result, "confirmation", None)) and result.outcome != "skipped"
        notes = evidence_lines(result)
        if not (failed or recovered or protected or notes):
            return False
        space = getattr(config, "space", None)
        payload = build_payload(result, recovered=recovered, space=space, notes=notes)
        subject = build_subject(result, recovered=recovered, space=space)
        return deliver(config, payload, subject, metrics=metrics, log=log)
    except Exception:  # noqa: BLE001 - the notification is best effort by design
        log.exception("notify.crashed")
        _count(metrics, "failed", "webhook")
        return False


class _Attempt(threading.Thread):
    """One channel's delivery on its own thread: what it returned, or what it raised."""

    def __init__(self, channel: str, send) -> None:
        super().__init__(name=f"notify-{channel}", daemon=True)
        self.channel, self.send = channel, send
        self.status = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.status = self.send()
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
            self.error = exc


def channels(config, payload: dict, subject: str, deadline: float) -> list[_Attempt]:
    """The deliveries `config` asks for: the webhook and the email, each when configured."""
    found = []
    url = getattr(config, "webhook_url", None)
    if url:
        egress = getattr(config, "egress", None) or Egress()
        found.append(_Attempt("webhook", lambda: post_json(url, payload, egress=egress, deadline=deadline)))
    relay = getattr(config, "mail", None)
    if relay is not None:
        found.append(_Attempt("email", lambda: send_mail(relay, build_message(payload, subject, relay),
                                                          deadline=deadline)))
    return found


def deliver(config, payload: dict, subject: str, *, metrics=None, log=None) -> bool:
    """Send `payload` through every configured channel at once; wait at most TIMEOUT_SECONDS
    for all of them; log and count each. True when at least one delivered."""
    log = log or get_logger()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    attempts = channels(config, payload, subject, deadline)
    for attempt in attempts:
        attempt.start()
    delivered = False
    for attempt in attempts:
        # A little past the deadline, so that a channel's own timeout is reported as it is.
        attempt.join(max(0.0, deadline + 0.25 - time.monotonic()))
        if attempt.is_alive():  # left to end on its own; its late result is not counted
            error = DeliveryError("timeout", f"no delivery within {TIMEOUT_SECONDS:g} s")
        else:
            error = attempt.error
        if error is None:
            log.info("notify.sent", channel=attempt.channel, notified_job=payload.get("job"),
                     outcome=payload.get("outcome"), recovered=payload.get("recovered", False),
                     status=attempt.status)
            _count(metrics, "sent", attempt.channel)
            delivered = True
        elif isinstance(error, DeliveryError):
            log.warning("notify.failed", channel=attempt.channel, notified_job=payload.get("job"),
                        reason=scrub(error.reason), detail=scrub(error.detail), hint=scrub(error.hint))
            _count(metrics, "failed", attempt.channel)
        else:
            log.error("notify.crashed", channel=attempt.channel, exc_info=error)
            _count(metrics, "failed", attempt.channel)
    return delivered


def _count(metrics, outcome: str, channel: str) -> None:
    if metrics is not None and hasattr(metrics, "notification_finished"):
        metrics.notification_finished(outcome, channel)
