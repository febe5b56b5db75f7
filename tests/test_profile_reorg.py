"""Profile "reorg" (seed 002, the file reorganiser): its rules through a real mount."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .conftest import mount_profile, mounted, needs_fuse, profile_config

pytestmark = needs_fuse


def test_reorg_routes_dated_names(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "reorg")
    with m:
        mnt = tmp_path / "mnt"
        (mnt / "inbox" / "2024-12-06_invoice.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
        assert (mnt / "organized" / "2024" / "12" / "06" / "invoice.pdf").read_bytes().startswith(b"%PDF")
        (mnt / "inbox" / "undated.txt").write_text("left where it is")
        assert os.listdir(mnt / "inbox") == ["undated.txt"]
    assert profile_config("reorg").policy.min_free == 10


def test_reorg_impossible_dates_stay_in_the_inbox(tmp_path: Path) -> None:
    """Issue 18: a date-shaped name whose date is not a day of the calendar
    is not routed; reorg leaves it (route_unmatched = "leave", seed 002:
    names not in the pattern are ignored)."""
    store, m = mount_profile(tmp_path, "reorg")
    bad = ["2024-13-45_bad.txt", "2024-01-45_day.txt", "2024-02-30_feb.txt", "2023-02-29_noleap.txt",
           "2024-00-10_zero.txt"]
    with m:
        mnt = tmp_path / "mnt"
        for name in bad + ["2024-02-29_leap.txt"]:
            (mnt / "inbox" / name).write_text(name)
        assert sorted(os.listdir(mnt / "inbox")) == sorted(bad)
        assert os.listdir(mnt / "organized") == ["2024"]
        assert os.listdir(mnt / "organized" / "2024") == ["02"]
        assert (mnt / "organized" / "2024" / "02" / "29" / "leap.txt").read_text() == "2024-02-29_leap.txt"
        assert os.listdir(mnt / "quarantine") == []


def test_reorg_a_taken_name_gets_a_number_not_a_retry(tmp_path: Path) -> None:
    """Issue 18: five files with the same dated name all reach organized/
    as name, name-1 .. name-4 (before a compound extension); a name taken
    is not a failed move, so route_retries (3) is not used up."""
    store, m = mount_profile(tmp_path, "reorg")
    src = tmp_path / "src"
    with m:
        mnt = tmp_path / "mnt"
        for i in range(5):
            src.write_text(f"copy {i}")
            # cp: a new process each time, so the last one's grace name does not catch the write
            subprocess.run(["cp", src, mnt / "inbox" / "2024-12-06_backup.tar.gz"], check=True)
        day = mnt / "organized" / "2024" / "12" / "06"
        want = ["backup.tar.gz"] + [f"backup-{n}.tar.gz" for n in range(1, 5)]
        assert sorted(os.listdir(day)) == sorted(want)
        assert sorted((day / n).read_text() for n in want) == [f"copy {i}" for i in range(5)]
        assert os.listdir(mnt / "quarantine") == [] and os.listdir(mnt / "inbox") == []


def test_reorg_hostile_names(tmp_path: Path) -> None:
    """Names with `[`, ESC, a newline, bytes that are not UTF-8, and 255
    bytes route like any other; the 255-byte one written twice gets -1."""
    store, m = mount_profile(tmp_path, "reorg")
    long = b"2024-01-05_" + b"x" * 240 + b".csv"
    assert len(long) == 255
    names = [b"2024-01-05_a[1]\x1b[31m.txt", b"2024-01-05_line\nbreak.txt", b"2024-01-05_\xff\xfe.txt", long]
    with m:
        mnt = os.fsencode(tmp_path / "mnt")
        for name in names:
            with open(mnt + b"/inbox/" + name, "wb") as f:
                f.write(name)
        src = tmp_path / "src"
        src.write_bytes(b"second")
        subprocess.run(["cp", src, os.fsdecode(mnt + b"/inbox/" + long)], check=True)
        day = mnt + b"/organized/2024/01/05/"
        assert sorted(os.listdir(day)) == sorted([n[11:] for n in names] + [b"x" * 240 + b"-1.csv"])
        for name in names:
            assert Path(os.fsdecode(day + name[11:])).read_bytes() == name
        assert Path(os.fsdecode(day + b"x" * 240 + b"-1.csv")).read_bytes() == b"second"
        assert os.listdir(mnt + b"/inbox") == []


def _first_commit_rename(store: Path, mnt: Path) -> str:
    """SELDONFS_FAULTS that fails the first rename after the mount's start
    (the mount renames its own files as it starts)."""
    with mounted(store, mnt):
        pass  # the first mount makes the store's own files
    counts = mnt.parent / "counts.json"
    with mounted(store, mnt, env={"SELDONFS_FAULTS": f"count:{counts}"}):
        started = json.loads(counts.read_text()).get("rename", 0) if counts.exists() else 0
    return f"rename:{started + 1}:EIO"


def test_reorg_a_failed_move_is_retried_under_its_name(tmp_path: Path) -> None:
    """Retries are for errors: a move that fails once (an injected EIO)
    is tried again and lands under its own name; with route_retries = 1
    the same failure sends the file to quarantine, saying why."""
    store, _ = mount_profile(tmp_path, "reorg")
    mnt = tmp_path / "mnt"
    fault = {"SELDONFS_FAULTS": _first_commit_rename(store, mnt)}
    with mounted(store, mnt, env=fault, expect_log_problems=True):
        (mnt / "inbox" / "2024-12-06_a.txt").write_text("a")
        assert os.listdir(mnt / "organized" / "2024" / "12" / "06") == ["a.txt"]
        assert os.listdir(mnt / "quarantine") == []
    assert "cannot move inbox/2024-12-06_a.txt" in (tmp_path / "mount-mnt.stderr").read_text()
    cfg = store / "seldonfs.toml"
    cfg.write_text(cfg.read_text().replace("route_retries = 3 ", "route_retries = 1 "))
    with mounted(store, mnt, env=fault, expect_log_problems=True):
        (mnt / "inbox" / "2024-12-07_b.txt").write_text("b")
        (q,) = os.listdir(mnt / "quarantine")
        reason = os.getxattr(mnt / "quarantine" / q, "user.seldon.reason").decode()
        assert "could not be moved to organized/2024/12/07/ after 1 attempts" in reason, reason
        assert not (mnt / "organized" / "2024" / "12" / "07" / "b.txt").exists()
