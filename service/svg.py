"""Small inline SVG charts for the contingency report, written by hand.

Two charts, each a few dozen elements: a timeline (one lane per kind of backup,
a bar per backup whose width is its duration and whose height is its size, and
a lane of the slots that were missed, failed or skipped) and a line chart (the
database's growth). A charting library would add a dependency to the droplet
and, for most, JavaScript or a network fetch to the page; these need neither,
print as they show, and stay readable without colour (every mark has a title,
lanes are labelled). Pure: data in, markup out; every text is escaped.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape

WIDTH, LEFT, RIGHT = 900, 110, 20
KIND_COLOURS = {"scheduled": "#1f77b4", "daily": "#2ca02c", "initial": "#9467bd", "deploy": "#8c564b",
                "on-demand": "#17becf", "pre-restore": "#ff7f0e", "other": "#7f7f7f"}
PROBLEM_COLOURS = {"missed": "#d62728", "failed": "#d62728", "aborted": "#d62728", "skipped": "#e6a700"}


def _x(when: datetime, since: datetime, until: datetime) -> float:
    span = max((until - since).total_seconds(), 1.0)
    return LEFT + (WIDTH - LEFT - RIGHT) * min(max((when - since).total_seconds() / span, 0.0), 1.0)


def _ticks(since: datetime, until: datetime, tz, count: int = 6) -> list[datetime]:
    """Local midnights spread over the period (at most `count`)."""
    days = max((until - since).days, 1)
    step = max(days // count, 1)
    first = since.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    ticks, day = [], first
    while day < until:
        ticks.append(day)
        day = (day + timedelta(days=step, hours=2)).replace(hour=0)  # a DST day is 23 or 25 hours long
    return ticks


def _axis(since, until, tz, top: int, bottom: int) -> list[str]:
    parts = [f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" stroke="#555"/>']
    for tick in _ticks(since, until, tz):
        x = _x(tick, since, until)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 14}" font-size="11" text-anchor="middle">'
                     f'{escape(tick.strftime("%b %d"))}</text>')
    return parts


def timeline(points: list[dict], problems: list[tuple[datetime, str, str]], since, until, tz,
             label) -> str:
    """Backups by kind over [since, until); `problems` are (time, status, reason) of slots not kept;
    `label(point)` is a backup's title text."""
    kinds = sorted({p["kind"] for p in points}) or ["scheduled"]
    lane, top = 34, 10
    height = top + lane * (len(kinds) + 1) + 24
    biggest = max((p["bytes"] for p in points), default=1) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="100%" '
             f'role="img" aria-label="timeline of the backups">']
    bottom = top + lane * (len(kinds) + 1)
    parts += _axis(since, until, tz, top, bottom)
    for i, kind in enumerate(kinds):
        base = top + lane * (i + 1) - 4
        parts.append(f'<text x="{LEFT - 8}" y="{base - 8}" font-size="12" text-anchor="end">{escape(kind)}</text>')
        for p in (p for p in points if p["kind"] == kind):
            x = _x(p["at"], since, until)
            width = max(_x(p["at"] + timedelta(seconds=p["seconds"]), since, until) - x, 2.0)
            h = max(4.0, (lane - 10) * p["bytes"] / biggest)
            colour = KIND_COLOURS.get(kind, KIND_COLOURS["other"])
            outline = ' stroke="#d62728" stroke-width="2"' if p.get("flagged") else ""
            parts.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{width:.1f}" height="{h:.1f}" '
                         f'fill="{colour}"{outline}><title>{escape(label(p))}</title></rect>')
    base = bottom - 4
    parts.append(f'<text x="{LEFT - 8}" y="{base - 8}" font-size="12" text-anchor="end">not kept</text>')
    for when, status, reason in problems:
        x = _x(when, since, until)
        colour = PROBLEM_COLOURS.get(status, "#d62728")
        parts.append(f'<path d="M{x:.1f},{base - 20} l5,9 l-10,0 z" fill="{colour}">'
                     f'<title>{escape(f"{when:%Y-%m-%d %H:%M} {status}: {reason}")}</title></path>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(series: list[tuple[datetime, float]], since, until, tz, *, label, y_format,
               ceiling: float | None = None) -> str:
    """One line over [since, until); `ceiling` draws a dashed limit (a database's storage)."""
    height, top, bottom = 200, 12, 170
    values = [v for _, v in series] + ([ceiling] if ceiling else [])
    high = max(values, default=1.0) * 1.05 or 1.0
    low = min((v for _, v in series), default=0.0) * 0.95 if not ceiling else 0.0

    def y(v: float) -> float:
        return bottom - (bottom - top) * (v - low) / ((high - low) or 1.0)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
             f'aria-label="{escape(label)}">']
    parts += _axis(since, until, tz, top, bottom)
    for v in (low, (low + high) / 2, high):
        parts.append(f'<text x="{LEFT - 8}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">'
                     f'{escape(y_format(v))}</text>')
    if ceiling:
        parts.append(f'<line x1="{LEFT}" y1="{y(ceiling):.1f}" x2="{WIDTH - RIGHT}" y2="{y(ceiling):.1f}" '
                     f'stroke="#d62728" stroke-dasharray="6 4"><title>storage {escape(y_format(ceiling))}'
                     f'</title></line>')
    coords = " ".join(f"{_x(t, since, until):.1f},{y(v):.1f}" for t, v in series)
    if coords:
        parts.append(f'<polyline points="{coords}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    for t, v in series:
        parts.append(f'<circle cx="{_x(t, since, until):.1f}" cy="{y(v):.1f}" r="2.5" fill="#1f77b4">'
                     f'<title>{escape(f"{t:%Y-%m-%d %H:%M} {y_format(v)}")}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)
