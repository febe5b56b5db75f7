"""Profile "reorg" (seed 002, the file reorganiser): its rules through a real mount."""

from __future__ import annotations

import os
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
