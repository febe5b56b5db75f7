"""Issue 20, fitting how operators already work: JSON that `jq` reads,
one log line per event, signals, secrets from files and the environment,
progress on stderr, one exit code for "not a SeldonFS mount"."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from .conftest import SELDONFS, init_store, keyfile_of, mounted, needs_fuse, seldonfs, unmount, wait_for


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
    (doc,) = _json_lines(r.stdout)
    assert doc == {"store": str(store), "mounted": False, "profile": "seldon", "disk_percent": doc["disk_percent"],
                   "key": doc["key"]} and doc["key"]["age_days"] < 1 and not doc["key"]["rotate_due"]

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


def _stats(m: Path) -> dict:
    return json.loads((m / "system/monitoring/stats.json").read_text())


@needs_fuse
def test_sighup_reloads_as_ctl_reload_does_and_tells_systemd(tmp_path: Path) -> None:
    """SIGHUP re-reads seldonfs.toml (the janitor's thresholds take it now);
    a broken file keeps the running one; the mount stays. With
    $NOTIFY_SOCKET it says READY=1, RELOADING=1 ... READY=1, STOPPING=1."""
    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "m"
    sock_dir = Path(tempfile.mkdtemp(prefix="sdn", dir="/tmp"))  # a socket path has 107 bytes at most
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(sock_dir / "notify"))
        sock.settimeout(20)
        toml = store / "seldonfs.toml"
        with mounted(store, m, env={"NOTIFY_SOCKET": str(sock_dir / "notify")}, expect_log_problems=True):
            assert sock.recv(4096) == b"READY=1"
            pid = int((store / "lock").read_text())
            assert _stats(m)["disk"]["warning"] == 80
            toml.write_text(toml.read_text().replace("warning = 80", "warning = 70"))
            os.kill(pid, signal.SIGHUP)
            states = sock.recv(4096).decode().split("\n")
            assert states[0] == "RELOADING=1" and states[1].startswith("MONOTONIC_USEC=")
            assert sock.recv(4096) == b"READY=1"
            assert os.path.ismount(m) and _stats(m)["disk"]["warning"] == 70
            toml.write_text(toml.read_text() + "\n[janitor.oops\n")
            os.kill(pid, signal.SIGHUP)
            sock.recv(4096)
            assert sock.recv(4096) == b"READY=1"
            assert os.path.ismount(m) and _stats(m)["disk"]["warning"] == 70
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        sock.close()
        shutil.rmtree(sock_dir)
    log = (store / "seldonfs.log").read_text()
    assert "SIGHUP: " + str(toml) + " reloaded; applied now: janitor, alerts" in log
    warns = [l for l in log.splitlines() if " WARNING " in l or " ERROR " in l]
    assert len(warns) == 1 and "SIGHUP: the configuration was not reloaded, the running one stays" in warns[0]


@needs_fuse
def test_keyfile_from_the_environment_for_every_command_that_unlocks(tmp_path: Path) -> None:
    store = init_store(tmp_path / "store")
    env = {**os.environ, "SELDONFS_KEYFILE": str(keyfile_of(store))}
    m = tmp_path / "m"
    m.mkdir()
    for args in (["verify"], ["fsck"], ["audit", "verify"], ["decrypt", "-o", tmp_path / "out"], ["rekey"],
                 ["passwd", "--new-keyfile", keyfile_of(store)]):
        r = seldonfs(*args, store)
        assert r.returncode == 12 and "use --keyfile FILE or SELDONFS_KEYFILE=FILE" in r.stderr, (args, r.stderr)
        r = seldonfs(*args, store, env=env)
        assert r.returncode == 0, (args, r.stderr)
    pstore, pfile = tmp_path / "pstore", tmp_path / "pass"
    pfile.write_text("correct horse\n")
    seldonfs("init", pstore, "--passphrase-file", pfile, check=True)
    r = seldonfs("verify", pstore, env=env)
    assert r.returncode == 12 and "($SELDONFS_KEYFILE is set: unset it, or give --passphrase-file)" in r.stderr
    assert seldonfs("verify", pstore, "--passphrase-file", pfile, env=env).returncode == 0
    try:
        r = seldonfs("mount", store, m, env=env)
        assert r.returncode == 0 and os.path.ismount(m), r.stderr
        assert seldonfs("umount", m).returncode == 0
        # as mount(8) runs it: the hint names the -o option
        r = subprocess.run([*SELDONFS[:-1], "seldonfs.cli.mount_helper", str(store), str(m), "-o", "allow_other"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert r.returncode == 12 and r.stderr.strip() == (
            "seldonfs: this store is unlocked with a key file: use -o keyfile=FILE"), r.stderr
        assert not os.path.ismount(m)
    finally:
        unmount(m)


@needs_fuse
def test_ctl_reads_the_token_from_a_file(tmp_path: Path) -> None:
    """What ctl sends, seen by a socket put in the place of the mount's."""
    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "m"
    (tmp_path / "token").write_text("from-the-file\n")
    with mounted(store, m):
        r = seldonfs("ctl", m, "health", "--token-file", tmp_path / "nope")
        assert r.returncode == 2 and "nope: cannot read the token file" in r.stderr, r.stderr
        (store / "control.sock").rename(store / "control.sock.real")
        seen: list[bytes] = []
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(str(store / "control.sock"))
        srv.listen()

        def answer() -> None:
            for _ in range(3):
                conn, _ = srv.accept()
                with conn:
                    seen.append(conn.recv(4096))
                    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}')

        t = threading.Thread(target=answer)
        t.start()
        try:
            assert seldonfs("ctl", m, "health", "--token-file", tmp_path / "token").returncode == 0
            env = {**os.environ, "SELDONFS_TOKEN_FILE": str(tmp_path / "token")}
            assert seldonfs("ctl", m, "health", env=env).returncode == 0
            assert seldonfs("ctl", m, "health", "--token", "on-argv").returncode == 0
        finally:
            t.join(timeout=20)
            srv.close()
    assert [re.search(rb"Authorization: Bearer (\S+)", r)[1] for r in seen] == [
        b"from-the-file", b"from-the-file", b"on-argv"]


def _run_with_tty_stderr(*args: object, stdout) -> tuple[int, bytes]:
    """Run seldonfs with stderr on a terminal; (exit code, what the terminal got)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(SELDONFS + [str(a) for a in args], stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=slave, env={**os.environ, "TERM": "xterm", "COLUMNS": "100"})
        os.close(slave)
        got = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            got += chunk
        return proc.wait(timeout=60), got
    finally:
        os.close(master)


def test_progress_goes_to_a_terminal_on_stderr_only(tmp_path: Path) -> None:
    """`verify STORE > out.txt` with stderr on a terminal: the bar is drawn
    there, out.txt holds only the result; --quiet draws nothing."""
    store = init_store(tmp_path / "store", encrypted=False)
    for i in range(300):
        (store / f"data/temp/processing/{i}.tmp").write_text("x")
        os.utime(store / f"data/temp/processing/{i}.tmp", (1e9, 1e9))
    estore = init_store(tmp_path / "estore")
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        code, tty = _run_with_tty_stderr("verify", estore, "--keyfile", keyfile_of(estore), stdout=f)
    assert code == 0 and out.read_text() == "0 files checked, 0 damaged\n"
    with open(out, "wb") as f:
        code, tty = _run_with_tty_stderr("janitor", store, stdout=f)
    assert code == 0 and "cleaning" in tty.decode() and "300/300" in tty.decode().replace(" ", ""), tty
    assert out.read_text().count("\n") == 302 and "\r" not in out.read_text() and "\x1b" not in out.read_text()
    (store / "data/temp/processing/late.tmp").write_text("x")
    os.utime(store / "data/temp/processing/late.tmp", (1e9, 1e9))
    with open(out, "wb") as f:
        code, tty = _run_with_tty_stderr("janitor", store, "--quiet", stdout=f)
    assert code == 0 and tty == b"" and "done: 1 delete" in out.read_text()


@needs_fuse
def test_a_store_finds_its_mount_and_not_a_mount_is_exit_10(tmp_path: Path) -> None:
    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "m"
    with mounted(store, m):
        r = seldonfs("stats", store, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["mountpoint"] == str(m), r.stderr
        r = seldonfs("top", store, "--once", "--interval", "0.1")
        assert r.returncode == 0 and str(m) in r.stdout, r.stderr
        r = seldonfs("ctl", store, "health")
        assert r.returncode == 0 and json.loads(r.stdout)["status"] == "ok", r.stderr
        r = seldonfs("status", store, "--json")
        assert [(d["mountpoint"], d["mounted"]) for d in _json_lines(r.stdout)] == [(str(m), True)]
        r = seldonfs("umount", store)
        assert r.returncode == 0 and not os.path.ismount(m), r.stderr
    for target in (store, tmp_path):
        for args in (["stats"], ["top", "--once"], ["ctl", "health"], ["umount"]):
            r = seldonfs(args[0], target, *args[1:])
            assert r.returncode == 10 and r.stderr == f"seldonfs: {target}: not a SeldonFS mount\n", (args, r.stderr)
