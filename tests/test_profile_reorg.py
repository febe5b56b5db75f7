"""Profile "reorg" (seed 002, the file reorganiser): its rules through a real mount."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .conftest import mount_profile, needs_fuse, profile_config

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
