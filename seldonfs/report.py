"""The store report: usage by folder, largest files, ages, extensions and
name patterns, permission problems, data classification and what the
janitor would do now, as one JSON-able dict, and its text rendering.

`scan()` walks STORE/data once without following a symlink (as
janitor.inventory does) and keeps what the permission checks need; the
catalog rows come from `read_catalog()` on a read-only connection. Every
other function is pure: `build(now, cfg, items, commits, quarantine,
owner)` decides everything from values, so it is tested without FUSE or a
clock. The janitor section is `janitor.plan` over the same items: a dry
run, nothing is touched. Nothing here takes the store lock, so a report
can be made while the store is mounted (the catalog is read through WAL).
The HTML page is in report_html.py.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import pwd
import sqlite3
import stat as stat_m
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from . import janitor
from .catalog import name_of
from .config import Config
from .naming import shown
from .store import PRIVATE_DIR, tree

TOP_FILES = 20  # largest files listed
TOP_EXTENSIONS = 15  # extensions listed before "(other)"
TOP_REASONS = 20

#: Age buckets by mtime: (label, upper bound in seconds, exclusive).
AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("< 1 hour", 3600.0),
    ("1-24 hours", 86400.0),
    ("1-7 days", 7 * 86400.0),
    ("7-30 days", 30 * 86400.0),
    ("30-90 days", 90 * 86400.0),
    ("90-365 days", 365 * 86400.0),
    ("> 1 year", float("inf")),
)


@dataclass(frozen=True)
class Item:
    """One entry of STORE/data, as lstat sees it."""

    rel: str  # relative to data/ (the mount root)
    kind: str  # file, dir, symlink, fifo, socket, device
    size: int = 0  # plaintext bytes (files)
    stored: int = 0  # bytes in the store (files)
    mtime: float = 0.0
    atime: float = 0.0
    mode: int = 0o644  # permission bits, S_IMODE
    uid: int = 0
    target: str = ""  # a symlink's target


@dataclass(frozen=True)
class Commit:
    """A row of the catalog's `files` table: one validation at commit."""

    path: str
    size: int
    mime: str
    verdict: str  # ok, quarantined
    reason: str  # '; '-separated failed checks


@dataclass(frozen=True)
class Quarantined:
    """A row of the `quarantine` table not yet released."""

    path: str
    origin: str
    reason: str
    at_ns: int


# ------------------------------------------------------------------ input


def _kind(mode: int) -> str:
    for test, name in (
        (stat_m.S_ISREG, "file"), (stat_m.S_ISDIR, "dir"), (stat_m.S_ISLNK, "symlink"),
        (stat_m.S_ISFIFO, "fifo"), (stat_m.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "device"


def printable(path: str) -> str:
    """A path as text: bytes that are not UTF-8 and control characters as
    \\xNN, as the audit writes undecodable bytes (naming.shown)."""
    return shown(path)


def scan(data: str | os.PathLike, plain_size: Callable[[int], int] = lambda n: n) -> Iterator[Item]:
    """Every entry under `data` (not `data` itself), never following a symlink.
    A directory that cannot be listed is yielded, its contents are not."""
    for r, d, st in tree(data):
        kind = _kind(st.st_mode)
        target = ""
        if kind == "symlink":
            try:
                target = printable(os.readlink(d.path))
            except OSError:
                target = "?"
        is_file = kind == "file"
        yield Item(printable(r), kind, plain_size(st.st_size) if is_file else 0, st.st_size if is_file else 0,
                   st.st_mtime, st.st_atime, stat_m.S_IMODE(st.st_mode), st.st_uid, target)


def read_catalog(conn: sqlite3.Connection) -> tuple[list[Commit], list[Quarantined]]:
    """The validation results and the quarantine backlog."""
    commits = [
        Commit(shown(name_of(p)), s or 0, m or "", v or "", shown(name_of(r)))
        for p, s, m, v, r in conn.execute("SELECT path, size, mime, verdict, reason FROM files ORDER BY id")
    ]
    backlog = [
        Quarantined(shown(name_of(p)), shown(name_of(o)), shown(name_of(r)), a or 0)
        for p, o, r, a in conn.execute(
            "SELECT path, origin, reason, at_ns FROM quarantine WHERE released_ns IS NULL ORDER BY id"
        )
    ]
    return commits, backlog


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# ------------------------------------------------------------------ sections


def _share(n: int, total: int) -> float:
    return round(n / total, 4) if total else 0.0


def usage_by_folder(items: list[Item]) -> list[dict[str, Any]]:
    """Files and bytes per top-level folder and per second-level folder
    (files anywhere below count for both). Folders without files are listed
    too; files at the root count under ".". Ordered by bytes within a level,
    each top-level row followed by its subfolders."""
    rows: dict[str, dict[str, Any]] = {}

    def row(folder: str, depth: int) -> dict[str, Any]:
        return rows.setdefault(folder, {"folder": folder, "depth": depth, "files": 0, "bytes": 0})

    for it in items:
        parts = it.rel.split("/")
        if it.kind == "dir" and len(parts) <= 2:
            row(it.rel, len(parts))
        if it.kind != "file":
            continue
        dirs = parts[:-1]
        for depth, folder in ((1, "/".join(dirs[:1]) or "."), (2, "/".join(dirs[:2]) if len(dirs) >= 2 else None)):
            if folder is not None:
                r = row(folder, depth)
                r["files"] += 1
                r["bytes"] += it.size
    total = sum(r["bytes"] for r in rows.values() if r["depth"] == 1)
    by_bytes = lambda r: (-r["bytes"], -r["files"], r["folder"])  # noqa: E731
    out = []
    for top in sorted((r for r in rows.values() if r["depth"] == 1), key=by_bytes):
        out.append(top)
        subs = [r for r in rows.values() if r["depth"] == 2 and r["folder"].split("/")[0] == top["folder"]]
        out += sorted(subs, key=by_bytes)
    for r in out:
        r["share"] = _share(r["bytes"], total)
    return out


def largest(items: list[Item], n: int = TOP_FILES) -> list[dict[str, Any]]:
    files = sorted((it for it in items if it.kind == "file"), key=lambda it: (-it.size, it.rel))
    return [{"path": it.rel, "bytes": it.size, "mtime": it.mtime} for it in files[:n]]


def ages(now: float, items: list[Item]) -> list[dict[str, Any]]:
    """Files and bytes per age bucket (now - mtime); a file dated in the
    future gets a bucket of its own, shown only when there is one."""
    counts = {label: [0, 0] for label, _ in AGE_BUCKETS}
    future = [0, 0]
    for it in items:
        if it.kind != "file":
            continue
        age = now - it.mtime
        c = future if age < -60 else next(counts[label] for label, top in AGE_BUCKETS if age < top)
        c[0] += 1
        c[1] += it.size
    rows = [{"bucket": label, "files": f, "bytes": b} for label, (f, b) in counts.items()]
    if future[0]:
        rows.append({"bucket": "in the future", "files": future[0], "bytes": future[1]})
    return rows


def extension_of(name: str) -> str:
    """".json" for "x.json", "(none)" for "Makefile" and ".bashrc"."""
    ext = posixpath.splitext(name)[1].lower()
    return ext or "(none)"


def extensions(items: list[Item], n: int = TOP_EXTENSIONS) -> list[dict[str, Any]]:
    counts: dict[str, list[int]] = {}
    for it in items:
        if it.kind == "file":
            c = counts.setdefault(extension_of(posixpath.basename(it.rel)), [0, 0])
            c[0] += 1
            c[1] += it.size
    rows = sorted(({"extension": e, "files": f, "bytes": b} for e, (f, b) in counts.items()),
                  key=lambda r: (-r["bytes"], -r["files"], r["extension"]))
    if len(rows) > n:
        rest = rows[n:]
        rows = rows[:n] + [{"extension": f"(other: {len(rest)})", "files": sum(r["files"] for r in rest),
                            "bytes": sum(r["bytes"] for r in rest)}]
    return rows


def patterns(cfg: Config, items: list[Item]) -> list[dict[str, Any]]:
    """Files whose name matches a glob of the configuration, wherever they
    are in the tree: the temporary names (`[policy] temp_patterns`, never
    committed) and the janitor's pattern ages (with the folders that set them)."""
    globs: dict[str, dict[str, Any]] = {}
    for g in cfg.policy.temp_patterns:
        globs.setdefault(g, {"temporary": False, "janitor": []})["temporary"] = True
    for rule in cfg.folders:
        for g, _age in rule.patterns:
            globs.setdefault(g, {"temporary": False, "janitor": []})["janitor"].append(rule.path)
    rows = []
    for g, src in globs.items():
        hits = [it for it in items if it.kind == "file" and fnmatch.fnmatchcase(posixpath.basename(it.rel), g)]
        rows.append({"pattern": g, "files": len(hits), "bytes": sum(it.size for it in hits), **src})
    return rows


def pattern_source(row: dict[str, Any]) -> str:
    """"temporary name; janitor: temp +4" for a row of patterns()."""
    out = ["temporary name"] if row["temporary"] else []
    folders = row["janitor"]
    if folders:
        out.append("janitor age: " + ", ".join(folders[:2]) + (f" +{len(folders) - 2}" if len(folders) > 2 else ""))
    return "; ".join(out)


def _problems_of(it: Item, owner: int) -> list[tuple[str, str]]:
    """(category, description) of what is wrong with one entry."""
    out = []
    if it.kind == "symlink":
        inside = not it.target.startswith("/") and not posixpath.normpath(
            posixpath.join(posixpath.dirname(it.rel), it.target)).startswith("../")
        out.append(("symlink", f"symlink to {it.target} ({'inside' if inside else 'outside'} the tree; never followed)"))
    elif it.kind not in ("file", "dir"):
        out.append(("special file", f"special file ({it.kind})"))
    if it.uid != owner:
        out.append(("other owner", f"owned by {user_name(it.uid)}, not the store owner {user_name(owner)}"))
    if it.kind == "symlink":
        return out  # a symlink's own mode bits mean nothing on Linux
    if it.mode & stat_m.S_IWOTH:
        sticky = it.kind == "dir" and it.mode & stat_m.S_ISVTX
        out.append(("world-writable", "world-writable" + (" (sticky)" if sticky else "")))
    if it.kind == "dir" and (it.mode & 0o500) != 0o500:
        out.append(("unreadable by owner", "owner cannot list or enter it"))
    elif it.kind == "file" and not it.mode & stat_m.S_IRUSR:
        out.append(("unreadable by owner", "owner cannot read it"))
    return out


def permission_problems(items: list[Item], owner: int) -> dict[str, Any]:
    """Entries of the backing store not owned by the store's owner,
    world-writable, unreadable by their owner, symlinks and special files."""
    found = []
    counts: dict[str, int] = {}
    for it in items:
        for category, text in _problems_of(it, owner):
            found.append({"path": it.rel, "kind": it.kind, "mode": f"{it.mode:04o}", "owner": user_name(it.uid),
                          "category": category, "problem": text})
            counts[category] = counts.get(category, 0) + 1
    return {"owner": {"uid": owner, "name": user_name(owner)}, "count": len(found),
            "by_problem": [{"problem": k, "entries": n} for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))],
            "entries": found}


def _split_reasons(reasons: Iterable[str]) -> list[dict[str, Any]]:
    """Files per failed check: a reason lists checks '; '-separated, and a
    check's details after ': ' (a parser's message) are left out so that
    the same check groups together."""
    counts: dict[str, int] = {}
    for r in reasons:
        for part in {p.split(": ")[0].strip() for p in r.split(";")} - {""}:
            counts[part] = counts.get(part, 0) + 1
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"reason": k, "files": n} for k, n in rows[:TOP_REASONS]]


def classification(now: float, commits: list[Commit], backlog: list[Quarantined]) -> dict[str, Any]:
    """Counts by verdict and MIME type over the catalog's validation results
    (one per commit; a file committed twice counts twice), the reasons of the
    quarantined ones, and the quarantine backlog grouped by reason."""
    verdicts: dict[str, list[int]] = {}
    mimes: dict[str, list[int]] = {}
    for c in commits:
        v = verdicts.setdefault(c.verdict or "?", [0, 0])
        v[0] += 1
        v[1] += c.size
        m = mimes.setdefault(c.mime or "(not checked)", [0, 0, 0])
        m[0] += 1
        m[1] += c.size
        m[2] += c.verdict == "quarantined"
    oldest = min((q.at_ns for q in backlog), default=None)
    return {
        "commits": len(commits),
        "by_verdict": [{"verdict": k, "files": f, "bytes": b}
                       for k, (f, b) in sorted(verdicts.items(), key=lambda kv: -kv[1][0])],
        "by_mime": [{"mime": k, "files": f, "bytes": b, "quarantined": q}
                    for k, (f, b, q) in sorted(mimes.items(), key=lambda kv: (-kv[1][0], kv[0]))],
        "quarantine_reasons": _split_reasons(c.reason for c in commits if c.verdict == "quarantined"),
        "backlog": {
            "files": len(backlog),
            "oldest_age_s": round(now - oldest / 1e9, 1) if oldest is not None else None,
            "by_reason": _split_reasons(q.reason for q in backlog),
        },
    }


def janitor_due(now: float, cfg: Config, items: list[Item]) -> dict[str, Any]:
    """What the retention rules say is due now (janitor.plan, a dry run):
    files and bytes per action kind and per rule."""
    entries = [janitor.Entry(it.rel, it.size, it.mtime, it.atime, it.kind == "dir")
               for it in items if it.kind in ("file", "dir")]
    actions = list(janitor.plan(now, cfg, entries))
    kinds: dict[str, list[int]] = {}
    rules: dict[tuple[str, str], list[int]] = {}
    for a in actions:
        for c in (kinds.setdefault(a.kind, [0, 0]), rules.setdefault((a.rule, a.kind), [0, 0])):
            c[0] += 1
            c[1] += a.size
    return {
        "actions": len(actions),
        "by_kind": [{"kind": k, "entries": n, "bytes": b} for k, (n, b) in sorted(kinds.items())],
        "by_rule": [{"rule": r, "kind": k, "entries": n, "bytes": b} for (r, k), (n, b) in sorted(rules.items())],
        "first": [{"kind": a.kind, "path": a.rel, "bytes": a.size, "reason": a.reason} for a in actions[:TOP_FILES]],
    }


def build(
    now: float, cfg: Config, items: Iterable[Item], commits: list[Commit], backlog: list[Quarantined],
    owner: int, store: dict[str, Any] | None = None, distributions: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The whole report. The filesystem's own files (data/.seldon: versions)
    are counted apart from the visible tree, and checked for permissions."""
    every = list(items)
    own = [it for it in every if it.rel.split("/")[0] == PRIVATE_DIR]
    visible = [it for it in every if it.rel.split("/")[0] != PRIVATE_DIR]
    files = [it for it in visible if it.kind == "file"]
    return {
        "generated": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        "now": now,
        "store": dict(store or {}, profile=cfg.profile),
        "totals": {
            "files": len(files), "dirs": sum(it.kind == "dir" for it in visible),
            "symlinks": sum(it.kind == "symlink" for it in visible),
            "bytes": sum(it.size for it in files), "stored_bytes": sum(it.stored for it in files),
            "own_files": sum(it.kind == "file" for it in own),
            "own_bytes": sum(it.size for it in own if it.kind == "file"),
        },
        "folders": usage_by_folder(visible),
        "largest": largest(visible),
        "ages": ages(now, visible),
        "extensions": extensions(visible),
        "patterns": patterns(cfg, visible),
        "permissions": permission_problems(every, owner),
        "classification": classification(now, commits, backlog),
        "janitor": janitor_due(now, cfg, visible),
        # distribution records by state, and their downloads (catalog.distribution_counts)
        "distributions": dict(distributions or {"open": 0, "expired": 0, "closed": 0, "downloads": 0}),
    }


# ------------------------------------------------------------------ text


def human(n: float) -> str:
    """1536 -> "1.5 KiB"; bytes below 1 KiB as they are."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
    raise AssertionError


def human_age(seconds: float) -> str:
    for unit, s in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= s:
            return f"{seconds / s:.0f}{unit}"
    return f"{seconds:.0f}s"


def table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    """Aligned columns; the columns in `right` (numbers) align right."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            (str(c).rjust(w) if i in right else str(c).ljust(w)) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def render_text(rep: dict[str, Any], max_problems: int = 50) -> str:
    t, s = rep["totals"], rep["store"]
    out = [f"SeldonFS report: {s.get('root', '')}" + (f" (mounted at {s['mountpoint']})" if s.get("mountpoint") else ""),
           f"generated {rep['generated']}, profile {s['profile']}, "
           f"{'encrypted' if s.get('encrypted') else 'plain'} store, owner {rep['permissions']['owner']['name']}",
           "",
           f"{t['files']:,} files, {t['dirs']:,} directories, {t['symlinks']:,} symlinks; {human(t['bytes'])} "
           f"({t['bytes']:,} bytes; {human(t['stored_bytes'])} stored); "
           f"versions and own files: {t['own_files']:,} files, {human(t['own_bytes'])}"]

    def section(title: str, lines: list[str]) -> None:
        out.extend(["", title, *lines])

    section("Usage by folder", table(
        ["folder", "files", "bytes", "share"],
        [[("  " if r["depth"] == 2 else "") + r["folder"], f"{r['files']:,}", human(r["bytes"]), _pct(r["share"])]
         for r in rep["folders"]], {1, 2, 3}))
    section(f"Largest files (top {TOP_FILES})", table(
        ["bytes", "modified", "path"],
        [[human(r["bytes"]), datetime.fromtimestamp(r["mtime"]).strftime("%Y-%m-%d %H:%M"), r["path"]]
         for r in rep["largest"]], {0}) if rep["largest"] else ["(no files)"])
    section("Age (by modification time)", table(
        ["age", "files", "bytes"], [[r["bucket"], f"{r['files']:,}", human(r["bytes"])] for r in rep["ages"]], {1, 2}))
    section("Extensions", table(
        ["extension", "files", "bytes"],
        [[r["extension"], f"{r['files']:,}", human(r["bytes"])] for r in rep["extensions"]], {1, 2})
        if rep["extensions"] else ["(no files)"])
    section("Name patterns of the configuration", table(
        ["pattern", "files", "bytes", "from"],
        [[r["pattern"], f"{r['files']:,}", human(r["bytes"]), pattern_source(r)] for r in rep["patterns"]], {1, 2}))
    section("Permission problems", _permission_lines(rep["permissions"], max_problems))
    section("Data classification (validation at commit)", _classification_lines(rep["classification"]))
    section("Janitor: due now (dry run, nothing changed)", _janitor_lines(rep["janitor"]))
    d = rep["distributions"]
    section("Distributions", [f"{d['open']:,} open, {d['expired']:,} expired, {d['closed']:,} failed or revoked; "
                              f"{d['downloads']:,} downloads counted"])
    return "\n".join(out) + "\n"


def _permission_lines(p: dict[str, Any], limit: int) -> list[str]:
    if not p["count"]:
        return ["none"]
    lines = [", ".join(f"{r['entries']} {r['problem']}" for r in p["by_problem"]), ""]
    rows = [[r["mode"], r["owner"], r["path"], r["problem"]] for r in p["entries"][:limit]]
    lines += table(["mode", "owner", "path", "problem"], rows)
    if p["count"] > limit:
        lines.append(f"... and {p['count'] - limit} more (--json lists them all)")
    return lines


def _classification_lines(c: dict[str, Any]) -> list[str]:
    lines = [f"{c['commits']:,} files checked at commit: "
             + (", ".join(f"{r['files']:,} {r['verdict']} ({human(r['bytes'])})" for r in c["by_verdict"]) or "none")]
    if c["by_mime"]:
        lines += [""] + table(["type", "files", "bytes", "quarantined"],
                              [[r["mime"], f"{r['files']:,}", human(r["bytes"]), f"{r['quarantined']:,}"]
                               for r in c["by_mime"]], {1, 2, 3})
    if c["quarantine_reasons"]:
        lines += ["", "Why files were quarantined:"] + [f"  {r['files']:>6,}  {r['reason']}" for r in c["quarantine_reasons"]]
    b = c["backlog"]
    lines += ["", f"Quarantine backlog: {b['files']:,} files"
              + (f", oldest {human_age(b['oldest_age_s'])} old" if b["oldest_age_s"] is not None else "")]
    lines += [f"  {r['files']:>6,}  {r['reason']}" for r in b["by_reason"]]
    return lines


def _janitor_lines(j: dict[str, Any]) -> list[str]:
    if not j["actions"]:
        return ["nothing is due"]
    lines = table(["action", "entries", "bytes"],
                  [[r["kind"], f"{r['entries']:,}", human(r["bytes"])] for r in j["by_kind"]], {1, 2})
    lines += [""] + table(["rule", "action", "entries", "bytes"],
                          [[r["rule"], r["kind"], f"{r['entries']:,}", human(r["bytes"])] for r in j["by_rule"]], {2, 3})
    return lines
