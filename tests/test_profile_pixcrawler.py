"""Profile "pixcrawler" (seed 004, PixCrawler's crawl jobs): its rules through a real mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import mount_profile, needs_fuse, profile_config

pytestmark = needs_fuse


def test_pixcrawler_job_folders(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "pixcrawler")
    with m:
        jobs = tmp_path / "mnt" / "temp" / "jobs"
        with pytest.raises(PermissionError):
            (jobs / "stray.jpg").write_bytes(b"x")  # only inside a job's folder
        (jobs / "job-42" / "chunk-1").mkdir(parents=True)
        (jobs / "job-42" / "chunk-1" / "img.jpg").write_bytes(b"x")
    j = profile_config("pixcrawler").janitor
    assert (j.warning, j.emergency, j.check_every, j.batch, j.orphan_age) == (85, 95, 300, 1000, 86400)
