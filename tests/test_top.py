"""seldonfs top: the frame as a pure function of two hand-made snapshots
(rates, missing keys, small terminals), `--once` on a real mount, and the
curses view under tmux (skipped without tmux)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seldonfs import top

from .conftest import SELDONFS, mounted, needs_fuse, seldonfs, wait_for

NOW = 1_700_000_000.0


def snap_a() -> dict:
    """A full snapshot in the schema of stats.json."""
    return {
        "store": "/srv/store", "mountpoint": "/mnt/seldon", "pid": 4242, "uptime_s": 3725.0,
        "open_files": 3, "inodes_known": 120, "damaged_reads": 0, "audit_records": 1234,
        "policy": {"renamed": 4}, "metrics_url": "http://127.0.0.1:9464/metrics",
        "ops": {"create": {"OK": 10, "EACCES": 2}, "read": {"OK": 100}, "write": {"OK": 50},
                "getattr": {"OK": 1000}},
        "bytes": {"read": 0, "written": 0},
        "folders": {"input": {"files": 13, "bytes": 3000 + (10 << 20)}, "input/raw": {"files": 3, "bytes": 3000},
                    "input/processed": {"files": 10, "bytes": 10 << 20},
                    "temp": {"files": 1, "bytes": 5}, "temp/cache": {"files": 1, "bytes": 5}},
        "disk": {"percent": 42.0, "used": 42 << 30, "total": 100 << 30, "warning": 80, "emergency": 95},
        "validation": {"ok": 10, "quarantined": 2}, "quarantine_files": 2,
        "janitor": {"running": False, "runs": 3, "done": 10, "skipped": 1, "freed": 1 << 20,
                    "last": {"summary": "deleted 4 files", "seconds": 0.25, "trigger": "schedule"}},
        "alerts": [],
    }


def snap_b() -> dict:
    """snap_a two seconds later."""
    b = copy.deepcopy(snap_a())
    b["uptime_s"] += 2
    b["ops"]["create"] = {"OK": 20, "EACCES": 3}  # +11: 5.5/s, 1 error
    b["ops"]["read"]["OK"] = 300  # +200: 100/s
    b["ops"]["getattr"]["OK"] = 1100  # +100: 50/s
    b["ops"]["mkdir"] = {"OK": 4}  # new since a: 2/s
    b["bytes"] = {"read": 20 << 20, "written": 4 << 20}
    return b


def text(lines: list[top.Line]) -> str:
    return top.plain(lines)


def line_with(lines: list[top.Line], start: str) -> top.Line:
    for line in lines:
        if "".join(t for t, _ in line).startswith(start):
            return line
    raise AssertionError(f"no line starting {start!r} in\n{text(lines)}")


def styles_of(line: top.Line) -> set[str]:
    return {s for _, s in line}


def test_rates_from_two_snapshots() -> None:
    out = text(top.frame(snap_a(), snap_b(), 2.0, 100, None))
    # 11 + 200 + 100 + 4 + 0 operations in 2 s; 1 new error.
    assert "Operations  157.5/s total  errors 0.5/s  (1,477 ops, 3 errors since mount)" in out
    ops = [l.split()[0] for l in out.splitlines() if re.match(r"  \w+ +[\d.,]+/s", l)]
    assert ops == ["read", "getattr", "create", "mkdir", "write"], out  # by rate
    assert re.search(r"  create +5\.5/s +23 total  3 errors \(EACCES 3\)", out)
    assert "read 10.00 MiB/s  write 2.00 MiB/s  open files 3" in out
    assert "up 01:02:07" in out and "/mnt/seldon" in out and "pid 4242" in out


def test_first_frame_and_counter_reset_have_no_rates() -> None:
    out = text(top.frame(None, snap_b(), 0.0, 100, None))
    assert "Operations  – total  errors –" in out and "read –  write –" in out
    assert "1,477 ops" in out  # totals need one snapshot only
    restarted = text(top.frame(snap_b(), snap_a(), 2.0, 100, None))  # counters went down
    assert "read –  write –" in restarted and "/s" not in restarted.split("Throughput")[1].split("\n")[0]
    assert not re.search(r"-\d", restarted), "no negative rate"


def test_folders_disk_janitor_checks() -> None:
    out = text(top.frame(snap_a(), snap_b(), 2.0, 100, None))
    folders = [l.split()[0] for l in out.splitlines() if re.match(r"  \S+/\S+ ", l)]
    assert folders == ["input/processed", "input/raw", "temp/cache"]  # largest first
    assert "5 folders, 14 files, 10.0 MiB" in out
    assert "42.0%  42.0 GiB of 100.0 GiB  (warn 80%, emerg 95%)" in out
    assert "Janitor     idle  runs 3  done 10  skipped 1  freed 1.0 MiB" in out
    assert re.search(r"last run: deleted 4 files  \(0\.[23] s, schedule\)", out), out
    assert "ok 10  quarantined 2  quarantine backlog 2 files" in out
    assert "damaged reads 0  audit records 1,234" in out
    assert "Alerts      none" in out


@pytest.mark.parametrize("pct,level", [(42.0, "ok"), (80.0, "warning"), (96.5, "critical")])
def test_disk_colour_follows_thresholds(pct: float, level: str) -> None:
    b = snap_b()
    b["disk"]["percent"] = pct
    line = line_with(top.frame(snap_a(), b, 2.0, 100, None), "Disk")
    assert level in styles_of(line)
    del b["disk"]["warning"], b["disk"]["emergency"]
    assert styles_of(line_with(top.frame(snap_a(), b, 2.0, 100, None), "Disk")) <= {"", "head", "dim"}


def test_alerts_critical_first_coloured() -> None:
    b = snap_b()
    b["alerts"] = [
        {"kind": "quarantine", "level": "warning", "message": "12 files in quarantine", "at": NOW},
        {"kind": "disk", "level": "critical", "message": "disk 96% used", "at": NOW - 60},
    ]
    lines = top.frame(snap_a(), b, 2.0, 100, None)
    out = text(lines)
    assert "Alerts      2 active (1 critical)" in out
    i, j = out.index("disk: disk 96% used"), out.index("quarantine: 12 files in quarantine")
    assert i < j
    assert "critical" in styles_of(line_with(lines, "Alerts"))


def test_janitor_null_is_no_janitor() -> None:
    b = snap_b()
    b["janitor"] = None
    assert "Janitor     none in this mount" in text(top.frame(snap_a(), b, 2.0, 100, None))


MISSING = [
    {},
    {"store": "/s", "mountpoint": "/m", "pid": 1, "uptime_s": 1.0, "open_files": 0, "damaged_reads": 0,
     "audit_records": None, "policy": {}},  # what a mount wrote before issue 8
    # Wrong types everywhere: still a frame.
    {"ops": [], "bytes": "x", "folders": {"a": None, "b": {"files": "3"}}, "disk": 7, "validation": [],
     "janitor": {"running": "yes", "last": "x"}, "alerts": [1, {"level": 3}], "pid": True, "uptime_s": -1},
    {"ops": {"read": {"OK": None, "EIO": "2"}, "write": 5}, "disk": {"percent": None}, "janitor": {"last": {}}},
]


@pytest.mark.parametrize("b", MISSING, ids=range(len(MISSING)))
def test_missing_or_odd_keys_show_a_dash(b: dict) -> None:
    for a in (None, b, snap_a(), {"ops": "nonsense"}, []):
        lines = top.frame(a, b, 2.0, 80, 24, footer="q quit")  # type: ignore[arg-type]
        out = text(lines)
        assert len(lines) == 24 and "–" in out
        for title in ("Operations", "Throughput", "Disk", "Folders", "Janitor", "Validation", "Integrity", "Alerts"):
            assert f"\n{title}" in out, title
    sparse = text(top.frame(None, MISSING[1], 0.0, 80, None))
    assert "audit records –" in sparse and "quarantine backlog – files" in sparse and "Folders     –" in sparse


@pytest.mark.parametrize("width,height", [(80, 24), (100, 30), (40, 10), (20, 5), (1, 1), (0, 0), (200, 60)])
def test_frame_fits_the_terminal(width: int, height: int) -> None:
    b = snap_b()
    b["folders"].update({f"f{i}": {"files": i, "bytes": i} for i in range(40)})
    b["ops"].update({f"op{i}": {"OK": i} for i in range(20)})
    b["alerts"] = [{"kind": "k", "level": "warning", "message": "m" * 300, "at": NOW}] * 6
    lines = top.frame(snap_a(), b, 2.0, width, height, footer="q quit  every 2 s")
    assert len(lines) == height
    assert all(sum(len(t) for t, _ in line) <= width for line in lines)
    if height:
        assert "".join(t for t, _ in lines[-1]) == "q quit  every 2 s"[:width]


def test_80x24_keeps_every_section_and_trims_lists() -> None:
    b = snap_b()
    b["folders"].update({f"more/f{i}": {"files": 1, "bytes": i} for i in range(40)})
    b["alerts"] = [{"kind": "disk", "level": "critical", "message": "full", "at": NOW}]
    out = text(top.frame(snap_a(), b, 2.0, 80, 24, footer="q quit"))
    lines = out.splitlines()
    assert len(lines) == 24 and lines[-1] == "q quit"
    for title in ("SeldonFS top", "Operations", "Throughput", "Disk", "Folders", "Janitor", "Validation",
                  "Integrity", "Alerts"):
        assert any(l.startswith(title) for l in lines), title
    assert "disk: full" in out  # the alert itself survives
    assert "input/processed" in out and "more/f0 " not in out  # the largest folders, not all 43


def test_read_stats(tmp_path: Path) -> None:
    (tmp_path / "system" / "monitoring").mkdir(parents=True)
    (tmp_path / top.STATS).write_text(json.dumps({"pid": 7}))
    assert top.read_stats(tmp_path) == {"pid": 7}
    (tmp_path / top.STATS).write_text("[1]")
    with pytest.raises(ValueError):
        top.read_stats(tmp_path)


def test_usage_errors(tmp_path: Path) -> None:
    res = seldonfs("top", tmp_path, "--once")
    assert res.returncode == 10 and res.stderr == f"seldonfs: {tmp_path}: not a SeldonFS mount\n"
    res = seldonfs("top", tmp_path, "--interval", "0")
    assert res.returncode == 2 and "--interval" in res.stderr and len(res.stderr.splitlines()) == 1


def write_files(root: Path, n: int, size: int) -> None:
    for i in range(n):
        with open(root / f"top-{i}.bin", "wb") as f:
            f.write(os.urandom(size))


@needs_fuse
def test_once_on_a_real_mount(store: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with mounted(store, mnt) as proc:
        write_files(mnt / "input" / "processed", 5, 300_000)
        stats = json.loads((mnt / top.STATS).read_text())
        res = seldonfs("top", mnt, "--once", "--interval", "0.5", env={**os.environ, "COLUMNS": "200"})
        assert res.returncode == 0, res.stderr
        out = res.stdout
        assert out.startswith(f"SeldonFS top  {mnt}  up ") and f"pid {proc.pid}" in out, out
        assert f"store {store}" in out
        assert "damaged reads 0" in out and "open files 0" in out
        assert re.search(r"audit records [1-9][\d,]*", out), out
        assert all(len(l) <= 200 for l in out.splitlines())
        # Keys a mount may not publish yet: shown when it does.
        if "bytes" in stats:
            assert re.search(r"read [\d.,]+ MiB/s  write [\d.,]+ MiB/s", out), out
        if "folders" in stats:
            assert "input/processed" in out, out
        if "ops" in stats:
            assert re.search(r"Operations  [\d.,]+/s total", out), out
        # Without a terminal and without --once: one line, exit 2.
        res = seldonfs("top", mnt)
        assert res.returncode == 2 and "--once" in res.stderr


needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Tmux:
    """A tmux server of our own (-S SOCKET): none of the user's sessions,
    and `kill` ends only it. One session, "top", of one pane."""

    def __init__(self, tmp: Path) -> None:
        self.sock, self.rc = tmp / "tmux.sock", tmp / "top.rc"

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-S", str(self.sock), *args], capture_output=True, text=True, timeout=10)

    def start(self, argv: list[str], width: int, height: int) -> None:
        """Run argv in a width x height pane; its exit code goes to self.rc."""
        env = shlex.join(["env", f"PYTHONPATH={os.pathsep.join(sys.path)}", "TERM=screen"])
        shell = f"{env} {shlex.join(argv)}; echo $? > {shlex.quote(str(self.rc))}; sleep 30"
        res = self("-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height), shell)
        assert res.returncode == 0, res.stderr

    def screen(self, *opts: str) -> str:
        return self("capture-pane", "-p", *opts, "-t", "top").stdout

    def quit(self) -> str:
        """Send q; the command's exit code once it has ended."""
        assert not self.rc.exists(), "the command ended by itself"
        self("send-keys", "-t", "top", "q")
        wait_for(self.rc.exists, timeout=10, what="the command to exit after q")
        return self.rc.read_text().strip()

    def kill(self) -> None:
        self("kill-server")


@needs_fuse
@needs_tmux
def test_live_view_under_tmux(store: Path, tmp_path: Path) -> None:
    """The curses view in a 100x30 tmux pane: drawn, refreshed, redrawn at
    80x24 after a resize, and `q` ends it with exit code 0."""
    mnt, t = tmp_path / "mnt", Tmux(tmp_path)
    with mounted(store, mnt):
        try:
            t.start([*SELDONFS, "top", str(mnt), "--interval", "0.5"], 100, 30)
            wait_for(lambda: "Alerts" in t.screen(), timeout=20, what="the first frame")
            write_files(mnt / "input" / "processed", 3, 100_000)
            time.sleep(1.5)  # a few frames at 0.5 s
            shown = t.screen()
            for text_ in (f"SeldonFS top  {mnt}", "Operations", "Throughput", "Disk", "Folders", "Janitor",
                          "Integrity", "damaged reads 0", "Alerts", "q quit  every 0.5 s"):
                assert text_ in shown, f"{text_!r} not on the screen:\n{shown}"
            assert len(shown.splitlines()) == 30 and all(len(l) <= 100 for l in shown.splitlines())
            t("resize-window", "-t", "top", "-x", "80", "-y", "24")
            wait_for(lambda: t.screen().splitlines()[-1:] != [] and t.screen().splitlines()[-1].startswith("q quit")
                     and len(t.screen().splitlines()) == 24, timeout=10, what="a redraw at 80x24")
            assert t.quit() == "0"
        finally:
            t.kill()


@needs_tmux
def test_full_dashboard_in_80x24_with_colours(tmp_path: Path) -> None:
    """Every section of a full snapshot drawn by curses on 80x24, the disk
    in red past its emergency threshold, and `q` ends it."""
    b = snap_b()
    b["disk"]["percent"] = 97.5
    b["alerts"] = [{"kind": "disk", "level": "critical", "message": "disk 97.5% used", "at": NOW}]
    (tmp_path / "b.json").write_text(json.dumps(b))
    code = "import json, sys; from seldonfs import top; d = json.load(open(sys.argv[1])); top.run_curses(lambda: d, 0.5)"
    t = Tmux(tmp_path)
    try:
        t.start([sys.executable, "-c", code, str(tmp_path / "b.json")], 80, 24)
        wait_for(lambda: "q quit" in t.screen(), timeout=20, what="the first frame")
        shown = t.screen()
        lines = shown.splitlines()
        assert len(lines) == 24 and lines[-1].startswith("q quit  every 0.5 s"), shown
        for text_ in ("SeldonFS top  /mnt/seldon", "Operations", "  read", "Throughput  read", "97.5%  42.0 GiB",
                      "input/processed", "Janitor     idle  runs 3", "last run: deleted 4 files",
                      "quarantine backlog 2 files", "audit records 1,234", "disk: disk 97.5% used"):
            assert text_ in shown, f"{text_!r} not on the screen:\n{shown}"
        disk = next(l for l in t.screen("-e").splitlines() if "97.5%" in l)
        assert "\x1b[31m[####" in disk, repr(disk)  # red (SGR 31) from the bar on
        assert t.quit() == "0"
    finally:
        t.kill()
