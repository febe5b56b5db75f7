"""`seldonfs top`'s frame: two snapshots of a mount's
.seldonfs-stats.json in, the lines of one screen out.

Everything here is a pure function of (snapshot_a, snapshot_b, dt, width,
height): rates are the difference of two snapshots over `dt` seconds, and
every value is looked up defensively, because the daemon writing
stats.json may be older or newer than this code: a key that is missing,
null or of the wrong type shows as "–", never as an exception. The
curses loop that draws the lines lives in `run_curses`, and only there.

A line is a list of (text, style) segments; styles are hints the terminal
maps to attributes: "" plain, "title", "head" (a section label), "dim",
"ok", "warning", "critical".
"""

from __future__ import annotations

import json
import locale
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .report import human
from .virtual import STATS_NAME

#: Where a mount publishes its counters, relative to the mount point (every
#: profile; the seldon tree has the same document at system/monitoring/stats.json).
STATS = Path(os.fsdecode(STATS_NAME))
DASH = "–"
LABEL = 12  # width of the section labels in the left column

Segment = tuple[str, str]
Line = list[Segment]


def read_stats(mountpoint: Path) -> dict[str, Any]:
    """One snapshot: stats.json parsed (plain open(), no token, no network).
    OSError or ValueError when it cannot be read or is not a JSON object."""
    with open(mountpoint / STATS, "rb") as f:
        doc = json.loads(f.read())
    if not isinstance(doc, dict):
        raise ValueError("stats.json is not a JSON object")
    return doc


# -- defensive access -------------------------------------------------------

def get(doc: Any, *path: str) -> Any:
    """doc[path[0]][path[1]]…, or None where any step is missing."""
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def num(x: Any) -> float | None:
    """x if it is a number (bool is not), else None."""
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def rate(a: Any, b: Any, dt: float) -> float | None:
    """(b - a) / dt; None without both numbers, without time, or when the
    counter went down (the mount was restarted between the snapshots)."""
    a, b = num(a), num(b)
    if a is None or b is None or dt <= 0 or b < a:
        return None
    return (b - a) / dt


def count(x: Any) -> str:
    n = num(x)
    return DASH if n is None else f"{int(n):,}"


def size(x: Any) -> str:
    n = num(x)
    return DASH if n is None else human(max(n, 0))


def per_s(r: float | None) -> str:
    return DASH if r is None else f"{r:,.1f}/s"


def mib_s(r: float | None) -> str:
    return DASH if r is None else f"{r / (1 << 20):,.2f} MiB/s"


def duration(x: Any) -> str:
    """Seconds as "3d 04:05:06", "04:05:06" or "5.2 s"."""
    s = num(x)
    if s is None or s < 0:
        return DASH
    if s < 60:
        return f"{s:.1f} s"
    d, rest = divmod(int(s), 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    hms = f"{h:02d}:{m:02d}:{sec:02d}"
    return f"{d}d {hms}" if d else hms


# -- sections ---------------------------------------------------------------

def head(label: str, *rest: Segment) -> Line:
    return [(label.ljust(LABEL), "head"), *rest]


def op_totals(ops: Any) -> dict[str, tuple[float, float, dict[str, float]]]:
    """op -> (all results, errors, {error name: count}) of one snapshot."""
    out: dict[str, tuple[float, float, dict[str, float]]] = {}
    if not isinstance(ops, dict):
        return out
    for op, results in ops.items():
        if not isinstance(results, dict):
            continue
        counts = {str(k): v for k, v in results.items() if num(v) is not None}
        errs = {k: v for k, v in counts.items() if k != "OK"}
        out[str(op)] = (sum(counts.values()), sum(errs.values()), errs)
    return out


def ops_lines(a: dict | None, b: dict, dt: float) -> tuple[Line, list[Line]]:
    """The summary line and one line per op, highest rate first (ops
    without a rate after them, by count)."""
    now, before = op_totals(b.get("ops")), op_totals((a or {}).get("ops"))
    if not isinstance(b.get("ops"), dict):
        return head("Operations", (DASH, "dim")), []
    rows = []
    for op, (total, errs, names) in now.items():
        old = before.get(op)
        r = rate(old[0], total, dt) if old else (rate(0, total, dt) if a is not None else None)
        er = rate(old[1], errs, dt) if old else (rate(0, errs, dt) if a is not None else None)
        rows.append((op, r, er, total, errs, names))
    rows.sort(key=lambda x: (-(x[1] or 0), -x[3], x[0]))
    all_r = rate(sum(x[0] for x in before.values()), sum(x[3] for x in rows), dt) if a is not None else None
    all_e = rate(sum(x[1] for x in before.values()), sum(x[4] for x in rows), dt) if a is not None else None
    summary = head(
        "Operations", (f"{per_s(all_r)} total", ""), ("  ", ""),
        (f"errors {per_s(all_e)}", "warning" if all_e else ""),
        (f"  ({count(sum(x[3] for x in rows))} ops, {count(sum(x[4] for x in rows))} errors since mount)", "dim"),
    )
    lines = []
    for op, r, er, total, errs, names in rows:
        top_err = ", ".join(f"{k} {int(v):,}" for k, v in sorted(names.items(), key=lambda kv: -kv[1])[:2] if v)
        line: Line = [("  " + op.ljust(LABEL - 2), ""), (per_s(r).rjust(11), ""), (f"  {count(total):>9} total", "dim")]
        if errs:
            line.append((f"  {count(errs)} errors ({top_err})", "warning" if er else ""))
        lines.append(line)
    return summary, lines


def throughput_line(a: dict | None, b: dict, dt: float) -> Line:
    def r(key: str) -> float | None:
        return rate(get(a, "bytes", key), get(b, "bytes", key), dt) if a is not None else None

    return head(
        "Throughput", (f"read {mib_s(r('read'))}", ""), (f"  write {mib_s(r('written'))}", ""),
        (f"  open files {count(b.get('open_files'))}", ""),
    )


def disk_level(disk: Any) -> str:
    """"critical" at or above the emergency threshold, "warning" at or
    above the warning one, "ok" below, "" when unknown."""
    pct, warn, emerg = num(get(disk, "percent")), num(get(disk, "warning")), num(get(disk, "emergency"))
    if pct is None:
        return ""
    if emerg is not None and pct >= emerg:
        return "critical"
    if warn is not None and pct >= warn:
        return "warning"
    return "ok" if warn is not None or emerg is not None else ""


def disk_line(b: dict, width: int) -> Line:
    disk = b.get("disk")
    pct = num(get(disk, "percent"))
    level = disk_level(disk)
    bar_w = max(0, min(30, width - 66))
    bar = ""
    if bar_w >= 5:
        filled = 0 if pct is None else round(bar_w * min(max(pct, 0), 100) / 100)
        bar = "[" + "#" * filled + "." * (bar_w - filled) + "] "
    marks = [f"{short} {v:g}%" for k, short in (("warning", "warn"), ("emergency", "emerg"))
             if (v := num(get(disk, k))) is not None]
    return head(
        "Disk", (bar, level), (DASH if pct is None else f"{pct:.1f}%", level),
        (f"  {size(get(disk, 'used'))} of {size(get(disk, 'total'))}", ""),
        (f"  ({', '.join(marks)})" if marks else "", "dim"),
    )


def folder_lines(b: dict) -> tuple[Line, list[Line]]:
    """The header and one line per folder, most bytes first."""
    folders = b.get("folders")
    if not isinstance(folders, dict):
        return head("Folders", (DASH, "dim")), []
    rows = sorted(
        ((str(k), v) for k, v in folders.items()), key=lambda kv: (-(num(get(kv[1], "bytes")) or 0), kv[0])
    )
    top = [v for k, v in rows if "/" not in k]  # second-level folders are inside these
    files = sum(num(get(v, "files")) or 0 for v in top)
    total = sum(num(get(v, "bytes")) or 0 for v in top)
    summary = head("Folders", (f"{len(rows)} folders, {count(files)} files, {size(total)}", ""))
    lines = [
        [("  " + name.ljust(28), ""), (count(get(v, "files")).rjust(9) + " files", ""),
         (size(get(v, "bytes")).rjust(12), "")]
        for name, v in rows
    ]
    return summary, lines


def janitor_lines(b: dict) -> list[Line]:
    j = b.get("janitor")
    if "janitor" in b and j is None:
        return [head("Janitor", ("none in this mount (no retention rules)", "dim"))]
    running = get(j, "running")
    state = DASH if not isinstance(running, bool) else ("running" if running else "idle")
    first = head(
        "Janitor", (state, "ok" if running else ""),
        (f"  runs {count(get(j, 'runs'))}  done {count(get(j, 'done'))}  skipped {count(get(j, 'skipped'))}"
         f"  freed {size(get(j, 'freed'))}", ""),
    )
    last = get(j, "last")
    if not isinstance(last, dict):
        return [first, [("  last run: " + DASH, "dim")]]
    summary = last.get("summary")
    trigger = last.get("trigger")
    return [first, [(f"  last run: {summary if isinstance(summary, str) else DASH}", ""),
                    (f"  ({duration(last.get('seconds'))}, {trigger if isinstance(trigger, str) else DASH})", "dim")]]


def checks_lines(b: dict) -> list[Line]:
    damaged = num(b.get("damaged_reads"))
    return [
        head("Validation", (f"ok {count(get(b, 'validation', 'ok'))}", ""),
             (f"  quarantined {count(get(b, 'validation', 'quarantined'))}", ""),
             (f"  quarantine backlog {count(b.get('quarantine_files'))} files",
              "warning" if num(b.get("quarantine_files")) else "")),
        head("Integrity", (f"damaged reads {count(damaged)}", "critical" if damaged else ("ok" if damaged == 0 else "")),
             (f"  audit records {count(b.get('audit_records'))}", "")),
    ]


def alert_lines(b: dict) -> tuple[Line, list[Line]]:
    alerts = b.get("alerts")
    if not isinstance(alerts, list):
        return head("Alerts", (DASH, "dim")), []
    alerts = [x for x in alerts if isinstance(x, dict)]
    if not alerts:
        return head("Alerts", ("none", "ok")), []
    crit = sum(1 for x in alerts if x.get("level") == "critical")
    summary = head("Alerts", (f"{len(alerts)} active", "critical" if crit else "warning"),
                   (f" ({crit} critical)" if crit else "", "critical"))
    # Critical first, then the newest.
    alerts.sort(key=lambda x: (x.get("level") != "critical", -(num(x.get("at")) or 0)))
    lines = []
    for x in alerts:
        level = x.get("level") if x.get("level") in ("warning", "critical") else "warning"
        at = num(x.get("at"))
        when = time.strftime("%H:%M:%S", time.localtime(at)) if at is not None else DASH
        lines.append([(f"  {when} {str(x.get('level', DASH)):8} {x.get('kind', DASH)}: ", level),
                      (str(x.get("message", DASH)), "")])
    return summary, lines


# -- the frame --------------------------------------------------------------

def title_lines(b: dict) -> list[Line]:
    mp, store = b.get("mountpoint"), b.get("store")
    url = b.get("metrics_url")
    return [
        [("SeldonFS top", "title"), (f"  {mp if isinstance(mp, str) else DASH}", "title"),
         (f"  up {duration(b.get('uptime_s'))}", ""), (f"  pid {DASH if num(b.get('pid')) is None else int(b['pid'])}", "dim")],
        [("store ", "dim"), (store if isinstance(store, str) else DASH, ""),
         (f"  metrics {url}" if isinstance(url, str) else "", "dim")],
    ]


def fit(fixed: int, height: int | None, lists: list[list[Line]], firsts: list[int]) -> list[int]:
    """How many lines of each list fit in `height` beside `fixed` lines:
    first up to firsts[i] each, in order, then whatever is left, in order."""
    if height is None:
        return [len(x) for x in lists]
    room = max(0, height - fixed)
    take = [0] * len(lists)
    for cap in (firsts, [len(x) for x in lists]):
        for i, lst in enumerate(lists):
            more = min(len(lst), cap[i]) - take[i]
            if more > 0:
                more = min(more, room)
                take[i] += more
                room -= more
    return take


def frame(a: dict | None, b: dict, dt: float, width: int, height: int | None,
          footer: str = "") -> list[Line]:
    """One screen: at most `height` lines (all of them when None), each at
    most `width` characters. `a` is the earlier snapshot (None before the
    second one: rates show "–"), `dt` the seconds between them."""
    a = a if isinstance(a, dict) else None
    b = b if isinstance(b, dict) else {}
    ops_head, ops = ops_lines(a, b, dt)
    fold_head, folds = folder_lines(b)
    al_head, alerts = alert_lines(b)
    top = title_lines(b)
    fixed_lines = 2 + 1 + 1 + 1 + 1 + 2 + 2 + 1 + (1 if footer else 0)
    n_al, n_ops, n_fold = fit(fixed_lines, height, [alerts, ops, folds], [3, 5, 4])
    lines: list[Line] = [
        *top, ops_head, *ops[:n_ops], throughput_line(a, b, dt), disk_line(b, width),
        fold_head, *folds[:n_fold], *janitor_lines(b), *checks_lines(b), al_head, *alerts[:n_al],
    ]
    if height is not None:
        lines = lines[: max(0, height - (1 if footer else 0))]
        if footer and height > 0:
            lines += [[]] * (height - 1 - len(lines))
    if footer and (height is None or height > 0):
        lines.append([(footer, "dim")])
    return [clip(line, width) for line in lines]


def clip(line: Line, width: int) -> Line:
    """The line cut to `width` characters (segments kept, empty ones dropped)."""
    out: Line = []
    room = max(0, width)
    for text, style in line:
        if not text:
            continue
        if room <= 0:
            break
        out.append((text[:room], style))
        room -= len(text[:room])
    return out


def plain(lines: list[Line]) -> str:
    """The frame as text, one line each, without trailing spaces."""
    return "".join("".join(t for t, _ in line).rstrip() + "\n" for line in lines)


# -- the terminal -----------------------------------------------------------

def run_curses(read: Callable[[], dict[str, Any]], interval: float) -> None:
    """Draw a frame every `interval` seconds until `q` (or Ctrl-C); a
    resize redraws at once. `read()` returns a snapshot or raises
    OSError/ValueError; then the last good frame stays, with the error."""
    import curses

    def loop(scr: Any) -> None:
        styles = _styles(curses)
        scr.timeout(100)
        a: dict | None = None
        b = read()
        tb = time.monotonic()
        ta = tb
        err = ""
        next_at = tb + interval
        while True:
            h, w = scr.getmaxyx()
            note = f"q quit  every {interval:g} s  {time.strftime('%H:%M:%S')}" + (f"  {err}" if err else "")
            _draw(scr, frame(a, b, tb - ta, w, h, footer=note), styles, curses)
            key = scr.getch()
            while key == -1 and time.monotonic() < next_at:
                key = scr.getch()
            if key in (ord("q"), ord("Q")):
                return
            if time.monotonic() >= next_at:
                next_at = time.monotonic() + interval
                try:
                    snap = read()
                except (OSError, ValueError) as e:
                    err = f"stats.json: {getattr(e, 'strerror', None) or e}"
                    continue
                err = ""
                a, ta, b, tb = b, tb, snap, time.monotonic()

    try:
        curses.wrapper(loop)
    except KeyboardInterrupt:
        pass


def _styles(curses: Any) -> dict[str, int]:
    styles = {"": 0, "title": curses.A_BOLD, "head": curses.A_BOLD, "dim": curses.A_DIM,
              "ok": 0, "warning": curses.A_BOLD, "critical": curses.A_BOLD | curses.A_REVERSE}
    try:
        curses.curs_set(0)
    except curses.error:
        pass
    if curses.has_colors():
        curses.start_color()
        try:
            curses.use_default_colors()
            bg = -1
        except curses.error:
            bg = curses.COLOR_BLACK
        for i, (name, fg) in enumerate((("ok", curses.COLOR_GREEN), ("warning", curses.COLOR_YELLOW),
                                        ("critical", curses.COLOR_RED), ("head", curses.COLOR_CYAN)), 1):
            curses.init_pair(i, fg, bg)
            styles[name] = curses.color_pair(i) | (curses.A_BOLD if name != "ok" else 0)
    return styles


def _draw(scr: Any, lines: list[Line], styles: dict[str, int], curses: Any) -> None:
    scr.erase()
    h, w = scr.getmaxyx()
    # A terminal whose locale cannot show the en dash gets a hyphen.
    ascii_only = DASH.encode(locale.getpreferredencoding(False), "replace") != DASH.encode()
    for y, line in enumerate(lines[:h]):
        x = 0
        for text, style in line:
            if ascii_only:
                text = text.replace(DASH, "-").encode("ascii", "replace").decode()
            # The bottom-right cell cannot be written without an error
            # (the cursor would move past the screen); stop one short.
            n = min(len(text), w - x - (1 if y == h - 1 else 0))
            if n <= 0:
                break
            try:
                scr.addnstr(y, x, text, n, styles.get(style, 0))
            except curses.error:
                break
            x += n
    scr.refresh()
