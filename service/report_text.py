"""The contingency report's plain-text summary, and the formats both renderings share.

Rendering only: every figure comes computed in an evidence.Report.
"""

from __future__ import annotations

from datetime import datetime


def fmt_bytes(n: float | None) -> str:
    """Bytes in the units the storage settings and `show` count in: a GB is 1024^3 bytes (space.GIB)."""
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes:02d} min"
    return f"{seconds / 86400:.1f} days"


def fmt_time(when: datetime | None, tz=None) -> str:
    if when is None:
        return "-"
    return (when.astimezone(tz) if tz else when).strftime("%Y-%m-%d %H:%M %Z").strip()


def period_text(report) -> str:
    h = report.history
    return f"{fmt_time(h.since, h.tz)} to {fmt_time(h.until, h.tz)}"


def gap_text(gap, tz) -> str:
    if gap.seconds is None:
        return "no backup to measure from"
    text = f"{fmt_duration(gap.seconds)} ({fmt_time(gap.start, tz)} to {fmt_time(gap.end, tz)}"
    text += ", still open at the end of the period)" if gap.open_end else ")"
    return text


def promise_text(gap) -> str:
    return fmt_duration(gap.promise_seconds) if gap.promise_seconds is not None else "no schedule"


def headline(report) -> list[tuple[str, str]]:
    """(label, value) pairs of the first screen, in order; the text summary prints the same."""
    h, counts = report.history, report.slot_counts
    due = sum(counts.values())
    not_kept = ", ".join(f"{counts[s]} {s}" for s in ("missed", "failed", "aborted", "skipped") if counts.get(s))
    flagged_open = sum(1 for f in report.flagged if not f["acknowledged"])
    last = report.last_proved
    rto = next((d for d in reversed(report.drills) if d["outcome"] == "success" and d["restore_seconds"]), None)
    return [
        ("Scheduled slots kept", f"{counts.get('ok', 0)} of {due}" + (f" ({not_kept})" if not_kept else "")),
        ("Longest gap between backups", f"{fmt_duration(report.rpo.seconds)} (schedule allows "
                                        f"{promise_text(report.rpo)})"),
        ("Longest gap in scheduled hours", f"{fmt_duration(report.rpo_in_hours.seconds)} (schedule allows "
                                           f"{promise_text(report.rpo_in_hours)})"),
        ("Backups made", f"{len(report.points)} ({', '.join(f'{k.count} {k.kind}' for k in report.kinds) or 'none'})"),
        ("Drills", f"{sum(1 for d in report.drills if d['outcome'] == 'success')} passed, "
                   f"{sum(1 for d in report.drills if d['outcome'] != 'success')} failed"),
        ("Last proved backup", f"{last['backup_id']}, {last['days']:.1f} days old" if last else "none"),
        ("Recovery time demonstrated", f"{fmt_duration(rto['restore_seconds'])} for {fmt_bytes(rto['bytes'])} "
                                       f"({rto['backup_id']})" if rto else "no drill restored into a database"),
        ("Restores performed", f"{len(report.restores)}" + (f" ({report.refused_restores} refused requests)"
                                                             if report.refused_restores else "")),
        ("Tables flagged shrunk", f"{len(report.flagged)} backup(s), {flagged_open} not acknowledged"
                                  if report.flagged else "none"),
        ("Space", h.space or "(not known)"),
    ]


def render_text(report, where: str = "") -> str:
    """The plain-text summary `python -m service report` prints (and the notification's detail)."""
    h = report.history
    lines = [f"fac-backup contingency report, {period_text(report)}" + (f" ({h.space})" if h.space else "")]
    width = max(len(label) for label, _ in headline(report))
    lines += [f"  {label:<{width}}  {value}" for label, value in headline(report)]
    lines.append(f"  {'Recovery point (overall)':<{width}}  {gap_text(report.rpo, h.tz)}")
    lines.append(f"  {'Recovery point (hours)':<{width}}  {gap_text(report.rpo_in_hours, h.tz)}")
    for slot in report.missed_or_failed:
        lines.append(f"  - {slot.job} {fmt_time(slot.at, h.tz)}: {slot.status}: {slot.reason}")
    for flag in report.flagged:
        tables = ", ".join(f"{t['table']} {t['before']:,} -> {t['after'] if t['after'] is not None else 'gone'}"
                           for t in flag["tables"])
        state = "acknowledged" if flag["acknowledged"] else "NOT acknowledged"
        lines.append(f"  ! {flag['backup_id']} dropped rows against {flag['baseline']}: {tables} ({state})")
    for p in report.projections:
        if p.reaches is not None:
            lines.append(f"  {p.binding} reaches its {p.storage_gb:g} GB around {p.reaches:%Y-%m-%d}"
                         + (f" ({p.note})" if p.note else ""))
        else:
            lines.append(f"  storage projection of {p.binding}: {p.note}")
    for note in report.notes:
        lines.append(f"  note: {note}")
    if where:
        lines.append(f"  report: {where}")
    return "\n".join(lines) + "\n"
