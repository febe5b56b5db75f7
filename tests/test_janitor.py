"""Retention planning as a pure function of time, rules and inventory, and
the dry-run command that shows it. The clock is an argument: no sleeps."""

from __future__ import annotations

import errno
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

import pytest

from .conftest import archive_day, init_store, key_args, log_problems, mounted, needs_fuse, seldonfs, small_disk, wait_for

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
    r = seldonfs("janitor", store, "--dry-run", "--as-of", "+13h")
    assert r.returncode == 0, r.stderr
    assert "delete   temp/processing/job.tmp" in r.stdout and "matches *.tmp" in r.stdout
    assert "dry run: 1 files, 10 bytes (1 delete)" in r.stdout
    assert sorted(p for p in (store / "data").rglob("*")) == before
    r = seldonfs("janitor", store, "--dry-run", "--as-of", "+8d", "--folder", "temp/cache")
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
        (m / "input" / "raw" / "old.json").write_text("{}")  # committed: a file record
        (raw,) = (m / "input" / "raw").iterdir()
        os.symlink(outside, m / "temp" / "processing" / "link.tmp")
        for p, age in (("temp/processing/old.tmp", old), ("output/reports/q1.csv", 100 * D),
                       (f"input/raw/{raw.name}", 31 * D)):
            os.utime(m / p, (NOW_REAL - age, NOW_REAL - age))  # reports: archived after 90 d, raw after 30
        r = seldonfs("janitor", store, *key_args(store))
        assert r.returncode == 11  # mounted: the store is locked
    r = seldonfs("janitor", store, *key_args(store))
    assert r.returncode == 0, r.stderr
    assert "done: 2 archive, 1 delete" in r.stdout, r.stdout
    with mounted(store, m):
        assert not (m / "temp" / "processing" / "old.tmp").exists()
        assert (m / "temp" / "processing" / "new.tmp").exists()
        assert os.path.islink(m / "temp" / "processing" / "link.tmp")  # never followed, never removed
        arch = archive_day(m / "archive" / "output_archive")
        assert gzip.decompress((arch / "q1.csv.gz").read_bytes()) == b"a,b\n1,2\n" * 100
        meta = json.loads((arch / "q1.csv.gz.meta.json").read_text())
        assert meta["original"] == "output/reports/q1.csv" and meta["codec"] == "gzip"
        assert meta["sha256"] == hashlib.sha256(b"a,b\n1,2\n" * 100).hexdigest()
        assert not (m / "output" / "reports" / "q1.csv").exists()
    assert outside.read_text() == "not the store's"
    recs = [json.loads(l) for l in seldonfs("audit", store, "--json").stdout.splitlines()]
    assert {(r["op"], r["path"]) for r in recs if r["op"].startswith("janitor")} == {
        ("janitor-delete", "temp/processing/old.tmp"), ("janitor-archive", "output/reports/q1.csv"),
        ("janitor-archive", f"input/raw/{raw.name}"),
    }
    assert seldonfs("audit", "verify", store, *key_args(store)).returncode == 0
    r = seldonfs("fsck", store, *key_args(store))  # the archived file's record is history, not drift
    assert r.returncode == 0, r.stdout + r.stderr


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
            r = seldonfs("janitor", m, "--as-of", "+13h")
            assert r.returncode == 0, r.stderr
            assert "skipped  temp/processing/open.tmp: open" in r.stdout
            assert re.search(r"skipped  temp/processing/locked.tmp: (open|locked)", r.stdout)
            assert sorted(os.listdir(d)) == ["locked.tmp", "open.tmp"]
            lf.close()
        finally:
            holder.kill()
            holder.wait()
            holder.stdout.close()
        r = seldonfs("janitor", m, "--as-of", "+13h")  # retried: now they go
        assert "done in" in r.stdout and "2 delete" in r.stdout, r.stdout
        assert os.listdir(d) == []


def test_orphan_sessions_go_whole() -> None:
    c = cfg('[janitor]\norphan_age = "24h"\n[folders."temp/sessions"]\norphan_sessions = true\nmax_age = "48h"\n')
    d = lambda rel, alive=None, age=0.0, job="": Entry(rel, 0, NOW - age, NOW - age, True, alive, job)  # noqa: E731
    entries = [
        d("temp/sessions/gone", alive=False), f("temp/sessions/gone/a", 1 * H),
        d("temp/sessions/gone/sub"), f("temp/sessions/gone/sub/b", 1 * H),
        d("temp/sessions/alive", alive=True, age=30 * D), f("temp/sessions/alive/c", 1 * H),
        d("temp/sessions/unknown-old", age=25 * H), f("temp/sessions/unknown-old/e", 1 * H),
        d("temp/sessions/unknown-new", age=23 * H),
        d("temp/sessions/alive/inner", alive=False),  # only direct subfolders are sessions
    ]
    acts = plan(NOW, c, entries)
    assert kinds(acts) == [
        ("delete", "temp/sessions/gone/a"), ("delete", "temp/sessions/gone/sub/b"),
        ("delete", "temp/sessions/unknown-old/e"),
        ("rmdir", "temp/sessions/gone"), ("rmdir", "temp/sessions/gone/sub"),
        ("rmdir", "temp/sessions/unknown-old"),
    ]
    assert [a.rel for a in acts if a.kind == "rmdir"][-1] in ("temp/sessions/gone", "temp/sessions/unknown-old")
    assert {a.reason for a in acts if "gone/" in a.rel} == {"orphan session: its creator is gone"}


def test_crash_plan_takes_one_jobs_temp_folders() -> None:
    c = cfg('[folders."temp/jobs"]\nmax_age = "24h"\n')
    entries = [
        Entry("temp/jobs/J1", 0, NOW, NOW, True), f("temp/jobs/J1/chunk-0", 60),
        Entry("temp/jobs/J1/out", 0, NOW, NOW, True), f("temp/jobs/J1/out/x", 60),
        Entry("temp/scratch", 0, NOW, NOW, True, True, "J1"), f("temp/scratch/y", 60),  # made by J1's process
        Entry("temp/jobs/J2", 0, NOW, NOW, True), f("temp/jobs/J2/chunk-0", 60),
        Entry("output/J1", 0, NOW, NOW, True), f("output/J1/result", 60),  # not temp: kept
    ]
    assert kinds(janitor.crash_plan(c, entries, "J1")) == [
        ("delete", "temp/jobs/J1/chunk-0"), ("delete", "temp/jobs/J1/out/x"), ("delete", "temp/scratch/y"),
        ("rmdir", "temp/jobs/J1"), ("rmdir", "temp/jobs/J1/out"), ("rmdir", "temp/scratch"),
    ]


def test_emergency_plan_by_priority_then_age_and_only_deleting_rules() -> None:
    c = cfg(
        '[folders."temp/cache"]\nmax_age = "7d"\npriority = 10\nevict = "lru"\n'
        '[folders."temp/work"]\nmax_age = "3d"\npriority = 20\n'
        '[folders."output"]\nmax_age = "1y"\naction = "archive"\narchive_to = "archive"\npriority = 1\n'
        '[folders."keep"]\n'
    )
    entries = [
        f("temp/work/old", 5 * H, 100), f("temp/cache/read-now", 9 * H, 100, atime_age=0),
        f("temp/cache/read-long-ago", 1 * H, 100, atime_age=8 * H), f("output/r.csv", 99 * D, 10**6),
        f("keep/k", 99 * D, 10**6), f("temp/work/new", 1 * H, 100),
    ]
    got = lambda need: [a.rel for a in janitor.emergency_plan(c, entries, need)]  # noqa: E731
    assert got(0) == []
    assert got(150) == ["temp/cache/read-long-ago", "temp/cache/read-now"]
    assert got(10**9) == ["temp/cache/read-long-ago", "temp/cache/read-now", "temp/work/old", "temp/work/new"]


def test_schedules_interval_and_cron() -> None:
    from seldonfs.janitor import next_time

    t = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
    assert next_time("1h", t) == t + 3600
    assert next_time("0 2 * * *", t) % 86400 == 2 * 3600  # the next 02:00 UTC
    assert 0 < next_time("30 */6 * * *", t) - t <= 6 * 3600


def _running_until_stdin_closes(*argv: str):
    import subprocess

    return subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@needs_fuse
def test_orphan_session_of_a_process_that_exited(tmp_path: Path) -> None:
    """A real child makes a session folder and exits: its folder goes; one
    made by mkdir(1) from a script that still runs stays until it ends."""
    import subprocess
    import sys

    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "mnt"
    with mounted(store, m):
        s = m / "temp" / "sessions"
        code = "import os, sys; os.makedirs(sys.argv[1] + '/sub'); open(sys.argv[1] + '/sub/f', 'w').write('x')"
        subprocess.run([sys.executable, "-c", code, str(s / "done")], check=True)
        script = _running_until_stdin_closes("sh", "-c", f"mkdir {s / 'running'} && echo made && read x")
        try:
            assert script.stdout.readline() == "made\n"
            (s / "running" / "g").write_text("y")
            rec = json.loads(os.getxattr(s / "running", "user.seldon.creator"))
            assert rec["pid"] == script.pid and rec["comm"] == "sh"  # mkdir(1) handed it to the script
            r = seldonfs("janitor", m)
            assert r.returncode == 0, r.stderr
            assert sorted(os.listdir(s)) == ["running"]
        finally:
            script.stdin.close()
            script.wait()
            script.stdout.close()
        r = seldonfs("janitor", m)
        assert "1 delete" in r.stdout and os.listdir(s) == [], r.stdout
    recs = [json.loads(l) for l in seldonfs("audit", store, "--json").stdout.splitlines()]
    assert ("janitor-rmdir", "temp/sessions/done/sub") in {(r["op"], r["path"]) for r in recs}
    runs = seldonfs("janitor", store, "--runs", "--json").stdout.splitlines()
    assert [json.loads(r)["trigger"] for r in runs] == ["request", "request"]


@needs_fuse
def test_crash_cleanup_through_the_mount(tmp_path: Path) -> None:
    import subprocess

    store = init_store(tmp_path / "store", "--profile", "pixcrawler", encrypted=False)
    m = tmp_path / "mnt"
    with mounted(store, m):
        jobs = m / "temp" / "jobs"
        env = {**os.environ, "SELDON_JOB_ID": "crawl-7"}
        subprocess.run(["mkdir", "-p", str(jobs / "crawl-7" / "chunks"), str(m / "temp" / "scratch-a")], check=True, env=env)
        (jobs / "crawl-7" / "chunks" / "0001.jpg").write_bytes(b"\xff\xd8" + b"0" * 100)
        (m / "temp" / "scratch-a" / "part").write_text("z")
        (jobs / "crawl-8").mkdir()
        (jobs / "crawl-8" / "keep").write_text("k")
        r = seldonfs("janitor", m, "--crash", "crawl-7")
        assert r.returncode == 0, r.stderr
        assert "2 delete" in r.stdout and "3 rmdir" in r.stdout, r.stdout
        assert sorted(os.listdir(jobs)) == ["crawl-8"] and not (m / "temp" / "scratch-a").exists()


@needs_fuse
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_emergency_cleanup_on_a_small_filesystem(tmp_path: Path) -> None:
    """A 32 MiB tmpfs holds the store; filled past the profile's emergency
    level (90 %), the mount's own disk check cleans by priority until usage
    is under its warning level (80 %)."""
    from seldonfs.host import disk_usage

    with small_disk(tmp_path / "small", 32) as small:
        store = init_store(small / "store", encrypted=False)
        conf = store / "seldonfs.toml"
        conf.write_text(conf.read_text().replace('check_every = "5m"', 'check_every = "1s"', 1))
        assert 'check_every = "1s"' in conf.read_text()
        m = tmp_path / "mnt"
        with mounted(store, m, expect_log_problems=True):
            chunk = os.urandom(1 << 20)
            for i in range(6):  # priority 10 first (temp/cache), oldest first
                (m / "temp" / "cache" / f"c{i}.bin").write_bytes(chunk)
                os.utime(m / "temp" / "cache" / f"c{i}.bin", (NOW_REAL - 1000 + i, NOW_REAL - 1000 + i))
            for i in range(6):
                (m / "temp" / "processing" / f"p{i}.bin").write_bytes(chunk)
            _, used, total = disk_usage(small)
            (small / "other").write_bytes(os.urandom(total * 93 // 100 - used))  # something else fills the disk
            wait_for(lambda: disk_usage(small)[0] < 80, timeout=30, what="emergency cleanup")
            left = sorted(os.listdir(m / "temp" / "cache"))
            assert (small / "other").exists()
            assert len(left) < 6 and left == [f"c{i}.bin" for i in range(6 - len(left), 6)], left  # oldest first
            assert len(os.listdir(m / "temp" / "processing")) == 6  # priority 20: not needed
        assert any("emergency" in l for l in log_problems(store))  # the alert
        recs = [json.loads(l) for l in seldonfs("audit", store, "--json").stdout.splitlines()]
        assert any(r["op"] == "janitor-delete" and "emergency" in r["detail"] for r in recs)


@needs_fuse
def test_each_folder_runs_on_its_own_schedule(tmp_path: Path) -> None:
    """A folder with `schedule = "1s"` is cleaned by the mount by itself;
    one on the daily default is not, until its time comes."""
    store = init_store(tmp_path / "store", encrypted=False)
    conf = store / "seldonfs.toml"
    text = conf.read_text().replace('schedule = "1h"                          # a 1 h age needs an hourly run',
                                    'schedule = "1s"')
    assert 'schedule = "1s"' in text
    conf.write_text(text)
    m = tmp_path / "mnt"
    with mounted(store, m):
        for folder in ("temp/cleanup", "temp/working"):  # max_age 1h / 72h
            p = m / folder / "old.bin"
            p.write_text("x")
            os.utime(p, (NOW_REAL - 80 * H, NOW_REAL - 80 * H))
        wait_for(lambda: not (m / "temp" / "cleanup" / "old.bin").exists(), timeout=20, what="the 1 s schedule")
        assert (m / "temp" / "working" / "old.bin").exists()  # its rules run at 02:00
    runs = [json.loads(r) for r in seldonfs("janitor", store, "--runs", "--json").stdout.splitlines()]
    assert runs and {r["trigger"] for r in runs} == {"schedule"} and "temp/cleanup" in runs[-1]["rules"]


def test_a_command_request_reads_each_field_by_name() -> None:
    """The JSON `seldonfs janitor MOUNTPOINT` writes: --emergency sets
    emergency (not the chunk field after it), --as-of `later`, --older-than
    `older_than`."""
    req = janitor.Request.parse(json.dumps(
        {"later": 3600, "older_than": 86400, "folder": "/temp/", "rule": "temp/processing", "crash": "",
         "emergency": True}).encode())
    assert (req.trigger, req.emergency, req.chunk, req.crash) == ("emergency", True, None, "")
    assert (req.later, req.older_than, req.folder, req.rules) == (3600.0, 86400.0, "temp", frozenset({"temp/processing"}))
    assert janitor.Request.parse(b"").older_than == 0.0
    for bad in (b"[1", b"[" * 100_000, b'"x"'):  # nested past json.loads's stack: EINVAL too, not EIO
        with pytest.raises(OSError) as e:
            janitor.Request.parse(bad)
        assert e.value.errno == errno.EINVAL
    assert janitor.creator_alive(b"[" * 100_000) == (None, "")


def test_older_than_plans_only_older_files_under_temp() -> None:
    cfg = config.parse(tomllib.loads(config.profile_text("meetara")), "meetara")
    now = 1_000_000_000.0
    entries = [Entry("temp/downloads/old.bin", 1, now - 2 * 86400, now), Entry("temp/downloads/new.bin", 1, now - 3600, now),
               Entry("temp/processing/old.tmp", 1, now - 86401, now), Entry("elsewhere/old.bin", 1, now - 9e6, now)]
    got = [a.rel for a in janitor.older_plan(now, cfg, entries, 86400)]
    assert got == ["temp/downloads/old.bin", "temp/processing/old.tmp"]
    assert [a.kind for a in janitor.older_plan(now, cfg, entries, 86400)] == ["delete", "delete"]
    seldon = config.parse(tomllib.loads(config.profile_text("seldon")), "seldon")
    old = [Entry("archive/compliance/a.gz", 1, now - 2 * 86400, now), Entry("temp/cache/c", 1, now - 2 * 86400, now)]
    assert [a.rel for a in janitor.older_plan(now, seldon, old, 86400)] == ["temp/cache/c"]  # temp/ only
    assert len(list(janitor.older_plan(now, seldon, old, 86400, everywhere=True))) == 2  # --folder/--rule given
