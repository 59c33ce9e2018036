"""The contingency report as one self-contained HTML file.

Inline styles and inline SVG (service.svg), no script, nothing fetched: it opens
from a file, a mail attachment or the bucket the same way, and prints (or saves
as PDF from a browser) with each section kept whole. Rendering only: every
figure comes computed in an evidence.Report. Every text is escaped.
"""

from __future__ import annotations

from html import escape

from service import svg
from service.report_text import fmt_bytes, fmt_duration, fmt_time, gap_text, headline, period_text, promise_text

STYLE = """
body{font-family:"DejaVu Sans",Arial,sans-serif;color:#1b1b1b;max-width:960px;margin:24px auto;padding:0 16px;
font-size:14px;line-height:1.4}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;border-bottom:2px solid #1f4e79;padding-bottom:3px;margin-top:28px}
.sub{color:#555;margin:0 0 14px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(215px,1fr));gap:8px}
.card{border:1px solid #ccc;border-radius:4px;padding:7px 9px}.card b{display:block;font-size:12px;color:#555;
font-weight:normal}.card span{font-size:15px;font-weight:bold}
.bad span{color:#b00020}
table{border-collapse:collapse;width:100%;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}th{background:#eef2f7}
td.n{text-align:right;white-space:nowrap}.bad-row td{background:#fdecea}.muted{color:#666}
section{break-inside:avoid-page}
@media print{body{margin:0;max-width:none;font-size:11px}h2{break-after:avoid}.card{break-inside:avoid}}
"""


def _table(headers: list[str], rows: list[list], *, numeric=(), bad=None) -> str:
    if not rows:
        return '<p class="muted">None in this period.</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="bad-row"' if bad and bad(i) else ""
        cells = "".join(f'<td class="n">{escape(str(c))}</td>' if j in numeric else f"<td>{escape(str(c))}</td>"
                        for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{''.join(parts)}</section>"


def _p(text: str) -> str:
    return f"<p>{escape(text)}</p>"


def render_html(report) -> str:
    h = report.history
    tz = h.tz
    cards = []
    bad_labels = {"Scheduled slots kept": bool(report.missed_or_failed),
                  "Tables flagged shrunk": any(not f["acknowledged"] for f in report.flagged)}
    for label, value in headline(report):
        cls = "card bad" if bad_labels.get(label) else "card"
        cards.append(f'<div class="{cls}"><b>{escape(label)}</b><span>{escape(value)}</span></div>')
    title = f"Contingency report: backups, drills and restores{f' of {h.space}' if h.space else ''}"
    out = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
           f"<style>{STYLE}</style></head><body>",
           f"<h1>{escape(title)}</h1>",
           f'<p class="sub">{escape(period_text(report))}. Made {escape(fmt_time(h.now, tz))} by fac-backup from '
           f"the backups bucket {escape(h.bucket or '')}: the run journal, the backups' manifests and the drills' "
           "records. NIST SP 800-53 CP-9, CP-9(1), CP-4, CP-10.</p>",
           f'<div class="cards">{"".join(cards)}</div>']
    out.append(_recovery(report, tz))
    out.append(_backups(report, tz))
    out.append(_drills(report, tz))
    out.append(_restores(report, tz))
    out.append(_media(report))
    out.append(_integrity(report, tz))
    out.append(_section("Failed and refused runs (every job)", _table(
        ["when", "job", "outcome", "trigger", "error", "hint"],
        [[fmt_time(f["at"], tz), f["job"], f["outcome"], f["trigger"], f["error"], f["hint"]]
         for f in report.failures])))
    notes = "".join(f"<li>{escape(n)}</li>" for n in (*report.notes, f"Journal: {report.journal_reach}."))
    out.append(_section("About these figures", f"<ul>{notes}</ul>"))
    out.append("</body></html>")
    return "".join(out)


def _recovery(report, tz) -> str:
    h = report.history
    problems = [(s.at, s.status, s.reason) for s in report.missed_or_failed]
    chart = svg.timeline(list(report.points), problems, h.since, h.until, tz,
                         lambda p: f"{p['id']} ({p['kind']}): {fmt_bytes(p['bytes'])}, {fmt_duration(p['seconds'])}"
                                   f", {p['rows']:,} rows" + (" - ROWS DROPPED" if p["flagged"] else ""))
    gaps = _table(["", "longest gap", "the schedule allows"],
                  [["overall", gap_text(report.rpo, tz), promise_text(report.rpo)],
                   ["in scheduled hours", gap_text(report.rpo_in_hours, tz), promise_text(report.rpo_in_hours)]])
    slots = _table(["slot", "job", "status", "reason"],
                   [[fmt_time(s.at, tz), s.job, s.status, s.reason] for s in report.missed_or_failed])
    return _section("Recovery point achieved", gaps, "<h3>Slots not kept</h3>", slots,
                    "<h3>Timeline of the backups</h3>", chart,
                    '<p class="muted">One lane per kind; a bar\'s width is the backup\'s duration and its height its '
                    "size; a red outline marks a backup that found rows dropped; triangles mark slots not kept.</p>")


def _backups(report, tz) -> str:
    h = report.history
    kinds = _table(["kind", "count", "size (last)", "size (min to max)", "duration (median)", "duration (max)",
                    "tables", "rows (last)"],
                   [[k.kind, k.count, fmt_bytes(k.bytes_last), f"{fmt_bytes(k.bytes_min)} to {fmt_bytes(k.bytes_max)}",
                     fmt_duration(k.seconds_median), fmt_duration(k.seconds_max), k.tables_last, f"{k.rows_last:,}"]
                    for k in report.kinds], numeric=(1, 6, 7))
    sized = [(p["at"], float(p["database_bytes"])) for p in report.points if p["database_bytes"] > 0]
    series = sized or [(p["at"], float(p["bytes"])) for p in report.points]
    what = "database size (pg_database_size)" if sized else "backup size (dump bytes)"
    chart = svg.line_chart(series, h.since, h.until, tz, label=f"growth: {what}", y_format=fmt_bytes) \
        if series else ""
    growth = (f"Growth over the period: {fmt_bytes(report.growth_per_day)} a day ({what})."
              if report.growth_per_day is not None else "Growth: too few backups recording the database's size.")
    rows = [[p.binding, f"{p.storage_gb:g} GB" if p.storage_gb else "unknown",
             fmt_time(p.reaches, tz) if p.reaches else "-", p.note] for p in report.projections]
    return _section("Backups", kinds, f"<h3>Growth: {escape(what)}</h3>", chart, _p(growth),
                    "<h3>When the database reaches its storage</h3>",
                    _table(["database", "storage", "reached around", "note"], rows))


def _drills(report, tz) -> str:
    rows = [[fmt_time(d["at"], tz), d["backup_id"], d["outcome"], fmt_duration(d["restore_seconds"]),
             fmt_duration(d["seconds"]), fmt_bytes(d["bytes"]), f"{d['rows']:,}" if d["rows"] else "-",
             d["error"] or d["source"]] for d in report.drills]
    last = report.last_proved
    since = (f"Days since the last proved backup: {last['days']:.1f} ({last['backup_id']}, taken "
             f"{fmt_time(last['backup_started_at'], tz)}).") if last else "No backup has been proved restorable."
    return _section("Drills (restore tests)", _table(
        ["when", "backup proved", "result", "restore (rolled back)", "whole drill", "bytes", "rows", "note"], rows,
        numeric=(3, 4, 5, 6), bad=lambda i: report.drills[i]["outcome"] != "success"), _p(since))


def _restores(report, tz) -> str:
    rows = [[fmt_time(r["at"], tz), r["job"], r["source"], r["space"] or "-", r["binding"], r["confirmation"],
             r["pre_restore_backup"] or "-", fmt_duration(r["seconds"]), r["outcome"], r["error"] or r["origin"]]
            for r in report.restores]
    refused = _p(f"{report.refused_restores} restore request(s) were refused before anything was touched "
                 "(missing or wrong confirmation, bad arguments).") if report.refused_restores else ""
    return _section("Restores performed", _table(
        ["when", "job", "backup", "space", "binding", "confirmation", "pre-restore backup", "duration", "outcome",
         "note"], rows, bad=lambda i: report.restores[i]["outcome"] not in ("success", "not journaled")), refused)


def _media(report) -> str:
    m = report.media
    newest = m["newest"]
    rows = [["media syncs in the period", m["syncs"]], ["objects copied", f"{m['copied']:,}"],
            ["bytes copied", fmt_bytes(m["copied_bytes"])], ["replaced copies kept", f"{m['kept']:,}"],
            ["versions kept now", f"{m['versions'].get('objects', 0):,} ({fmt_bytes(m['versions'].get('bytes', 0))})"]]
    if newest.get("objects") is not None:
        rows.append([f"a restore of {newest['backup_id']} brings back",
                     f"{newest['objects']:,} objects, {fmt_bytes(newest['bytes'])} "
                     f"({newest['from_versions']:,} from kept versions), as of {newest['moment']}"])
    elif newest.get("error"):
        rows.append(["a restore of the newest backup", f"could not be computed: {newest['error']}"])
    return _section("Media", _table(["", ""], rows))


def _integrity(report, tz) -> str:
    h = report.history
    rows = []
    for f in report.flagged:
        tables = "; ".join(f"{t['table']}: {t['before']:,} -> {t['after'] if t['after'] is not None else 'gone'} "
                           f"(-{t['percent']}%)" for t in f["tables"])
        ack = f["acknowledged"]
        state = f"acknowledged {ack.get('acknowledged_at', '')} {ack.get('note', '')}".strip() if ack else \
            "NOT acknowledged: its baseline is kept"
        keep = ("kept" if f["baseline_kept"] else "gone") + (
            f", the bucket deletes it {fmt_time(f['baseline_expires'], tz)}" if f.get("baseline_expires") else "")
        note = " (baseline taken before a restore)" if f["baseline_before_restore"] else ""
        rows.append([fmt_time(f["at"], tz), f["backup_id"], f"{f['baseline']} ({keep}){note}", tables, state])
    purges = [[fmt_time(p["at"], tz), p["backup_id"], "; ".join(f"{t['table']}: {t['before']:,} -> {t['after']:,}"
                                                                 for t in p["allowed"] if t["after"] is not None)]
              for p in report.purges]
    intro = _p(f"{report.compared} backup(s) in the period compared each table's rows with the backup before them; "
               f"{len(report.flagged)} found tables shrunk beyond the threshold.")
    return _section("The data itself: tables that shrank", intro, _table(
        ["backup", "id", "baseline (the newest backup before the drop)", "tables", "state"], rows,
        bad=lambda i: not report.flagged[i]["acknowledged"]),
        "<h3>Shrinks of tables allowed to shrink (sessions, access grants)</h3>",
        _table(["backup", "id", "tables"], purges), _p(f"Bucket expiry: {h.bucket_expiry_text}."))
