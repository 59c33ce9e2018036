"""The contingency report: `python -m service report` and the daemon's monthly job.

Both read the history of a period from the backups bucket (service.history),
compute every figure (service.evidence) and render one self-contained HTML
file (service.report_html) and a plain-text summary (service.report_text).
The command writes the file where `--out` says (and, with `--upload`, into
the bucket beside the journal); the job `contingency_report` (scheduled by
FAC_BACKUP_REPORT_CRON, the 1st of each month by default) reports the previous
calendar month, stores the file under `backups/journal/reports/`, and its
notification says where.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from service import layout
from service.errors import ServiceError, UsageError
from service.evidence import build_report
from service.history import gather_history
from service.report_html import render_html
from service.report_text import render_text

DEFAULT_DAYS = 30


def parse_moment(text: str, tz, *, end: bool = False) -> datetime:
    """A day (`2026-10-31`: its start, or with `end` the start of the next day) or an ISO time."""
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").date()
            return datetime.combine(day + timedelta(days=1 if end else 0), time(0), tzinfo=tz)
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"{text!r} is not a date", hint="give YYYY-MM-DD or an ISO time such as "
                                                        "2026-10-01T00:00-07:00") from exc
    return when if when.tzinfo else when.replace(tzinfo=tz)


def previous_month(now: datetime, tz) -> tuple[datetime, datetime]:
    """[first day of last month, first day of this month), local midnights."""
    first = now.astimezone(tz).date().replace(day=1)
    previous = (first - timedelta(days=1)).replace(day=1)
    return datetime.combine(previous, time(0), tzinfo=tz), datetime.combine(first, time(0), tzinfo=tz)


def choose_period(since: str | None, until: str | None, now: datetime, tz) -> tuple[datetime, datetime]:
    end = parse_moment(until, tz, end=True) if until else now
    start = parse_moment(since, tz) if since else end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise UsageError(f"the period is empty: {start.isoformat()} is not before {end.isoformat()}",
                         hint="--since must come before --until")
    return start, end


def make_report(config, store, since: datetime, until: datetime, now: datetime | None = None, log=None):
    """(Report, html) of [since, until); the text summary is rendered where it is printed."""
    now = now or datetime.now(config.settings.timezone)
    report = build_report(gather_history(config, store, since, until, now, log=log))
    return report, render_html(report)


def upload_report(store, report, html: str) -> str:
    """Store the HTML beside the journal; return its key."""
    h = report.history
    key = layout.report_key(h.since.astimezone(h.tz), (h.until - timedelta(microseconds=1)).astimezone(h.tz),
                            datetime.now(UTC))
    store.put_bytes(key, html.encode("utf-8"), content_type="text/html; charset=utf-8")
    return key


def report_figures(report) -> dict:
    counts = report.slot_counts
    return {"since": report.history.since.isoformat(), "until": report.history.until.isoformat(),
            "slots": sum(counts.values()), "slots_kept": counts.get("ok", 0),
            "slots_not_kept": len(report.missed_or_failed), "backups": len(report.points),
            "drills": len(report.drills), "restores": len(report.restores),
            "flagged_backups": len(report.flagged),
            "flagged_unacknowledged": sum(1 for f in report.flagged if not f["acknowledged"]),
            "rpo_seconds": report.rpo.seconds, "rpo_in_hours_seconds": report.rpo_in_hours.seconds}


def report_step(ctx) -> dict:
    """The contingency_report step: the previous month (or SINCE UNTIL), stored in the bucket."""
    tz = ctx.config.settings.timezone
    now = ctx.now()
    args = (*ctx.args, None)
    since, until = choose_period(args[0], args[1], now, tz) if ctx.args else previous_month(now, tz)
    store = ctx.backups_store()
    report, html = make_report(ctx.config, store, since, until, now, ctx.log)
    key = upload_report(store, report, html)
    figures = {**report_figures(report), "report_key": key, "report_url": f"s3://{store.bucket}/{key}",
               "bytes": len(html.encode("utf-8"))}
    ctx.log.info("report.stored", key=key, **{k: v for k, v in figures.items() if k != "report_key"})
    return figures


def report_command(ns, config, store) -> int:
    """`python -m service report`: write the file, print the summary, optionally upload."""
    tz = config.settings.timezone
    since, until = choose_period(ns.since, ns.until, datetime.now(tz), tz)
    report, html = make_report(config, store, since, until)
    out = Path(ns.out or f"contingency-report-{since:%Y%m%d}-{(until - timedelta(microseconds=1)):%Y%m%d}.html")
    try:
        out.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise ServiceError(f"cannot write the report to {out}: {exc.strerror}",
                           hint="choose another place with --out") from exc
    where = str(out)
    if ns.upload:
        key = upload_report(store, report, html)
        where += f" and s3://{store.bucket}/{key}"
    sys.stdout.write(render_text(report, where))
    return 0
