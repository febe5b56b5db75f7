"""What every shipped profile must do; each profile's own seed rules are in
tests/test_profile_<name>.py."""

from __future__ import annotations

from pathlib import Path

from seldonfs import config

from .conftest import init_store, needs_fuse, profile_config

pytestmark = needs_fuse


def test_every_profile_inits_its_folders(tmp_path: Path) -> None:
    for name in config.profile_names():
        store = init_store(tmp_path / name, "--profile", name, encrypted=False)
        for f in profile_config(name).folders:
            if not any(c in f.path for c in "*?["):
                assert (store / "data" / f.path).is_dir(), (name, f.path)
                if f.mode is not None:
                    assert (store / "data" / f.path).stat().st_mode & 0o7777 == f.mode
