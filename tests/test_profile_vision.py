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
