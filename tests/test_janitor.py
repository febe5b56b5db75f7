"""Retention planning as a pure function of time, rules and inventory, and
the dry-run command that shows it. The clock is an argument: no sleeps."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import time
import tomllib
from pathlib import Path

from seldonfs import config
from seldonfs import janitor
from seldonfs.janitor import Entry

from .conftest import init_store, key_args, mounted, needs_fuse, seldonfs

H, D = 3600.0, 86400.0
NOW = 1_800_000_000.0
NOW_REAL = time.time()


def plan(now: float, c: config.Config, entries: list[Entry]) -> list[janitor.Action]:
    return list(janitor.plan(now, c, entries))


def cfg(text: str) -> config.Config:
    return config.parse(tomllib.loads(text), "test.toml")


def f(rel: str, age: float, size: int = 100, atime_age: float | None = None) -> Entry:
    return Entry(rel, size, NOW - age, NOW - (age if atime_age is None else atime_age))


def kinds(actions) -> list[tuple[str, str]]:
    return sorted((a.kind, a.rel) for a in actions)


def test_age_patterns_and_actions() -> None:
    c = cfg(
        '[folders."temp"]\npatterns = { "*.tmp" = "12h", "*.log" = "7d" }\nmax_age = "30d"\n'
        '[folders."raw"]\nmax_age = "30d"\naction = "archive"\narchive_to = "archive/in"\n'
        '[folders."reports"]\narchive_after = "90d"\narchive_to = "archive/out"\nmax_age = "365d"\n'
        '[folders."drop"]\nmax_age = "1h"\naction = "move"\nmove_to = "done"\n'
    )
    entries = [
        f("temp/a.tmp", 13 * H), f("temp/b.tmp", 11 * H), f("temp/c.log", 8 * D), f("temp/d.bin", 31 * D),
        f("temp/e.bin", 29 * D), f("raw/x.json", 31 * D), f("raw/y.json", 1 * D),
        f("reports/old.csv", 400 * D), f("reports/mid.csv", 100 * D), f("reports/new.csv", 10 * D),
        f("drop/z", 2 * H), f("elsewhere/old", 9999 * D),
    ]
    acts = plan(NOW, c, entries)
    assert kinds(acts) == [
        ("archive", "raw/x.json"), ("archive", "reports/mid.csv"),
        ("delete", "reports/old.csv"), ("delete", "temp/a.tmp"), ("delete", "temp/c.log"),
        ("delete", "temp/d.bin"), ("move", "drop/z"),
    ]
    by = {a.rel: a for a in acts}
    assert by["raw/x.json"].dest == "archive/in" and by["drop/z"].dest == "done"
    assert "matches *.tmp, older than 12h" in by["temp/a.tmp"].reason
    assert "older than 30d (mtime)" in by["temp/d.bin"].reason


def test_size_and_count_caps_oldest_or_lru_first() -> None:
    c = cfg(
        '[folders."proc"]\nmax_total = 250\n'
        '[folders."cache"]\nmax_total = 250\nevict = "lru"\n'
        '[folders."few"]\nmax_files = 2\n'
    )
    entries = [
        f("proc/1", 5 * H), f("proc/2", 4 * H), f("proc/3", 3 * H), f("proc/4", 2 * H),
        # LRU: the oldest by mtime was read a minute ago, so it stays
        f("cache/a", 5 * H, atime_age=60), f("cache/b", 4 * H), f("cache/c", 3 * H), f("cache/d", 2 * H),
        f("few/x", 3 * H), f("few/y", 2 * H), f("few/z", 1 * H),
    ]
    assert kinds(plan(NOW, c, entries)) == [
        ("delete", "cache/b"), ("delete", "cache/c"),
        ("delete", "few/x"),
        ("delete", "proc/1"), ("delete", "proc/2"),
    ]


def test_time_moves_the_plan_and_empty_dirs_go() -> None:
    c = cfg('[folders."temp/sessions"]\nmax_age = "48h"\nremove_empty_dirs = true\n')
    entries = [
        Entry("temp/sessions/s1", 0, NOW, NOW, is_dir=True), f("temp/sessions/s1/data", 47 * H),
        Entry("temp/sessions/s2", 0, NOW, NOW, is_dir=True),
    ]
    assert kinds(plan(NOW, c, entries)) == [("rmdir", "temp/sessions/s2")]
    later = plan(NOW + 2 * H, c, entries)  # the clock moves, nothing sleeps
    assert kinds(later) == [
        ("delete", "temp/sessions/s1/data"), ("rmdir", "temp/sessions/s1"), ("rmdir", "temp/sessions/s2"),
    ]


def test_every_profile_plans() -> None:
    for name in config.profile_names():
        c = config.parse(tomllib.loads(config.profile_text(name)), name)
        paths = [r.path.replace("*", "x") for r in c.folders]
        entries = [f(f"{p}/file.tmp", 10 * 365 * D) for p in paths]
        acts = plan(NOW, c, entries)
        with_age = {r.path.replace("*", "x") for r in c.folders if r.max_age or r.patterns or r.archive_after}
        assert {a.rel.rsplit("/", 1)[0] for a in acts} >= with_age - {p for p in with_age if "archive" in p}, name


@needs_fuse
def test_dry_run_lists_and_changes_nothing(tmp_path: Path) -> None:
    store = init_store(tmp_path / "store", encrypted=False)
    with mounted(store, tmp_path / "mnt"):
        (tmp_path / "mnt" / "temp" / "processing" / "job.tmp").write_text("x" * 10)
        (tmp_path / "mnt" / "temp" / "cache" / "blob").write_text("y" * 20)
    before = sorted(p for p in (store / "data").rglob("*"))
    r = seldonfs("janitor", store, "--dry-run", "--older-than", "13h")
    assert r.returncode == 0, r.stderr
    assert "delete   temp/processing/job.tmp" in r.stdout and "matches *.tmp" in r.stdout
    assert "dry run: 1 files, 10 bytes (1 delete)" in r.stdout
    assert sorted(p for p in (store / "data").rglob("*")) == before
    r = seldonfs("janitor", store, "--dry-run", "--older-than", "8d", "--folder", "temp/cache")
    assert "temp/cache/blob" in r.stdout and "job.tmp" not in r.stdout
    assert os.path.exists(store / "data" / "temp" / "processing" / "job.tmp")


@needs_fuse
def test_run_deletes_archives_and_records(store: Path, tmp_path: Path) -> None:
    m = tmp_path / "mnt"
    outside = tmp_path / "outside.tmp"
    outside.write_text("not the store's")
    old = 400 * D
    with mounted(store, m):
        (m / "temp" / "processing" / "old.tmp").write_text("x" * 10)
        (m / "temp" / "processing" / "new.tmp").write_text("y")
        (m / "output" / "reports" / "q1.csv").write_text("a,b\n1,2\n" * 100)
        os.symlink(outside, m / "temp" / "processing" / "link.tmp")
        for p, age in (("temp/processing/old.tmp", old), ("output/reports/q1.csv", 100 * D)):
            os.utime(m / p, (NOW_REAL - age, NOW_REAL - age))  # reports: archived after 90 d
        r = seldonfs("janitor", store, *key_args(store))
        assert r.returncode == 11  # mounted: the store is locked
    r = seldonfs("janitor", store, *key_args(store))
    assert r.returncode == 0, r.stderr
    assert "done: 1 archive, 1 delete" in r.stdout, r.stdout
    with mounted(store, m):
        assert not (m / "temp" / "processing" / "old.tmp").exists()
        assert (m / "temp" / "processing" / "new.tmp").exists()
        assert os.path.islink(m / "temp" / "processing" / "link.tmp")  # never followed, never removed
        arch = m / "archive" / "output_archive" / "output" / "reports"
        assert gzip.decompress((arch / "q1.csv.gz").read_bytes()) == b"a,b\n1,2\n" * 100
        meta = json.loads((arch / "q1.csv.gz.meta.json").read_text())
        assert meta["original"] == "output/reports/q1.csv" and meta["codec"] == "gzip"
        assert meta["sha256"] == hashlib.sha256(b"a,b\n1,2\n" * 100).hexdigest()
        assert not (m / "output" / "reports" / "q1.csv").exists()
    assert outside.read_text() == "not the store's"
    recs = [json.loads(l) for l in seldonfs("audit", store, "--json").stdout.splitlines()]
    assert {(r["op"], r["path"]) for r in recs if r["op"].startswith("janitor")} == {
        ("janitor-delete", "temp/processing/old.tmp"), ("janitor-archive", "output/reports/q1.csv"),
    }
    assert seldonfs("audit", "verify", store, *key_args(store)).returncode == 0


@needs_fuse
def test_mount_janitor_spares_open_and_locked_files(store: Path, tmp_path: Path) -> None:
    import fcntl
    import subprocess
    import sys

    m = tmp_path / "mnt"
    with mounted(store, m):
        d = m / "temp" / "processing"
        for n in ("plain.tmp", "open.tmp", "locked.tmp"):
            (d / n).write_text(n)
        holder = subprocess.Popen(  # another process keeps one open
            [sys.executable, "-c", "import sys, time; f = open(sys.argv[1]); print(1, flush=True); time.sleep(60)",
             str(d / "open.tmp")], stdout=subprocess.PIPE, text=True)
        try:
            holder.stdout.readline()
            lf = open(d / "locked.tmp")
            fcntl.flock(lf, fcntl.LOCK_EX)  # a lock needs an open file: both reasons hold
            r = seldonfs("janitor", m, "--older-than", "13h")
            assert r.returncode == 0, r.stderr
            assert "skipped  temp/processing/open.tmp: open" in r.stdout
            assert re.search(r"skipped  temp/processing/locked.tmp: (open|locked)", r.stdout)
            assert sorted(os.listdir(d)) == ["locked.tmp", "open.tmp"]
            lf.close()
        finally:
            holder.kill()
            holder.wait()
            holder.stdout.close()
        r = seldonfs("janitor", m, "--older-than", "13h")  # retried: now they go
        assert "done in" in r.stdout and "2 delete" in r.stdout, r.stdout
        assert os.listdir(d) == []
