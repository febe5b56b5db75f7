"""seldonfs report: the sections as pure functions of a scan and catalog
rows (no FUSE, the clock an argument), the text/JSON/HTML renderings, and
the command on a store written through a real mount."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from seldonfs import config, report
from seldonfs.janitor import Entry, plan
from seldonfs.report import Commit, Item, Quarantined
from seldonfs.report_html import render_html

from .conftest import mounted, needs_fuse, seldonfs

D = 86400.0
NOW = 1_800_000_000.0
REPO = Path(__file__).resolve().parent.parent
SEED = config.parse(tomllib.loads(config.profile_text("seldon")), "seldon.toml")


def f(rel: str, size: int = 100, age: float = 60.0, **kw) -> Item:
    return Item(rel, "file", size, size + 28, NOW - age, NOW - age, **kw)


def d(rel: str, **kw) -> Item:
    return Item(rel, "dir", mode=kw.pop("mode", 0o755), **kw)


def by(rows: list[dict], key: str) -> dict:
    return {r[key]: r for r in rows}


def test_usage_by_folder_two_levels_with_shares() -> None:
    items = [
        d("input"), d("input/raw"), d("input/raw/deep"), d("input/empty"), d("temp"),
        f("input/raw/a.json", 300), f("input/raw/deep/b.json", 100), f("input/top.csv", 100),
        f("temp/x/y/z.bin", 500), f("readme", 1000),
    ]
    rows = report.usage_by_folder(items)
    assert [(r["folder"], r["depth"], r["files"], r["bytes"]) for r in rows] == [
        (".", 1, 1, 1000),
        ("input", 1, 3, 500), ("input/raw", 2, 2, 400), ("input/empty", 2, 0, 0),  # more files first at a tie
        ("temp", 1, 1, 500), ("temp/x", 2, 1, 500),
    ]
    shares = {r["folder"]: r["share"] for r in rows}
    assert shares["."] == 0.5 and shares["input/raw"] == 0.2 and shares["input/empty"] == 0.0
    assert sum(r["share"] for r in rows if r["depth"] == 1) == pytest.approx(1.0)


def test_largest_files_top_20_biggest_first() -> None:
    items = [f(f"a/{i:02d}", size=i) for i in range(30)] + [d("a"), Item("a/l", "symlink", target="x")]
    top = report.largest(items)
    assert len(top) == 20 and top[0] == {"path": "a/29", "bytes": 29, "mtime": NOW - 60}
    assert [r["bytes"] for r in top] == list(range(29, 9, -1))


def test_age_buckets_by_mtime() -> None:
    items = [f("a", 1, 10), f("b", 2, 2 * 3600), f("c", 4, 3 * D), f("d", 8, 10 * D), f("e", 16, 60 * D),
             f("g", 32, 100 * D), f("h", 64, 400 * D), f("i", 128, 400 * D), d("x", mtime=NOW - 999 * D)]
    rows = report.ages(NOW, items)
    assert [(r["bucket"], r["files"], r["bytes"]) for r in rows] == [
        ("< 1 hour", 1, 1), ("1-24 hours", 1, 2), ("1-7 days", 1, 4), ("7-30 days", 1, 8),
        ("30-90 days", 1, 16), ("90-365 days", 1, 32), ("> 1 year", 2, 192),
    ]
    assert report.ages(NOW, [f("later", 5, -3600)])[-1] == {"bucket": "in the future", "files": 1, "bytes": 5}


def test_extensions_and_config_patterns() -> None:
    items = [f("a/x.JSON", 10), f("a/y.json", 20), f("a/Makefile", 5), f("a/.bashrc", 5), f("t/z.tmp", 7),
             f("temp/cache/q.cache", 9), f("temp/w/old.log", 3)]
    ext = by(report.extensions(items), "extension")
    assert ext[".json"] == {"extension": ".json", "files": 2, "bytes": 30}
    assert ext["(none)"]["files"] == 2 and ext[".tmp"]["bytes"] == 7
    many = report.extensions([f(f"m/{i}.e{i}", i + 1) for i in range(20)])
    assert len(many) == 16 and many[-1] == {"extension": "(other: 5)", "files": 5, "bytes": 15}
    pats = by(report.patterns(SEED, items), "pattern")
    assert pats["*.tmp"]["files"] == 1 and pats["*.tmp"]["temporary"] and "temp/cache" in pats["*.tmp"]["janitor"]
    assert pats[".*"]["files"] == 1  # .bashrc
    assert (pats["*.cache"]["files"], pats["*.log"]["bytes"]) == (1, 3)
    assert report.pattern_source(pats["*.log"]) == "janitor age: temp"
    assert report.pattern_source(pats["*.tmp"]).startswith("temporary name; janitor age: temp, temp/processing +")


def test_permission_problems() -> None:
    owner = 1000
    items = [
        f("ok", uid=owner), d("fine", uid=owner),
        f("theirs", uid=0), f("open", mode=0o666, uid=owner), d("drop", mode=0o1777, uid=owner),
        f("secret", mode=0o200, uid=owner), d("locked", mode=0o300, uid=owner),
        Item("in/link", "symlink", mode=0o777, uid=owner, target="../ok"),
        Item("in/out", "symlink", mode=0o777, uid=owner, target="../../etc/passwd"),
        Item("abs", "symlink", mode=0o777, uid=owner, target="/etc/passwd"),
        Item("pipe", "fifo", mode=0o644, uid=owner),
    ]
    p = report.permission_problems(items, owner)
    found = {(e["path"], e["category"]): e["problem"] for e in p["entries"]}
    assert ("ok", "other owner") not in found and not any(k[0] in ("ok", "fine") for k in found)
    assert found[("theirs", "other owner")].startswith("owned by root, not the store owner")
    assert found[("open", "world-writable")] == "world-writable"
    assert found[("drop", "world-writable")] == "world-writable (sticky)"
    assert found[("secret", "unreadable by owner")] == "owner cannot read it"
    assert found[("locked", "unreadable by owner")] == "owner cannot list or enter it"
    assert "inside the tree" in found[("in/link", "symlink")]
    assert "outside the tree" in found[("in/out", "symlink")] and "outside" in found[("abs", "symlink")]
    assert ("in/link", "world-writable") not in found  # a symlink's 0777 means nothing
    assert found[("pipe", "special file")] == "special file (fifo)"
    assert p["count"] == 9
    assert by(p["by_problem"], "problem")["symlink"]["entries"] == 3


def test_classification_from_catalog_rows() -> None:
    commits = [
        Commit("input/raw/a.json", 10, "application/json", "ok", ""),
        Commit("input/raw/b.json", 20, "application/json", "ok", ""),
        Commit("input/raw/c.json", 5, "text/plain", "quarantined",
               "not valid JSON: Expecting value: line 1 column 1 (char 0); contains a US social security number"),
        Commit("input/raw/d.csv", 7, "text/plain", "quarantined", "contains a US social security number"),
        Commit("output/x", 1, "", "ok", ""),
    ]
    backlog = [Quarantined("input/quarantine/1_d.csv", "input/raw/d.csv", "contains a US social security number",
                           int((NOW - 3 * D) * 1e9))]
    c = report.classification(NOW, commits, backlog)
    assert c["commits"] == 5
    assert by(c["by_verdict"], "verdict") == {
        "ok": {"verdict": "ok", "files": 3, "bytes": 31},
        "quarantined": {"verdict": "quarantined", "files": 2, "bytes": 12},
    }
    mimes = by(c["by_mime"], "mime")
    assert mimes["text/plain"] == {"mime": "text/plain", "files": 2, "bytes": 12, "quarantined": 2}
    assert mimes["(not checked)"]["files"] == 1
    assert c["quarantine_reasons"] == [
        {"reason": "contains a US social security number", "files": 2}, {"reason": "not valid JSON", "files": 1},
    ]
    assert c["backlog"] == {"files": 1, "oldest_age_s": 3 * D,
                            "by_reason": [{"reason": "contains a US social security number", "files": 1}]}


def test_janitor_due_is_the_plan_summed() -> None:
    items = [d("input"), d("input/processed"), f("input/processed/old.csv", 1000, 100 * D),
             f("input/processed/new.csv", 50, 1 * D), d("temp"), d("temp/cache"),
             f("temp/cache/a.tmp", 7, 13 * 3600), f("temp/cache/b.cache", 9, 4 * D), f("input/raw/x.json", 11, 40 * D)]
    j = report.janitor_due(NOW, SEED, items)
    expect = list(plan(NOW, SEED, [Entry(i.rel, i.size, i.mtime, i.atime, i.kind == "dir") for i in items]))
    assert j["actions"] == len(expect) == 4
    assert by(j["by_kind"], "kind") == {
        "archive": {"kind": "archive", "entries": 2, "bytes": 1011},
        "delete": {"kind": "delete", "entries": 2, "bytes": 16},
    }
    assert {(r["rule"], r["kind"], r["entries"]) for r in j["by_rule"]} == {
        ("input/processed", "archive", 1), ("input/raw", "archive", 1), ("temp/cache", "delete", 2)}


def test_build_keeps_own_files_apart_and_renders() -> None:
    items = [d("input"), f("input/a<b>.json", 10), d(".seldon"), d(".seldon/versions"),
             f(".seldon/versions/v1", 99, mode=0o606)]
    rep = report.build(NOW, SEED, items, [Commit("input/a<b>.json", 10, "application/json", "ok", "")], [], 0,
                       {"root": "/s", "encrypted": True, "mountpoint": None})
    t = rep["totals"]
    assert (t["files"], t["bytes"], t["own_files"], t["own_bytes"], t["stored_bytes"]) == (1, 10, 1, 99, 38)
    assert [r["folder"] for r in rep["folders"]] == ["input"]
    assert [e["path"] for e in rep["permissions"]["entries"]] == [".seldon/versions/v1"]
    json.loads(json.dumps(rep))
    text = report.render_text(rep)
    for title in ("Usage by folder", "Largest files (top 20)", "Age (by modification time)", "Extensions",
                  "Permission problems", "Data classification", "Janitor: due now"):
        assert f"\n{title}" in text
    assert "input/a<b>.json" in text and "1 ok (10 B)" in text
    page = check_html(render_html(rep))
    assert "input/a&lt;b&gt;.json" in page.source and "a<b>.json" not in page.source


def test_human_sizes_and_table_alignment() -> None:
    assert [report.human(n) for n in (0, 1023, 1024, 1536, 5 * 2**30)] == ["0 B", "1023 B", "1.0 KiB", "1.5 KiB",
                                                                            "5.0 GiB"]
    lines = report.table(["name", "n"], [["a", "1"], ["long name", "1,000"]], {1})
    assert lines == ["name           n", "---------  -----", "a              1", "long name  1,000"]


def test_scan_never_follows_symlinks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "a" / "b").mkdir(parents=True)
    (data / "a" / "b" / "f.bin").write_bytes(b"x" * 100)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "big").write_bytes(b"y" * 5000)
    os.symlink(tmp_path / "outside", data / "a" / "escape")
    os.mkfifo(data / "pipe")
    (data / os.fsdecode(b"caf\xe9")).write_bytes(b"z")
    got = {i.rel: i for i in report.scan(data, lambda n: n // 2)}
    assert set(got) == {"a", "a/b", "a/b/f.bin", "a/escape", "pipe", "caf\\xe9"}
    assert got["a/b/f.bin"].size == 50 and got["a/b/f.bin"].stored == 100
    assert got["a/escape"].kind == "symlink" and got["a/escape"].target == str(tmp_path / "outside")
    assert got["pipe"].kind == "fifo"


class Checker(HTMLParser):
    """Well-formedness: every element closed in order; counts SVGs and their titles."""

    VOID = {"meta", "br", "hr", "img", "input", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.svgs = self.svg_titles = 0
        self.texts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "svg":
            self.svgs += 1
            assert dict(attrs).get("role") == "img" and dict(attrs).get("aria-labelledby")
        if tag == "title" and self.stack and self.stack[-1] == "svg":
            self.svg_titles += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.texts.append(data)


def check_html(page: str) -> Checker:
    c = Checker()
    c.feed(page)
    c.close()
    assert c.stack == [], f"unclosed: {c.stack}"
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    c.source = page  # type: ignore[attr-defined]
    return c


# ------------------------------------------------------------------ through a real mount


def write_through_mount(m: Path, src: Path) -> dict[str, int]:
    """Files written with cp and python; returns the plaintext sizes by name."""
    (src / "good.json").write_text('{"a": 1, "b": [1, 2, 3]}\n')
    (src / "big.bin").write_bytes(os.urandom(300_000))
    subprocess.run(["cp", src / "good.json", m / "input/raw/"], check=True)
    subprocess.run(["cp", src / "big.bin", m / "input/processed/"], check=True)
    code = (
        "import os, sys, time\n"
        "m = sys.argv[1]\n"
        "open(f'{m}/input/raw/bad.json', 'w').write('{not json')\n"
        "open(f'{m}/input/raw/ids.csv', 'w').write('name,ssn\\nbob,123-45-6789\\n')\n"
        "open(f'{m}/input/processed/old.csv', 'w').write('x' * 4000)\n"
        "os.utime(f'{m}/input/processed/old.csv', (time.time(), time.time() - 100 * 86400))\n"
        "os.makedirs(f'{m}/output/exports/q1')\n"
        "open(f'{m}/output/exports/q1/open.txt', 'w').write('y' * 7000)\n"
        "os.chmod(f'{m}/output/exports/q1/open.txt', 0o666)\n"
        "os.symlink('/etc/passwd', f'{m}/input/processed/passwd')\n"
    )
    subprocess.run(["python3", "-c", code, m], check=True)
    return {"good.json": 25, "big.bin": 300_000, "bad.json": 9, "ids.csv": 25, "old.csv": 4000, "open.txt": 7000}


def tree(store: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of everything in the store. Not SQLite's -wal and
    -shm files: a read-only connection to a WAL database makes them when
    they are missing and cannot remove them (empty; the next mount uses them)."""
    out = {}
    for p in sorted(store.rglob("*")):
        if p.name.endswith(("-wal", "-shm")):
            continue
        st = p.lstat()
        out[str(p.relative_to(store))] = (st.st_size, st.st_mtime_ns)
    return out


@needs_fuse
def test_report_of_a_store_written_through_the_mount(store: Path, tmp_path: Path) -> None:
    m = tmp_path / "mnt"
    with mounted(store, m):
        sizes = write_through_mount(m, tmp_path)
        live = seldonfs("report", m, "--json")  # no lock: works while mounted
        assert live.returncode == 0, live.stderr
        assert json.loads(live.stdout)["store"]["mountpoint"] == str(m)
        assert json.loads(live.stdout)["totals"]["files"] == 6
    before = tree(store)
    r = seldonfs("report", store, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    t = rep["totals"]
    assert (t["files"], t["bytes"], t["symlinks"]) == (6, sum(sizes.values()), 1)
    assert t["stored_bytes"] >= t["bytes"]
    folders = by(rep["folders"], "folder")
    assert folders["input/processed"]["files"] == 2 and folders["input/processed"]["bytes"] == 304_000
    assert (folders["input/quarantine"]["files"], folders["input/quarantine"]["bytes"]) == (2, 34)
    assert folders["input"]["bytes"] == 304_059 and folders["output/exports"]["bytes"] == 7000
    assert folders["input"]["share"] == round(304_059 / t["bytes"], 4)
    assert [(os.path.basename(x["path"]), x["bytes"]) for x in rep["largest"][:3]] == [
        ("big.bin", 300_000), ("open.txt", 7000), ("old.csv", 4000)]
    assert by(rep["ages"], "bucket")["90-365 days"]["bytes"] == 4000
    assert by(rep["ages"], "bucket")["< 1 hour"]["files"] == 5
    assert by(rep["extensions"], "extension")[".csv"] == {"extension": ".csv", "files": 2, "bytes": 4025}
    problems = {(e["path"], e["category"]) for e in rep["permissions"]["entries"]}
    assert problems == {("output/exports/q1/open.txt", "world-writable"), ("input/processed/passwd", "symlink")}
    c = rep["classification"]
    assert by(c["by_verdict"], "verdict")["ok"]["files"] == 1
    assert by(c["by_verdict"], "verdict")["quarantined"]["files"] == 2
    assert by(c["by_mime"], "mime")["application/json"]["bytes"] == 25
    assert {x["reason"] for x in c["backlog"]["by_reason"]} == {"not valid JSON", "contains a US social security number"}
    assert c["backlog"]["files"] == 2
    assert by(rep["janitor"]["by_kind"], "kind")["archive"] == {"kind": "archive", "entries": 1, "bytes": 4000}

    text = seldonfs("report", store)
    assert text.returncode == 0, text.stderr
    assert "6 files, " in text.stdout and f"({sum(sizes.values()):,} bytes;" in text.stdout
    assert "1 ok (25 B)" in text.stdout and "Quarantine backlog: 2 files" in text.stdout
    out = tmp_path / "report.html"
    h = seldonfs("report", store, "--html", out)
    assert h.returncode == 0, h.stderr
    page = check_html(out.read_text())
    assert page.svgs >= 5 and page.svg_titles == page.svgs
    words = " ".join(page.texts)
    assert "big.bin" in words and "293.0 KiB" in words and "contains a US social security number" in words
    assert tree(store) == before  # read only: nothing moved, not even the catalog


def test_report_usage_errors(tmp_path: Path) -> None:
    r = seldonfs("report", tmp_path)
    assert r.returncode == 14 and len(r.stderr.strip().splitlines()) == 1
    assert seldonfs("report", tmp_path, "--json", "--html", tmp_path / "x.html").returncode == 2


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)")
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    items = [d("input"), d("input/raw"), f("input/raw/a.json", 2048), f("temp/x.tmp", 10, 2 * D),
             Item("input/l", "symlink", mode=0o777, target="/etc")]
    rep = report.build(NOW, SEED, items, [Commit("input/raw/a.json", 2048, "application/json", "ok", ""),
                                          Commit("input/raw/b.json", 5, "text/plain", "quarantined", "not valid JSON: x")],
                       [], 0, {"root": "/s", "encrypted": False})
    page = tmp_path / "r.html"
    page.write_text(render_html(rep))
    r = subprocess.run([REPO / "scripts/check-report-html", page, tmp_path / "r.png"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SeldonFS report: /s" in r.stdout and (tmp_path / "r.png").stat().st_size > 10_000
