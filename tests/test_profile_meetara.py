"""Profile "meetara" (seed 001, MeeTARA's model pipeline): its rules through a real mount."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from .conftest import mount_profile, needs_fuse, profile_rule

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
