"""Profile "seldon" (seed 000, Project Seldon's data area): its rules through a real mount."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
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


# ---------------------------------------------------------------- names writers can live with (issue 18)

STAT_ERRNO = "import os, sys\ntry:\n    os.stat(sys.argv[1]); print('found')\nexcept OSError as e:\n    print(e.errno)"
SEQ = re.compile(r"^\d{4}(-\d\d){5}-\d{3}-INP001-(?P<seq>\d+)_(?P<name>.+)$")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory other users can traverse. Not below pytest's
    tmp_path: a pytest session starting meanwhile (another checkout's)
    makes /tmp/pytest-of-USER 0700 again."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="seldonfs-test-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _audit(mnt: Path, op: str) -> list[dict]:
    import json

    lines = (mnt / "system" / "logs" / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["op"] == op]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_seldon_the_old_name_is_the_writers_users_for_the_grace_only(open_tmp: Path, encrypted: bool) -> None:
    import subprocess

    from .conftest import as_user

    tmp_path = open_tmp
    src = tmp_path / "x.json"
    src.write_text('{"x": 1}')
    store, m = mount_profile(tmp_path, "seldon", encrypted=encrypted)
    with m:
        raw = tmp_path / "mnt" / "input" / "raw"
        # two processes of the same user: cp commits at close, chmod finds the old name
        subprocess.run(["sh", "-c", 'cp "$1" "$2"/ && chmod 600 "$2"/x.json', "sh", src, raw], check=True)
        (name,) = os.listdir(raw)  # readdir shows the real name only
        assert SEQ.match(name)["name"] == "x.json" and (raw / name).stat().st_mode & 0o777 == 0o600
        assert os.stat(raw / "x.json").st_ino == os.stat(raw / name).st_ino
        # another user neither reaches the file by its old name nor learns where it went
        assert as_user(65534, 65534, STAT_ERRNO, str(raw / "x.json")).stdout.strip() == str(errno.ENOENT)
        # and the name is free for it: a real entry made now is what everyone sees by that name
        os.chmod(raw, 0o1777)
        made = as_user(65534, 65534, "import os, sys\nos.mkdir(sys.argv[1])", str(raw / "x.json"))
        assert made.returncode == 0, made.stderr
        assert (raw / "x.json").is_dir()  # the writer's grace does not shadow it


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_seldon_rsync_twice_keeps_one_copy(open_tmp: Path, encrypted: bool) -> None:
    import subprocess
    import time

    from .conftest import as_user

    tmp_path = open_tmp
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}.json").write_text(f'{{"n": {i}}}')
    (src / "t.csv").write_text("a,b\n1,2\n")
    store = tmp_path / "store"
    _, m = mount_profile(tmp_path, "seldon", encrypted=encrypted)
    cfg = store / "seldonfs.toml"
    cfg.write_text(cfg.read_text().replace('grace = "10s"', 'grace = "1s"'))
    with m:
        raw = tmp_path / "mnt" / "input" / "raw"

        def rsync() -> list[str]:
            r = subprocess.run(["rsync", "-a", f"{src}/", f"{raw}/"], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            return sorted(os.listdir(raw))

        first = rsync()
        assert len(first) == 6 and {SEQ.match(n)["name"] for n in first} == {p.name for p in src.iterdir()}
        assert rsync() == first  # at once: rsync finds its names (the grace), nothing is sent
        time.sleep(1.5)  # past the grace: rsync sends every file again
        assert rsync() == first
        dups = _audit(tmp_path / "mnt", "duplicate")
        assert len(dups) == 6
        assert {d["path2"] for d in dups} == {f"input/raw/{n}" for n in first}
        assert all(d["detail"].startswith(f"duplicate of {d['path2']}") for d in dups)
        # the same name with other content is a new file
        (src / "f0.json").write_text('{"n": 100}')
        assert len(rsync()) == 7
        # a hard link under the original name is the same file again
        f1 = next(n for n in first if n.endswith("_f1.json"))
        time.sleep(1.5)  # until then the name is still taken for this user (EEXIST)
        os.link(raw / f1, raw / "f1.json")
        assert len(os.listdir(raw)) == 7 and (raw / f1).read_text() == '{"n": 1}'
        # another owner's identical file is not taken for a copy of this one
        os.chmod(raw, 0o1777)
        code = "import sys\nopen(sys.argv[1], 'w').write(sys.argv[2])"
        assert as_user(65534, 65534, code, str(raw / "f2.json"), '{"n": 2}').returncode == 0
        assert len(os.listdir(raw)) == 8


def _seqs(raw: Path) -> list[int]:
    return sorted(int(SEQ.match(n)["seq"]) for n in os.listdir(raw))


def test_seldon_sequence_numbers_go_on_across_remounts_and_wrap_at_999(tmp_path: Path) -> None:
    import sqlite3

    from seldonfs.commit import SEQ_BLOCK

    from .conftest import init_store, mounted

    store = init_store(tmp_path / "store", "--profile", "seldon", encrypted=False)
    mnt = tmp_path / "mnt"
    raw = mnt / "input" / "raw"
    for i in range(3):  # clean remounts: one number after another
        with mounted(store, mnt):
            (raw / f"r{i}.json").write_text(f'{{"r": {i}}}')
            assert _seqs(raw) == list(range(1, i + 2))
    # kill -9: the rest of the reserved block is lost, no more
    with mounted(store, mnt, expect_log_problems=True) as proc:
        (raw / "k.json").write_text('{"k": 1}')
        proc.kill()
        proc.wait()
    with mounted(store, mnt, expect_log_problems=True):
        (raw / "after.json").write_text('{"after": 1}')
        seqs = _seqs(raw)
    assert seqs[:4] == [1, 2, 3, 4] and seqs[4] == 4 + SEQ_BLOCK
    # the end of the range: {seq:03d} shows 999 at most, then 001 again
    with sqlite3.connect(store / "catalog.sqlite") as conn:
        conn.execute("UPDATE sequences SET next = 998 WHERE job = 'INP001'")
    with mounted(store, mnt):
        for i in range(3):
            (raw / f"w{i}.json").write_text(f'{{"w": {i}}}')
        wrapped = {SEQ.match(n)["name"]: SEQ.match(n)["seq"] for n in os.listdir(raw) if n.endswith(("_w0.json", "_w1.json", "_w2.json"))}
        assert wrapped == {"w0.json": "998", "w1.json": "999", "w2.json": "001"}
        assert len(os.listdir(raw)) == 5 + 3  # every name its own file
