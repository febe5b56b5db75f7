"""Profile "vision" (seed 003, the vision pipeline): its rules through a real mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import mount_profile, needs_fuse, profile_rule

pytestmark = needs_fuse


def test_vision_temp_tree(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "vision")
    with m:
        temp = tmp_path / "mnt" / "temp"
        with pytest.raises(PermissionError):
            (temp / "frame.raw").write_bytes(b"x")
        (temp / "processing" / "face_recognition" / "frames" / "f1.raw").write_bytes(b"x")
    assert profile_rule("vision", "temp/processing").warn_percent == 80
    assert profile_rule("vision", "temp/processing").max_age == 86400


def test_vision_cap_warning_between_janitor_runs(tmp_path: Path) -> None:
    """Seed 003's 80 % warning on temp/cleanup (100 MB cap, cleaned hourly)
    is raised when the folder crosses it, not at the next janitor run."""
    import json

    from .conftest import seldonfs, wait_for

    def kinds() -> list[str]:
        r = seldonfs("ctl", tmp_path / "mnt", "health")
        return [a["kind"] + ":" + a["message"] for a in json.loads(r.stdout)["alerts"]] if r.returncode == 0 else []

    store, m = mount_profile(tmp_path, "vision", expect_log_problems=True)
    with m:
        cleanup = tmp_path / "mnt" / "temp" / "cleanup"
        (cleanup / "a.bin").write_bytes(b"x" * 70_000_000)
        assert not any(k.startswith("folder-full") for k in kinds())
        (cleanup / "b.bin").write_bytes(b"x" * 11_000_000)  # 81 MB of 100
        wait_for(lambda: any(k.startswith("folder-full:temp/cleanup/") for k in kinds()), timeout=30,
                 what="folder-full of temp/cleanup")
        assert (cleanup / "a.bin").exists()  # no janitor run evicted anything
