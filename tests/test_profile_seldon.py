"""Profile "seldon" (seed 000, Project Seldon's data area): its rules through a real mount."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from .conftest import mount_profile, needs_fuse, profile_rule, seldonfs

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
