"""The five shipped profiles: init, mount, and the seed rules each carries
that act at the syscall. Retention rules (ages, caps, schedules) are the
janitor's and are checked here only as loaded values."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from seldonfs import config

from .conftest import init_store, mounted, needs_fuse, seldonfs

pytestmark = needs_fuse


def mount_profile(tmp_path: Path, profile: str):
    store = init_store(tmp_path / "store", "--profile", profile, encrypted=False)
    return store, mounted(store, tmp_path / "mnt")


def load(profile: str) -> config.Config:
    return config.parse(tomllib.loads(config.profile_text(profile)), profile)


def rule(profile: str, path: str) -> config.FolderRule:
    (r,) = [f for f in load(profile).folders if f.path == path]
    return r


def test_every_profile_inits_its_folders(tmp_path: Path) -> None:
    for name in config.profile_names():
        store = init_store(tmp_path / name, "--profile", name, encrypted=False)
        for f in load(name).folders:
            if not any(c in f.path for c in "*?["):
                assert (store / "data" / f.path).is_dir(), (name, f.path)
                if f.mode is not None:
                    assert (store / "data" / f.path).stat().st_mode & 0o7777 == f.mode


# ---------------------------------------------------------------- seldon (seed 000)


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
        assert out.count('"n"') == rule("seldon", "output/reports").versions == 10


def test_seldon_retention_values() -> None:
    assert rule("seldon", "input/raw").max_age == 30 * 86400
    assert rule("seldon", "input/raw").action == "archive"
    assert rule("seldon", "temp/processing").max_total == 100 * 2**30
    assert rule("seldon", "temp/cache").evict == "lru"
    assert dict(rule("seldon", "temp").patterns) == {"*.tmp": 43200, "*.log": 168 * 3600, "*.cache": 72 * 3600}


# ---------------------------------------------------------------- meetara (seed 001)


def test_meetara_names(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "meetara")
    with m:
        proc = tmp_path / "mnt" / "temp" / "processing"
        env = dict(os.environ, SELDON_JOB_ID="model_training")
        subprocess.run(["cp", "/etc/hostname", proc / "scratch.tmp"], env=env, check=True)
        (name,) = os.listdir(proc)
        assert re.fullmatch(r"model_training_\d{8}_\d{6}_[0-9a-f]{8}\.tmp", name)
        dl = tmp_path / "mnt" / "temp" / "downloads"
        env = dict(os.environ, SELDON_JOB_ID="huggingface")
        subprocess.run(["cp", "/etc/hostname", dl / "model.bin"], env=env, check=True)
        (name,) = os.listdir(dl)
        assert re.fullmatch(r"huggingface_model_\d{8}_\d{6}\.bin", name)
    assert rule("meetara", "temp/processing").schedule == "0 2 * * *"
    assert rule("meetara", "temp/downloads").schedule == "0 3 * * 0"
    assert rule("meetara", "temp/downloads").max_total == 50 * 10**9


# ---------------------------------------------------------------- reorg (seed 002)


def test_reorg_routes_dated_names(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "reorg")
    with m:
        mnt = tmp_path / "mnt"
        (mnt / "inbox" / "2024-12-06_invoice.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
        assert (mnt / "organized" / "2024" / "12" / "06" / "invoice.pdf").read_bytes().startswith(b"%PDF")
        (mnt / "inbox" / "undated.txt").write_text("left where it is")
        assert os.listdir(mnt / "inbox") == ["undated.txt"]
    assert load("reorg").policy.min_free == 10


# ---------------------------------------------------------------- vision (seed 003)


def test_vision_temp_tree(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "vision")
    with m:
        temp = tmp_path / "mnt" / "temp"
        with pytest.raises(PermissionError):
            (temp / "frame.raw").write_bytes(b"x")
        (temp / "processing" / "face_recognition" / "frames" / "f1.raw").write_bytes(b"x")
    assert rule("vision", "temp/processing").warn_percent == 80
    assert rule("vision", "temp/processing").max_age == 86400


# ---------------------------------------------------------------- pixcrawler (seed 004)


def test_pixcrawler_job_folders(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "pixcrawler")
    with m:
        jobs = tmp_path / "mnt" / "temp" / "jobs"
        with pytest.raises(PermissionError):
            (jobs / "stray.jpg").write_bytes(b"x")  # only inside a job's folder
        (jobs / "job-42" / "chunk-1").mkdir(parents=True)
        (jobs / "job-42" / "chunk-1" / "img.jpg").write_bytes(b"x")
    j = load("pixcrawler").janitor
    assert (j.warning, j.emergency, j.check_every, j.batch, j.orphan_age) == (85, 95, 300, 1000, 86400)
