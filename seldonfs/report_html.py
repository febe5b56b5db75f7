"""The store report (report.py) as one self-contained HTML page.

No scripts, no external style sheets, fonts or images: the page is read
where there may be no network. Charts are inline SVG, each with a <title>
and <desc> (role="img"), and each is followed by a table with the same
numbers, so a screen reader, a text browser or a printout loses nothing.
Every string from the store (names, reasons, MIME types) goes through
html.escape.
"""

from __future__ import annotations

import math
from datetime import datetime
from html import escape
from typing import Any

from .report import TOP_FILES, human, human_age, pattern_source

COLORS = ("#3366aa", "#dd7722", "#229955", "#aa3344", "#7755aa", "#887733", "#22a0b0", "#cc5599")
NUM = ' class="n"'  # a numeric cell: right-aligned
MAX_ROWS = 200  # table rows of the permission problems shown on the page

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #222; background: #fff; }
main { max-width: 60rem; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .92rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; white-space: nowrap; }
th, td { padding: .2rem .7rem; border-bottom: 1px solid #e3e3e3; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.sub td:first-child { padding-left: 1.8rem; }
svg { display: block; max-width: 100%; height: auto; margin: .5rem 0; }
svg text { font: 12px system-ui, sans-serif; fill: #222; }
.totals { display: flex; flex-wrap: wrap; gap: .6rem 2rem; padding: 0; list-style: none; }
.totals b { display: block; font-size: 1.3rem; }
.none { color: #555; font-style: italic; }
"""


def bar_chart(cid: str, title: str, rows: list[tuple[str, float, str]], color: str = COLORS[0]) -> str:
    """A horizontal bar chart: one (label, value, value as text) per bar."""
    if not rows:
        return ""
    width, label_w, value_w, bar_h, gap = 720, 230, 110, 18, 6
    span = width - label_w - value_w
    top = max(v for _, v, _ in rows) or 1
    height = len(rows) * (bar_h + gap) + gap
    desc = "; ".join(f"{label}: {text}" for label, _, text in rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" aria-labelledby="{cid}-t {cid}-d">',
        f'<title id="{cid}-t">{escape(title)}</title>',
        f'<desc id="{cid}-d">{escape(desc)}</desc>',
    ]
    for i, (label, value, text) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        w = max(1.0, span * value / top) if value else 0.0
        short = label if len(label) <= 34 else label[:16] + "…" + label[-16:]
        parts.append(
            f'<g><title>{escape(label)}: {escape(text)}</title>'
            f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{escape(short)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 13}">{escape(text)}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def pie_chart(cid: str, title: str, rows: list[tuple[str, float, str]], colors: dict[str, str] | None = None) -> str:
    """A pie with a legend: one (label, value, value as text) per slice;
    `colors` fixes a slice's colour by label."""
    rows = [r for r in rows if r[1] > 0]
    if not rows:
        return ""
    total = sum(v for _, v, _ in rows)
    cx, cy, r = 110, 110, 100
    height = max(220, 30 + 24 * len(rows))
    desc = "; ".join(f"{label}: {text} ({v / total:.0%})" for label, v, text in rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 720 {height}" width="720" '
        f'height="{height}" aria-labelledby="{cid}-t {cid}-d">',
        f'<title id="{cid}-t">{escape(title)}</title>', f'<desc id="{cid}-d">{escape(desc)}</desc>',
    ]
    angle = -math.pi / 2
    for i, (label, v, text) in enumerate(rows):
        color = (colors or {}).get(label, COLORS[i % len(COLORS)])
        tip = f"<title>{escape(label)}: {escape(text)} ({v / total:.0%})</title>"
        if v == total:
            parts.append(f'<g>{tip}<circle cx="{cx}" cy="{cy}" r="{r}" fill="{color}"/></g>')
        else:
            end = angle + 2 * math.pi * v / total
            x0, y0 = cx + r * math.cos(angle), cy + r * math.sin(angle)
            x1, y1 = cx + r * math.cos(end), cy + r * math.sin(end)
            large = 1 if end - angle > math.pi else 0
            parts.append(
                f'<g>{tip}<path d="M{cx},{cy} L{x0:.2f},{y0:.2f} A{r},{r} 0 {large} 1 {x1:.2f},{y1:.2f} Z" '
                f'fill="{color}" stroke="#fff" stroke-width="1"/></g>'
            )
            angle = end
        y = 20 + 24 * i
        parts.append(
            f'<rect x="250" y="{y}" width="14" height="14" fill="{color}"/>'
            f'<text x="272" y="{y + 12}">{escape(label)}: {escape(text)} ({v / total:.0%})</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def html_table(caption: str, headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset(),
               row_class: list[str] | None = None) -> str:
    if not rows:
        return f'<p class="none">{escape(caption)}: none.</p>'
    head = "".join(f'<th scope="col"{NUM if i in numeric else ""}>{escape(h)}</th>' for i, h in enumerate(headers))
    body = []
    for j, row in enumerate(rows):
        cls = f' class="{row_class[j]}"' if row_class and row_class[j] else ""
        cells = "".join(f'<td{NUM if i in numeric else ""}>{escape(str(c))}</td>' for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return (f"<table><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _section(sid: str, title: str, *parts: str) -> str:
    return f'<section aria-labelledby="{sid}"><h2 id="{sid}">{escape(title)}</h2>\n' + "\n".join(p for p in parts if p) + "</section>"


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def render_html(rep: dict[str, Any]) -> str:
    s, t = rep["store"], rep["totals"]
    title = f"SeldonFS report: {s.get('root', '')}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">Generated {escape(rep["generated"])}; profile {escape(s["profile"])}; '
        f'{"encrypted" if s.get("encrypted") else "plain"} store'
        + (f'; mounted at {escape(s["mountpoint"])}' if s.get("mountpoint") else "")
        + f'; owner {escape(rep["permissions"]["owner"]["name"])}.</p>',
        '<ul class="totals">'
        + "".join(f"<li><b>{escape(v)}</b> {escape(k)}</li>" for k, v in (
            ("files", f"{t['files']:,}"), ("bytes", human(t["bytes"])), ("stored", human(t["stored_bytes"])),
            ("directories", f"{t['dirs']:,}"), ("symlinks", f"{t['symlinks']:,}"),
            ("permission problems", f"{rep['permissions']['count']:,}"),
            ("in quarantine", f"{rep['classification']['backlog']['files']:,}"),
            ("janitor actions due", f"{rep['janitor']['actions']:,}"),
            ("distributions open", f"{rep['distributions']['open']:,}"),
            ("distributions expired", f"{rep['distributions']['expired']:,}"),
        ))
        + "</ul>",
        _folders(rep), _largest(rep), _ages(rep), _extensions(rep), _permissions(rep), _classification(rep),
        _janitor(rep),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def _folders(rep: dict[str, Any]) -> str:
    top = [r for r in rep["folders"] if r["depth"] == 1]
    chart = bar_chart("folders", "Bytes by top-level folder",
                      [(r["folder"], r["bytes"], f"{human(r['bytes'])}, {_pct(r['share'])}") for r in top])
    tab = html_table("Usage by folder (subfolders indented)", ["folder", "files", "bytes", "share"],
                     [[r["folder"], f"{r['files']:,}", human(r["bytes"]), _pct(r["share"])] for r in rep["folders"]],
                     {1, 2, 3}, ["sub" if r["depth"] == 2 else "" for r in rep["folders"]])
    return _section("h-folders", "Usage by folder", chart, tab)


def _largest(rep: dict[str, Any]) -> str:
    rows = [[human(r["bytes"]), datetime.fromtimestamp(r["mtime"]).strftime("%Y-%m-%d %H:%M"), r["path"]]
            for r in rep["largest"]]
    return _section("h-largest", f"Largest files (top {TOP_FILES})",
                    html_table("Largest files", ["size", "modified", "path"], rows, {0}))


def _ages(rep: dict[str, Any]) -> str:
    chart = bar_chart("ages", "Files by age (modification time)",
                      [(r["bucket"], r["files"], f"{r['files']:,} files, {human(r['bytes'])}") for r in rep["ages"]],
                      COLORS[2])
    tab = html_table("Files by age", ["age", "files", "bytes"],
                     [[r["bucket"], f"{r['files']:,}", human(r["bytes"])] for r in rep["ages"]], {1, 2})
    return _section("h-ages", "Age distribution", chart, tab)


def _extensions(rep: dict[str, Any]) -> str:
    chart = bar_chart("extensions", "Bytes by file extension",
                      [(r["extension"], r["bytes"], f"{human(r['bytes'])}, {r['files']:,} files")
                       for r in rep["extensions"]], COLORS[1])
    tab = html_table("Extensions", ["extension", "files", "bytes"],
                     [[r["extension"], f"{r['files']:,}", human(r["bytes"])] for r in rep["extensions"]], {1, 2})
    pat = html_table("Names matching the configuration's patterns", ["pattern", "files", "bytes", "from"],
                     [[r["pattern"], f"{r['files']:,}", human(r["bytes"]), pattern_source(r)] for r in rep["patterns"]],
                     {1, 2})
    return _section("h-extensions", "Extensions and patterns", chart, tab, pat)


def _permissions(rep: dict[str, Any]) -> str:
    p = rep["permissions"]
    if not p["count"]:
        return _section("h-permissions", "Permission problems",
                        '<p class="none">None: every entry is the store owner\'s, readable by it, not world-writable; '
                        "no symlinks.</p>")
    summary = html_table("Permission problems by kind", ["problem", "entries"],
                         [[r["problem"], f"{r['entries']:,}"] for r in p["by_problem"]], {1})
    rows = [[r["mode"], r["owner"], r["path"], r["problem"]] for r in p["entries"][:MAX_ROWS]]
    more = (f'<p class="none">{p["count"] - MAX_ROWS:,} more: seldonfs report --json lists them all.</p>'
            if p["count"] > MAX_ROWS else "")
    return _section("h-permissions", "Permission problems", summary,
                    html_table("Entries of the backing store", ["mode", "owner", "path", "problem"], rows), more)


def _classification(rep: dict[str, Any]) -> str:
    c = rep["classification"]
    pie = pie_chart("verdicts", f"Validation verdicts of {c['commits']:,} commits",
                    [(r["verdict"], r["files"], f"{r['files']:,} files") for r in c["by_verdict"]],
                    {"ok": COLORS[2], "quarantined": COLORS[3]})
    mimes = bar_chart("mimes", "Files by detected type (libmagic)",
                      [(r["mime"], r["files"], f"{r['files']:,} files, {human(r['bytes'])}") for r in c["by_mime"]],
                      COLORS[4])
    tab = html_table("Files by detected type", ["type", "files", "bytes", "quarantined"],
                     [[r["mime"], f"{r['files']:,}", human(r["bytes"]), f"{r['quarantined']:,}"] for r in c["by_mime"]],
                     {1, 2, 3})
    reasons = html_table("Why files were quarantined", ["reason", "files"],
                         [[r["reason"], f"{r['files']:,}"] for r in c["quarantine_reasons"]], {1})
    b = c["backlog"]
    backlog = (f"<p>Quarantine backlog: <b>{b['files']:,}</b> files"
               + (f", the oldest {escape(human_age(b['oldest_age_s']))} old" if b["oldest_age_s"] is not None else "")
               + ".</p>")
    by_reason = html_table("Quarantine backlog by reason", ["reason", "files"],
                           [[r["reason"], f"{r['files']:,}"] for r in b["by_reason"]], {1}) if b["files"] else ""
    if not c["commits"]:
        pie = '<p class="none">No file has been checked at commit yet.</p>'
    return _section("h-classification", "Data classification", pie, mimes, tab, reasons, backlog, by_reason)


def _janitor(rep: dict[str, Any]) -> str:
    j = rep["janitor"]
    if not j["actions"]:
        return _section("h-janitor", "Janitor: due now", '<p class="none">Nothing is due.</p>')
    chart = bar_chart("janitor", "Janitor actions due now, by kind",
                      [(r["kind"], r["entries"], f"{r['entries']:,} entries, {human(r['bytes'])}") for r in j["by_kind"]],
                      COLORS[3])
    tab = html_table("Due now by rule (a dry run: nothing was changed)", ["rule", "action", "entries", "bytes"],
                     [[r["rule"], r["kind"], f"{r['entries']:,}", human(r["bytes"])] for r in j["by_rule"]], {2, 3})
    first = html_table(f"Actions due (the first {len(j['first'])} of {j['actions']:,})", ["action", "path", "bytes", "why"],
                       [[r["kind"], r["path"], human(r["bytes"]), r["reason"]] for r in j["first"]], {2})
    return _section("h-janitor", "Janitor: due now", chart, tab, first)
