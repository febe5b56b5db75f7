"""Profile "seldon" (seed 000, Project Seldon's data area): its rules through a real mount."""

from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path

import pytest

from .conftest import init_store, mount_profile, mounted, needs_fuse, profile_rule, seldonfs

pytestmark = needs_fuse


def test_seldon_input_rules(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "seldon")
    with m:
        raw = tmp_path / "mnt" / "input" / "raw"
        (raw / "prospect_data.json").write_text('{"prospect": 1}')
        (name,) = os.listdir(raw)
        assert re.fullmatch(r"\d{4}(-\d\d){5}-\d{3}-INP001-\d{3,}_prospect_data\.json", name)
        (raw / "people.csv").write_text("name,ssn\nann,078-05-1120\n")
        q = tmp_path / "mnt" / "input" / "quarantine"
        assert "social security" in os.getxattr(q / os.listdir(q)[0], "user.seldon.reason").decode()
        with pytest.raises(PermissionError):
            (raw / "notes.txt").write_text("not an allowed type")  # allow_extensions
        with pytest.raises(OSError) as e:
            with open(raw / "huge.csv", "wb") as f:
                f.seek(100 * 2**20)
                f.write(b"x")  # crosses 100 MiB
        assert e.value.errno == errno.EFBIG
        with pytest.raises(PermissionError):
            (tmp_path / "mnt" / "temp" / "loose.tmp").write_text("x")  # no files at temp/ root
        (tmp_path / "mnt" / "temp" / "processing" / "job.tmp").write_text("x")
        assert (q.stat().st_mode & 0o777) == 0o700


def test_seldon_reports_keep_versions(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "seldon")
    with m:
        r = tmp_path / "mnt" / "output" / "reports" / "q4.csv"
        for i in range(12):
            r.write_text(f"v{i}\n")
        out = seldonfs("versions", r, "--json", check=True).stdout
        assert out.count('"n"') == profile_rule("seldon", "output/reports").versions == 10


def test_seldon_retention_values() -> None:
    assert profile_rule("seldon", "input/raw").max_age == 30 * 86400
    assert profile_rule("seldon", "input/raw").action == "archive"
    assert profile_rule("seldon", "temp/processing").max_total == 100 * 2**30
    assert profile_rule("seldon", "temp/cache").evict == "lru"
    assert dict(profile_rule("seldon", "temp").patterns) == {"*.tmp": 43200, "*.log": 168 * 3600, "*.cache": 72 * 3600}


def _ts(name: str) -> float:
    """The seconds since the epoch a seed-000 name's time says, read as UTC."""
    from datetime import datetime, timezone

    m = re.match(r"(\d{4})-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d{3})-", name)
    assert m, name
    y, mo, d, h, mi, s, ms = map(int, m.groups())
    return datetime(y, mo, d, h, mi, s, ms * 1000, tzinfo=timezone.utc).timestamp()


def test_seldon_names_in_utc_or_local_time(tmp_path: Path) -> None:
    """Issue 18: names show UTC unless the folder says naming_time =
    "local" (the mount's TZ); seed 000 §2.3. The mount runs at UTC+14 here,
    so the two names' times are 14 hours apart."""
    store = init_store(tmp_path / "store", "--profile", "seldon", encrypted=False)
    cfg = store / "seldonfs.toml"
    text = cfg.read_text()
    assert '[folders."input/uploads"]\n' in text
    cfg.write_text(text.replace('[folders."input/uploads"]\n', '[folders."input/uploads"]\nnaming_time = "local"\n'))
    with mounted(store, tmp_path / "mnt", env={"TZ": "XYZ-14"}):  # POSIX TZ: 14 hours east of UTC
        t0 = time.time()
        (tmp_path / "mnt" / "input" / "raw" / "a.json").write_text("{}")
        (tmp_path / "mnt" / "input" / "uploads" / "b.json").write_text("{}")
        t1 = time.time()
        (utc,) = os.listdir(tmp_path / "mnt" / "input" / "raw")
        (local,) = os.listdir(tmp_path / "mnt" / "input" / "uploads")
    assert t0 - 1 <= _ts(utc) <= t1 + 1, (utc, t0)
    assert t0 - 1 <= _ts(local) - 14 * 3600 <= t1 + 1, (local, t0)
    assert profile_rule("seldon", "input/raw").naming_time == "utc"


def test_seldon_report_and_temp_names_as_seed_000(tmp_path: Path) -> None:
    """Issue 18: where a store asks for them (the shipped profile does not:
    reports keep versions, temp files keep their names), reports and temp
    files get seed 000's names: 2024-12-06-14-35-12-456-RPT001-001_executive_summary.pdf
    and 2024-12-06-14-30-45-789-TMP001-001_processing_cache.tmp."""
    store = init_store(tmp_path / "store", "--profile", "seldon", encrypted=False)
    cfg = store / "seldonfs.toml"
    text = cfg.read_text()
    naming = 'naming = "{ts}-{job}-{seq:03d}_{name}"\n'
    for folder, job in (("output/exports", "RPT001"), ("temp/working", "TMP001")):
        table = f'[folders."{folder}"]\n'
        assert table in text
        text = text.replace(table, f'{table}{naming}job = "{job}"\n')
    text = text.replace('temp_patterns = [".*", "*.tmp", ', 'temp_patterns = [".*", ')  # .tmp is a real name here
    cfg.write_text(text)
    with mounted(store, tmp_path / "mnt"):
        (tmp_path / "mnt" / "output" / "exports" / "executive_summary.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
        (tmp_path / "mnt" / "temp" / "working" / "processing_cache.tmp").write_text("cache")
        (report,) = os.listdir(tmp_path / "mnt" / "output" / "exports")
        (temp,) = os.listdir(tmp_path / "mnt" / "temp" / "working")
    assert re.fullmatch(r"\d{4}(-\d\d){5}-\d{3}-RPT001-001_executive_summary\.pdf", report), report
    assert re.fullmatch(r"\d{4}(-\d\d){5}-\d{3}-TMP001-001_processing_cache\.tmp", temp), temp
