"""Profile "meetara" (seed 001, MeeTARA's model pipeline): its rules through a real mount."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .conftest import mount_profile, mounted, needs_fuse, profile_rule, seldonfs

pytestmark = needs_fuse


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
    assert profile_rule("meetara", "temp/processing").schedule == "0 2 * * *"
    assert profile_rule("meetara", "temp/downloads").schedule == "0 3 * * 0"
    assert profile_rule("meetara", "temp/downloads").max_total == 50 * 10**9


def _download(dl: Path, name: bytes, source: str, data: bytes = b"weights") -> None:
    """Write `name` into temp/downloads as a process of `source` (its job id)."""
    code = "import os, sys; open(os.fsencode(sys.argv[1]), 'wb').write(sys.argv[2].encode())"
    env = dict(os.environ, SELDON_JOB_ID=source)
    subprocess.run([sys.executable, "-c", code, os.fsdecode(os.fsencode(dl) + b"/" + name), data.decode()],
                   env=env, check=True)


def test_meetara_download_names_as_seed_001(tmp_path: Path) -> None:
    """Issue 18: seed 001's own example. `model.tar.gz` from huggingface
    becomes huggingface_model_YYYYMMDD_HHMMSS.tar.gz (the original name and
    its two-part extension kept); a name already in that format, such as
    the seed's `huggingface_model_20250104_143022.tar.gz`, is kept as is."""
    store, m = mount_profile(tmp_path, "meetara")
    with m:
        dl = tmp_path / "mnt" / "temp" / "downloads"
        _download(dl, b"model.tar.gz", "huggingface")
        (name,) = os.listdir(dl)
        assert re.fullmatch(r"huggingface_model_\d{8}_\d{6}\.tar\.gz", name), name
        os.unlink(dl / name)
        for source in ("huggingface", "github"):  # whoever writes it: it is already a download name
            _download(dl, b"huggingface_model_20250104_143022.tar.gz", source)
            assert os.listdir(dl) == ["huggingface_model_20250104_143022.tar.gz"]
            os.unlink(dl / "huggingface_model_20250104_143022.tar.gz")
        _download(dl, b"report.v2.final.pdf", "github")  # one extension: the last suffix
        _download(dl, b"scan.NII.GZ", "github")
        names = sorted(os.listdir(dl))
        assert re.fullmatch(r"github_report\.v2\.final_\d{8}_\d{6}\.pdf", names[0]), names
        assert re.fullmatch(r"github_scan_\d{8}_\d{6}\.NII\.GZ", names[1]), names


def test_meetara_hostile_download_names(tmp_path: Path) -> None:
    """A 255-byte name: the time and the extension are kept, the written
    name is cut (with a hash of it) and kept whole in user.seldon.original;
    `[`, ESC, a newline and bytes that are not UTF-8 pass through."""
    store, m = mount_profile(tmp_path, "meetara")
    long = b"a" * 248 + b".tar.gz"
    odd = b"[x]\x1b[2J\nline\xff.tar.gz"
    with m:
        dl = tmp_path / "mnt" / "temp" / "downloads"
        _download(dl, long, "huggingface")
        _download(dl, odd, "github")
        got = {n[:6]: n for n in os.listdir(os.fsencode(dl))}
        short = got[b"huggin"]
        assert len(short) == 255, short
        assert re.fullmatch(rb"huggingface_a+~[0-9a-f]{8}_\d{8}_\d{6}\.tar\.gz", short), short
        assert os.getxattr(os.fsencode(dl) + b"/" + short, "user.seldon.original") == long
        assert re.fullmatch(rb"github_\[x\]\x1b\[2J\nline\xff_\d{8}_\d{6}\.tar\.gz", got[b"github"]), got


def _aged_meetara_store(tmp_path: Path) -> Path:
    """A meetara store with files of known ages (set on STORE/data):
    processing 2 d and 12 h old, downloads 2 d and 12 h old."""
    store, m = mount_profile(tmp_path, "meetara")
    with m:
        for folder in ("processing", "downloads"):
            for age in ("old", "young"):
                _download(tmp_path / "mnt" / "temp" / folder, f"{age}.bin".encode(), age)
    now = time.time()
    for folder in ("processing", "downloads"):
        for f in (store / "data" / "temp" / folder).iterdir():
            t = now - (2 * 86400 if f.name.startswith("old_") else 12 * 3600)
            os.utime(f, (t, t))
    return store


def _left(store: Path) -> list[str]:
    return sorted(f"{f.parent.name}/{f.name.split('_')[0]}" for f in (store / "data" / "temp").rglob("*") if f.is_file())


def test_meetara_janitor_older_than_1d(tmp_path: Path) -> None:
    """Issue 18: `seldonfs janitor --older-than 1d` means seed 001's
    `cleanup.py --older-than 1d`: the files older than a day go (a 2-day-old
    download too, though downloads keep 7 days), younger ones stay.
    `--as-of` is the "as if this much time had passed" plan."""
    store = _aged_meetara_store(tmp_path)
    everything = ["downloads/old", "downloads/young", "processing/old", "processing/young"]
    assert _left(store) == everything
    r = seldonfs("janitor", store, "--dry-run")  # the rules alone: processing keeps 24 h, downloads 7 d
    assert r.returncode == 0, r.stderr
    assert "processing/old_" in r.stdout and "downloads/old_" not in r.stdout
    r = seldonfs("janitor", store, "--dry-run", "--as-of", "+13h")  # processing's young file is 25 h old then
    assert "processing/young_" in r.stdout and "downloads/" not in r.stdout, r.stdout
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 6 * 86400))
    r = seldonfs("janitor", store, "--dry-run", "--as-of", iso)  # downloads: 8 d old then
    assert "downloads/old_" in r.stdout and "downloads/young_" not in r.stdout, r.stdout
    for bad in (["--as-of", "yesterday"], ["--as-of", "+soon"], ["--older-than", "1 day"], ["--older-than", "0s"],
                ["--older-than", "1d", "--emergency"]):
        r = seldonfs("janitor", store, "--dry-run", *bad)
        assert r.returncode == 2 and bad[0] in r.stderr and len(r.stderr.splitlines()) == 1, (bad, r.stderr)
    assert _left(store) == everything
    r = seldonfs("janitor", store, "--older-than", "1d")
    assert r.returncode == 0, r.stderr
    assert _left(store) == ["downloads/young", "processing/young"]


def test_meetara_janitor_older_than_in_the_mount(tmp_path: Path) -> None:
    """The same through a running mount's janitor."""
    store = _aged_meetara_store(tmp_path)
    with mounted(store, tmp_path / "mnt"):
        r = seldonfs("janitor", tmp_path / "mnt", "--older-than", "1d")
        assert r.returncode == 0, r.stderr
        assert "2 delete" in r.stdout + r.stderr, r.stdout + r.stderr
        assert sorted(n.split("_")[0] for n in os.listdir(tmp_path / "mnt" / "temp" / "downloads")) == ["young"]
        r = seldonfs("janitor", tmp_path / "mnt", "--as-of", "+13h")
        assert r.returncode == 0, r.stderr
        assert os.listdir(tmp_path / "mnt" / "temp" / "processing") == []
        assert len(os.listdir(tmp_path / "mnt" / "temp" / "downloads")) == 1
