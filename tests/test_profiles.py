"""What every shipped profile must do; each profile's own seed rules are in
tests/test_profile_<name>.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from seldonfs import config

from .conftest import init_store, key_args, mounted, needs_fuse, profile_config, seldonfs

pytestmark = needs_fuse


def test_every_profile_inits_its_folders(tmp_path: Path) -> None:
    for name in config.profile_names():
        store = init_store(tmp_path / name, "--profile", name, encrypted=False)
        for f in profile_config(name).folders:
            if not any(c in f.path for c in "*?["):
                assert (store / "data" / f.path).is_dir(), (name, f.path)
                if f.mode is not None:
                    assert (store / "data" / f.path).stat().st_mode & 0o7777 == f.mode


FILES_PER_FOLDER = 3


def _managed(rule: config.FolderRule) -> bool:
    """A folder with rules of its own: naming, validation, routing, no
    files at its root, or retention."""
    return not any(c in rule.path for c in "*?[") and bool(
        rule.naming or rule.validates or rule.allow_extensions or rule.route or not rule.files_at_root
        or rule.max_age or rule.max_total or rule.max_files or rule.orphan_sessions
    )


def _fill(mnt: Path, rule: config.FolderRule, n: int) -> tuple[Path, str, list[bytes]]:
    """`n` files each folder accepts: JSON (every allow list takes it), in a
    job's subfolder where files may not lie at the folder's root, dated
    names where the folder routes. Returns where they must end up, a name
    pattern they must match there, and their contents."""
    where = mnt / rule.path if rule.files_at_root else mnt / rule.path / "job-1" / "chunk-1"
    where.mkdir(parents=True, exist_ok=True)
    bodies = []
    for i in range(n):
        body = json.dumps({"folder": rule.path, "n": i}).encode()
        name = f"2024-05-{i + 1:02d}_data{i}.json" if rule.route else f"data{i}.json"
        (where / name).write_bytes(body)
        bodies.append(body)
    if rule.route:  # routed by the date in the name: organized/YYYY/MM/DD/name
        return mnt / re.sub(r"\{y\}/\{m\}/\{d\}/\{name\}$", "2024/05", rule.route_to), r"\d\d/data\d+\.json", bodies
    return where, r".+\.json", bodies  # a naming rule may keep nothing of the name but its extension


@pytest.mark.parametrize("profile", config.profile_names())
def test_every_command_answers_on_every_profile(tmp_path: Path, profile: str) -> None:
    """Issue 18: status, stats, top, ctl, report, janitor, audit verify and
    umount on a mount of each profile, after files went into each folder
    that has rules; every command exits 0 and the numbers count the writes."""
    store = init_store(tmp_path / "store", "--profile", profile, encrypted=True)
    mnt = tmp_path / "mnt"
    folders = [r for r in profile_config(profile).folders if _managed(r)]
    assert folders, profile
    with mounted(store, mnt):
        written = 0
        for rule in folders:
            where, pattern, bodies = _fill(mnt, rule, FILES_PER_FOLDER)
            written += sum(map(len, bodies))
            found = sorted(
                (mnt / where / f).read_bytes()
                for f in (os.listdir(where) if not rule.route else [
                    os.path.join(d, x) for d in os.listdir(where) for x in os.listdir(where / d)])
                if re.fullmatch(pattern, f)
            )
            assert found == sorted(bodies), (rule.path, os.listdir(where))

        def ok(*args: str) -> str:
            r = seldonfs(*args)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
            return r.stdout

        out = ok("status", str(mnt))
        assert f"profile {profile}" in out and "not answering" not in out, out
        stats = json.loads(ok("stats", str(mnt), "--json"))
        assert stats["ops"]["create"]["OK"] >= FILES_PER_FOLDER * len(folders), stats["ops"]
        assert stats["bytes"]["written"] >= written, stats["bytes"]
        assert stats["store"] == str(store) and stats["mountpoint"] == str(mnt)
        # the root's stats file: found by name, never listed, never written
        assert ".seldonfs-stats.json" not in os.listdir(mnt)
        with pytest.raises(PermissionError):
            (mnt / ".seldonfs-stats.json").write_text("{}")
        if (mnt / "system" / "monitoring").is_dir():  # the seldon tree's copy stays
            assert json.loads((mnt / "system" / "monitoring" / "stats.json").read_text())["store"] == str(store)
        assert "requests" in ok("stats", str(store))
        assert f"SeldonFS top  {mnt}" in ok("top", str(mnt), "--once", "--interval", "0.2")
        assert json.loads(ok("ctl", str(mnt), "health"))["status"] == "ok"
        assert json.loads(ok("ctl", str(store), "stats"))["bytes"]["written"] >= written
        ok("report", str(store))
        ok("janitor", str(mnt), "--dry-run")
        ok("audit", "verify", str(store), *key_args(store))
        ok("umount", str(mnt))
        assert not os.path.ismount(mnt)
