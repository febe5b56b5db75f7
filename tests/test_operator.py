"""Issue 20, fitting how operators already work: JSON that `jq` reads,
one log line per event, signals, secrets from files and the environment,
progress on stderr, one exit code for "not a SeldonFS mount"."""

from __future__ import annotations

import errno
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    SELDONFS, as_user, init_store, keyfile_of, mounted, needs_fuse, needs_root, seldonfs, unmount, wait_for,
)

REFUSALS_JSON = ".seldonfs-refusals.json"


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
            for _ in range(2):
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
            # a secret on argv is refused, before anything is sent
            r = seldonfs("ctl", m, "health", "--token", "on-argv")
            assert r.returncode == 2 and r.stderr.count("\n") == 1 and "use --token-file FILE" in r.stderr, r.stderr
        finally:
            t.join(timeout=20)
            srv.close()
    assert [re.search(rb"Authorization: Bearer (\S+)", r)[1] for r in seen] == [b"from-the-file", b"from-the-file"]


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


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users can traverse, outside pytest's own (each
    pytest run, another one beside this too, makes /tmp/pytest-of-USER
    0700 again)."""
    d = Path(tempfile.mkdtemp(prefix="seldonfs-op", dir="/tmp"))
    d.chmod(0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _chain(store: Path) -> list[dict]:
    """The audit records as stored (read after the unmount, from the catalog)."""
    import sqlite3

    from seldonfs.audit import FIELDS

    conn = sqlite3.connect(store / "catalog.sqlite")
    try:
        rows = conn.execute(f"SELECT {', '.join(FIELDS)}, mac FROM audit ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [{**dict(zip(FIELDS, r[:-1])), "mac": bytes(r[-1]).hex()} for r in rows]


_READ_REFUSALS = "import sys; sys.stdout.write(open(sys.argv[1]).read())"


@needs_fuse
@needs_root
def test_why_names_the_reason_of_each_refusal(open_dir: Path) -> None:
    """A refused create, a refused write, a quarantine at commit: each
    with its reason in the audit record and in `seldonfs why`; a name with
    ESC and newline printed escaped; another user sees only their own."""
    tmp_path = open_dir
    store = init_store(tmp_path / "store", encrypted=False)
    toml = store / "seldonfs.toml"
    toml.write_text(toml.read_text().replace('max_size = "100MiB"', 'max_size = "4KiB"', 1))  # input/raw
    (store / "data/input/raw").chmod(0o777)
    m = tmp_path / "m"
    raw = m / "input/raw"
    hostile = "bad\x1b[31mname\n.exe"
    with mounted(store, m):
        with pytest.raises(PermissionError):
            (raw / hostile).write_text("x")
        with pytest.raises(OSError) as big:
            with open(raw / "big.json", "wb") as f:
                f.write(b"{" + b" " * 5000 + b"}")
        assert big.value.errno == errno.EFBIG
        fd = os.open(raw / "loop.json", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for _ in range(20):  # a writer that goes on after EFBIG: one refusal, one record
                with pytest.raises(OSError) as e:
                    os.write(fd, b" " * 5000)
                assert e.value.errno == errno.EFBIG
        finally:
            os.close(fd)
        (raw / "q.json").write_text("{not json")
        r = as_user(65534, 65534, "open(__import__('sys').argv[1], 'w')", str(raw / "theirs.exe"))
        assert "PermissionError" in r.stderr and "theirs.exe" in r.stderr, r.stderr

        r = seldonfs("why", raw / hostile)
        assert r.returncode == 0, r.stderr
        assert "\x1b" not in r.stdout and r.stdout.count("\n") == 1, r.stdout
        assert (" create input/raw/bad\\x1b[31mname\\x0a.exe: EACCES: extension .exe not allowed here" in r.stdout
                and "(uid 0, pid " in r.stdout), r.stdout
        r = seldonfs("why", raw / "big.json")
        assert r.returncode == 0 and "write input/raw/big.json: EFBIG: file size limit of the folder: 4096 bytes" in r.stdout
        r = seldonfs("why", raw / "q.json", "--json")
        assert r.returncode == 0, r.stderr
        (q,) = json.loads(r.stdout)["refusals"]
        assert (q["op"], q["result"], q["path"], q["uid"]) == ("commit", "OK", "input/raw/q.json", 0)
        assert q["reason"].startswith("quarantined: not valid JSON") and q["path2"].startswith("input/quarantine/")
        r = seldonfs("why", raw / "never.json")
        assert r.returncode == 1 and "no refusal known" in r.stderr and r.stdout == ""
        r = seldonfs("why", m / "input", "--json")  # a folder: everything under it
        paths = [x["path"] for x in json.loads(r.stdout)["refusals"]]
        assert paths.count("input/raw/loop.json") == 2  # its write, once, and its quarantine (empty: not JSON)
        assert paths.count("input/raw/big.json") == 2 and "input/raw/theirs.exe" in paths and "input/raw/" + hostile in paths

        # who sees what: root all, another user only their own (stats.json is root's and the owner's)
        mine = json.loads(as_user(65534, 65534, _READ_REFUSALS, str(m / REFUSALS_JSON)).stdout)["refusals"]
        assert [(x["uid"], x["path"]) for x in mine] == [(65534, "input/raw/theirs.exe")]
        r = seldonfs("stats", m, "--json")
        assert len(json.loads(r.stdout)["refusals"]) == len(paths)
        r = as_user(65534, 65534, _READ_REFUSALS, str(m / "system/monitoring/stats.json"))
        assert "PermissionError" in r.stderr

    records = _chain(store)
    refused = {(r["op"], r["path"], r["result"]): r["detail"] for r in records if r["result"] != "OK"}
    assert refused[("create", "input/raw/" + hostile, "EACCES")].startswith("extension .exe not allowed here")
    assert refused[("create", "input/raw/theirs.exe", "EACCES")].startswith("extension .exe not allowed here")
    assert refused[("write", "input/raw/big.json", "EFBIG")] == "file size limit of the folder: 4096 bytes"
    assert sum(1 for r in records if r["path"] == "input/raw/loop.json" and r["result"] == "EFBIG") == 1
    assert [r["detail"] for r in records if r["op"] == "quarantine" and r["path"] == "input/raw/q.json"][0].startswith(
        "not valid JSON")
    for where in (tmp_path, m):
        r = seldonfs("why", where / "x")
        assert r.returncode == 10 and "not inside a SeldonFS mount" in r.stderr


def test_no_command_takes_a_secret_on_its_command_line() -> None:
    """`ps` shows every argument to every user: a key, passphrase or token
    is only ever named by a file (or the environment). The old
    `ctl --token` is kept only to be refused."""
    import argparse

    from seldonfs.cli import build_parser

    def parsers(p: argparse.ArgumentParser):
        yield p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub in a.choices.values():
                    yield from parsers(sub)

    secret = re.compile(r"token|passphrase|password|secret|key", re.I)
    seen = []
    for p in parsers(build_parser()):
        for a in p._actions:
            for opt in a.option_strings:
                if secret.search(opt):
                    seen.append((p.prog, opt))
                    assert opt.endswith("file") or (opt == "--token" and a.help == argparse.SUPPRESS), (p.prog, opt)
    assert ("seldonfs init", "--keyfile") in seen and ("seldonfs passwd", "--new-passphrase-file") in seen


@needs_fuse
def test_a_bad_mount_option_names_libfuses_reason(tmp_path: Path) -> None:
    """The one line `seldonfs mount` prints says what libfuse refused,
    in the background and in the foreground; the log keeps libfuse's line."""
    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "m"
    m.mkdir()
    want = "seldonfs: FUSE refused the mount options: unknown option(s): `-o no_such_option'\n"
    r = seldonfs("mount", "-o", "allow_other,no_such_option", store, m)
    assert r.returncode == 2 and r.stderr == want, r.stderr
    assert "fuse: unknown option(s): `-o no_such_option'" in (store / "seldonfs.log").read_text()
    r = seldonfs("mount", "-f", "-o", "no_such_option", store, m)
    assert r.returncode == 2 and r.stderr.endswith(want), r.stderr
    assert not os.path.ismount(m)


def _journal_entries(sock: socket.socket, until, limit: int = 500) -> list[dict[str, str]]:
    """Datagrams of the native journal protocol, decoded, until `until(entry)`."""
    from seldonfs.journal import decode

    got = []
    for _ in range(limit):
        got.append(decode(sock.recv(1 << 17)))
        if until(got[-1]):
            return got
    raise AssertionError(f"not seen in {limit} entries: {got}")


@needs_fuse
def test_under_systemd_the_log_goes_to_the_journal_with_its_fields(tmp_path: Path) -> None:
    """$JOURNAL_STREAM set (systemd started the daemon): each log record is
    one datagram of journal fields on the journal's socket (here one the
    test binds, named by $SELDONFS_JOURNAL_SOCKET), not a line on stderr;
    --log-level warning keeps the INFO lines out."""
    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "m"
    m.mkdir()
    sock_dir = Path(tempfile.mkdtemp(prefix="jrn", dir="/tmp"))  # a socket path has 107 bytes at most
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    toml = store / "seldonfs.toml"
    good = toml.read_text()
    env = {**os.environ, "JOURNAL_STREAM": "8:12345", "SELDONFS_JOURNAL_SOCKET": str(sock_dir / "journal")}
    try:
        sock.bind(str(sock_dir / "journal"))
        sock.settimeout(20)
        for level in ("info", "warning"):
            toml.write_text(good)
            errlog = tmp_path / f"{level}.stderr"
            with open(errlog, "w") as err:
                proc = subprocess.Popen(SELDONFS + ["mount", "-f", "--log-level", level, str(store), str(m)],
                                        stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env)
                try:
                    wait_for(lambda: os.path.ismount(m) or proc.poll() is not None, what="mount")
                    with pytest.raises(PermissionError):
                        (m / "input/raw/two\nlines.exe").write_text("x")
                    toml.write_text(good + "\n[janitor.oops\n")
                    proc.send_signal(signal.SIGHUP)
                    got = _journal_entries(sock, lambda e: "SIGHUP" in e["MESSAGE"])
                finally:
                    unmount(m)
                    assert proc.wait(timeout=20) == 0
            assert "SIGHUP" not in errlog.read_text() and "mounted" not in errlog.read_text()
            warn = got[-1]
            assert warn["PRIORITY"] == "4" and warn["SYSLOG_IDENTIFIER"] == "seldonfs"
            assert warn["MESSAGE"].startswith("seldonfs.mount: SIGHUP: the configuration was not reloaded")
            assert warn["SELDONFS_STORE"] == str(store) and warn["SELDONFS_LOGGER"] == "seldonfs.mount"
            assert warn["CODE_FILE"].endswith("seldonfs/mount.py") and int(warn["CODE_LINE"]) > 0
            if level == "info":
                mounted_ = [e for e in got if e["MESSAGE"].startswith("seldonfs.mount: mounted ")]
                assert len(mounted_) == 1 and mounted_[0]["PRIORITY"] == "6"
                (refused,) = [e for e in got if "refused input/raw/two" in e["MESSAGE"]]
                assert refused["MESSAGE"] == "seldonfs.engine: refused input/raw/two\nlines.exe: extension .exe " \
                    "not allowed here (.json .csv .pdf .xlsx .xml)"  # a newline: the protocol's binary form
            else:
                assert [e["PRIORITY"] for e in got] == ["4"], got
            sock.settimeout(0.5)  # what the unmount logged
            try:
                while True:
                    sock.recv(1 << 17)
            except TimeoutError:
                pass
            sock.settimeout(20)
    finally:
        sock.close()
        shutil.rmtree(sock_dir)


def test_a_mount_keeps_its_last_refusals_only() -> None:
    from seldonfs.refusals import LAST, Refusals

    kept = Refusals()
    for i in range(LAST + 50):
        kept.add("create", 1000 + i % 2, 1, f"input/raw/{i}.exe", errno.EACCES, "extension .exe not allowed here")
    listing = kept.listing()
    assert len(listing) == LAST == 100 and listing[0]["path"] == "input/raw/50.exe" and listing[-1]["result"] == "EACCES"
    assert {r["uid"] for r in kept.listing(uid=1001)} == {1001} and len(kept.listing(uid=1001)) == LAST // 2
    doc = json.loads(b"".join(kept.document(1000)))
    assert len(doc["refusals"]) == LAST // 2
