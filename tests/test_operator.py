"""Issue 20, fitting how operators already work: JSON that `jq` reads,
one log line per event, signals, secrets from files and the environment,
progress on stderr, one exit code for "not a SeldonFS mount"."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from .conftest import SELDONFS, init_store, needs_fuse, seldonfs, unmount, wait_for


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_json_is_all_of_stdout(tmp_path: Path) -> None:
    """Under --json every command's stdout parses as JSON; the text lines
    (summaries, "dry run: ...", "done: ...") go to stderr."""
    store, key = tmp_path / "store", tmp_path / "store.key"
    r = seldonfs("init", store, "--keyfile", key, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"store": str(store), "profile": "seldon", "encrypted": True,
                                    "keyfile_created": str(key)}
    assert "created key file" in r.stderr
    k = ["--keyfile", key]
    for cmd, want in (("verify", {"files": 0, "damaged": []}), ("fsck", {"problems": [], "fatal": []}),
                      ("rekey", {"moved": 0})):
        r = seldonfs(cmd, store, *k, "--json")
        assert r.returncode == 0, (cmd, r.stderr)
        doc = json.loads(r.stdout)
        assert doc["store"] == str(store) and doc.items() >= want.items(), (cmd, doc)
    r = seldonfs("decrypt", store, *k, "-o", tmp_path / "out", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["damaged"] == [], r.stderr
    r = seldonfs("status", store, "--json")
    assert _json_lines(r.stdout) == [{"store": str(store), "mounted": False, "profile": "seldon",
                                      "disk_percent": _json_lines(r.stdout)[0]["disk_percent"]}]

    plain = init_store(tmp_path / "plain", encrypted=False)
    (plain / "data/temp/processing/old.tmp").write_text("x" * 10)
    (plain / "data/temp/processing/new.tmp").write_text("y")
    os.utime(plain / "data/temp/processing/old.tmp", (1e9, 1e9))
    r = seldonfs("janitor", plain, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert [(a["kind"], a["rel"]) for a in _json_lines(r.stdout)] == [("delete", "temp/processing/old.tmp")]
    assert "dry run: 1 files, 10 bytes (1 delete)" in r.stderr
    r = seldonfs("janitor", plain, "--json")
    assert r.returncode == 0, r.stderr
    assert [a["rel"] for a in _json_lines(r.stdout)] == ["temp/processing/old.tmp"]
    assert "plan: 1 files" in r.stderr and "done: 1 delete" in r.stderr
    assert not (plain / "data/temp/processing/old.tmp").exists()
    runs = _json_lines(seldonfs("janitor", plain, "--runs", "--json").stdout)
    assert [r["done"] for r in runs] == [1]


def _once(lines: list[str], needle: str) -> None:
    assert sum(needle in line for line in lines) == 1, (needle, [l for l in lines if needle in l])


@needs_fuse
def test_each_log_line_once_and_d_logs_every_request(tmp_path: Path) -> None:
    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "m"
    m.mkdir()
    try:
        r = seldonfs("mount", "-d", store, m)
        assert r.returncode == 0, r.stderr
        (m / "input/processed/f").write_text("x")
        assert seldonfs("umount", m).returncode == 0
    finally:
        unmount(m)
    log = store / "seldonfs.log"
    assert log.stat().st_mode & 0o777 == 0o600
    lines = log.read_text().splitlines()
    for needle in (": mounted ", "descriptor limit", ": unmounted "):
        _once(lines, needle)
    assert any(re.search(r" DEBUG seldonfs.fuse_ops: create inode \d+: OK, \d+ us$", l) for l in lines)
    assert any(re.search(r" DEBUG seldonfs.fuse_ops: write fh \d+: OK, \d+ us$", l) for l in lines)
    infos = [l for l in lines if " INFO " in l]
    assert len(infos) == len(set(infos))

    errlog = tmp_path / "fg.stderr"
    with open(errlog, "w") as err:
        proc = subprocess.Popen(SELDONFS + ["mount", "-f", "-d", str(store), str(m)], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err)
        try:
            wait_for(lambda: os.path.ismount(m) or proc.poll() is not None, what="mount")
            os.listdir(m)
        finally:
            unmount(m)
            assert proc.wait(timeout=20) == 0
    lines = errlog.read_text().splitlines()
    for needle in (": mounted ", ": unmounted "):
        _once(lines, needle)
    assert any(" DEBUG seldonfs.fuse_ops: readdir fh " in l for l in lines)
