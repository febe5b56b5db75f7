"""Hostile names and many users, through the real mount (issue 16's repros).

Each test is one repro of what a second local user could do: names that
are not UTF-8, names that grow past 255 bytes at commit, a hard link or a
fifo into a checked folder, a new file at a deleted file's path, markup in
a name shown by the CLI. After each the mount still serves and what was
written is committed, quarantined or refused, never lost.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from seldonfs import xattrs
from seldonfs.catalog import name_of
from seldonfs.config import DEFAULT_TEMP_PATTERNS
from seldonfs.naming import is_temporary

from .conftest import needs_fuse, needs_root, seldonfs

pytestmark = needs_fuse

SSN = b'{"ssn": "123-45-6789"}'


def catalog_rows(store: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{store / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def settle(mnt: Path) -> None:
    """Wait for the file records' batch (at most 0.5 s) through a request that proves the mount alive."""
    import time

    time.sleep(0.8)
    os.listdir(mnt)


def test_names_that_are_not_utf8_are_kept_byte_for_byte(mnt: Path, store: Path) -> None:
    raw = os.fsencode(mnt / "input" / "raw")
    with open(raw + b"/\xff\xfebad.json", "wb") as f:
        f.write(b"{}")
    with open(raw + b"/ssn\xff.json", "wb") as f:
        f.write(SSN)
    reports = os.fsencode(mnt / "output" / "reports")
    for text in (b"one", b"two"):
        with open(reports + b"/rep\xff.txt", "wb") as f:  # an overwrite keeps a version
            f.write(text)
    settle(mnt)
    (committed,) = [n for n in os.listdir(raw) if n.endswith(b"bad.json")]
    assert committed.endswith(b"_\xff\xfebad.json")
    paths = [name_of(p) for (p,) in catalog_rows(store, "SELECT path FROM files")]
    assert "input/raw/" + os.fsdecode(committed) in paths
    qdir = os.fsencode(mnt / "input" / "quarantine")
    (q,) = os.listdir(qdir)
    assert q.endswith(b"_ssn\xff.json")
    assert os.getxattr(qdir + b"/" + q, xattrs.ORIGIN) == b"input/raw/ssn\xff.json"
    listed = seldonfs("quarantine", "list", mnt, "--json")
    assert listed.returncode == 0 and "ssn\\xff.json" in json.loads(listed.stdout.splitlines()[0])["origin"]
    seldonfs("quarantine", "release", os.fsdecode(qdir + b"/" + q), "--force", check=True)
    assert any(n.endswith(b"_ssn\xff.json") for n in os.listdir(raw))
    versions = json.loads(os.getxattr(reports + b"/rep\xff.txt", xattrs.VERSIONS))
    assert [v["size"] for v in versions] == [3]
    with open(reports + b"/rep\xff.txt", "rb") as f:
        assert f.read() == b"two"


def test_names_that_grow_past_255_bytes_are_shortened_not_refused(mnt: Path, store: Path) -> None:
    raw = mnt / "input" / "raw"
    long_ok, long_bad = "k" * 245 + ".json", "s" * 245 + ".json"
    (raw / long_ok).write_bytes(b'{"a": 1}')  # close(2) succeeds: no ENAMETOOLONG
    (raw / long_bad).write_bytes(SSN)
    settle(mnt)
    (committed,) = os.listdir(raw)
    assert len(committed.encode()) <= 255 and committed.endswith(".json") and committed.startswith("20")
    assert os.getxattr(raw / committed, xattrs.ORIGINAL) == long_ok.encode()
    (q,) = os.listdir(mnt / "input" / "quarantine")
    assert len(q.encode()) <= 255 and os.getxattr(mnt / "input" / "quarantine" / q, xattrs.ORIGIN).endswith(
        long_bad.encode())
    originals = {o for (o,) in catalog_rows(store, "SELECT original_name FROM files")}
    assert {long_ok, long_bad} <= originals


def test_a_hard_link_into_a_checked_folder_is_checked_and_fifos_are_refused(mnt: Path) -> None:
    src = mnt / "input" / "processed" / "src.json"
    src.write_bytes(SSN)
    os.link(src, mnt / "input" / "raw" / "linked.json")
    settle(mnt)
    assert os.listdir(mnt / "input" / "raw") == []  # not left there unchecked
    (q,) = os.listdir(mnt / "input" / "quarantine")
    assert q.endswith("_linked.json") and src.read_bytes() == SSN
    with pytest.raises(OSError) as e:
        os.mkfifo(mnt / "input" / "raw" / "pipe.json")
    assert e.value.errno == errno.EACCES
    os.mkfifo(mnt / "input" / "processed" / "pipe")  # a plain folder is a plain disk


def test_a_committed_file_emptied_without_a_write_is_checked_again(mnt: Path) -> None:
    """`: > f` opens a committed file with O_TRUNC and closes it unwritten:
    before, nothing was checked, and an empty file (no JSON) stayed in the
    checked folder. A shell's `echo > f` closes a dup of its descriptor
    before it writes; that one is checked once, with what it wrote."""
    raw = mnt / "input" / "raw"
    for name in ("emptied.json", "rewritten.json"):
        (raw / name).write_bytes(b'{"a": 1}')
    (emptied,) = raw.glob("*_emptied.json")
    (rewritten,) = raw.glob("*_rewritten.json")
    os.close(os.open(emptied, os.O_WRONLY | os.O_TRUNC))
    subprocess.run(["sh", "-c", f"echo '{{\"b\": 2}}' > '{rewritten}'"], check=True)
    settle(mnt)
    assert sorted(os.listdir(raw)) == [rewritten.name] and rewritten.read_bytes() == b'{"b": 2}\n'
    (q,) = os.listdir(mnt / "input" / "quarantine")
    assert q.endswith(emptied.name) and os.path.getsize(mnt / "input" / "quarantine" / q) == 0


def test_a_new_file_never_inherits_a_deleted_files_versions(mnt: Path) -> None:
    f = mnt / "output" / "reports" / "q3.txt"
    f.write_bytes(b"alice's first")
    f.write_bytes(b"alice's second")
    assert len(json.loads(os.getxattr(f, xattrs.VERSIONS))) == 1
    f.unlink()
    f.write_bytes(b"bob's")
    assert json.loads(os.getxattr(f, xattrs.VERSIONS)) == []
    with pytest.raises(OSError) as e:
        os.setxattr(f, xattrs.RESTORE, b"1")
    assert e.value.errno == errno.EINVAL and f.read_bytes() == b"bob's"
    tmp = mnt / "output" / "reports" / ".q3.txt.swp"  # an editor's save: the history goes on
    f.write_bytes(b"bob's second")
    tmp.write_bytes(b"bob's third")
    os.rename(tmp, f)
    assert [v["size"] for v in json.loads(os.getxattr(f, xattrs.VERSIONS))] == [12, 5]


def test_a_temporary_name_left_in_a_checked_folder_is_checked_after_temp_max_age(store: Path, tmp_path: Path) -> None:
    import time

    from .conftest import mounted

    cfg = store / "seldonfs.toml"
    cfg.write_text(cfg.read_text().replace('grace = "10s"', 'grace = "10s"\ntemp_max_age = "1s"'))
    m = tmp_path / "mnt"
    with mounted(store, m):
        raw = m / "input" / "raw"
        for name in ("evil.tmp", ".hidden", "evil.json~", "evil.part"):
            (raw / name).write_bytes(SSN)
        (m / "input" / "processed" / "moved.tmp").write_bytes(SSN)
        os.rename(m / "input" / "processed" / "moved.tmp", raw / "moved.tmp")
        (raw / "fine.json.part").write_bytes(b"{}")
        os.rename(raw / "fine.json.part", raw / "fine.json")  # a download that finished: commits at once
        deadline = time.monotonic() + 20
        while len(os.listdir(m / "input" / "quarantine")) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        left = os.listdir(raw)
        assert len(left) == 1 and left[0].endswith("_fine.json"), left
        assert len(os.listdir(m / "input" / "quarantine")) == 5


def test_markup_and_escapes_in_names_are_shown_escaped(mnt: Path) -> None:
    raw = mnt / "input" / "raw"
    (raw / "a[").mkdir()
    for name in ("a[/x].json", "[reverse]pwn.json", "esc\x1b[31m.json"):  # rich markup, an escape sequence
        (raw / name).write_bytes(SSN)
    settle(mnt)
    out = seldonfs("quarantine", "list", mnt)
    assert out.returncode == 0, out.stderr
    assert "a[/x].json" in out.stdout and "[reverse]pwn.json" in out.stdout
    assert "\x1b" not in out.stdout and "esc\\x1b[31m.json" in out.stdout
    audit = seldonfs("audit", mnt, "--op", "quarantine")
    assert audit.returncode == 0 and "\x1b" not in audit.stdout and "a[/x].json" in audit.stdout
    dry = seldonfs("janitor", mnt, "--dry-run", "--as-of", "+400d")
    assert dry.returncode == 0 and "\x1b" not in dry.stdout
    assert subprocess.run(["ls", mnt / "input" / "quarantine"], capture_output=True).returncode == 0


# ---------------------------------------------------------------- a second user


def _open_the_way(store: Path, tmp_path: Path) -> None:
    """Let another user reach the mount and the control socket (traversal only)."""
    import tempfile

    for p in (store, tmp_path, *tmp_path.parents):
        if p == Path(tempfile.gettempdir()) or p == p.parent:
            break
        p.chmod(p.stat().st_mode | 0o711)


SOCKET_GET = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
    "s.sendall(sys.argv[2].encode() + b' HTTP/1.0\\r\\n' + sys.argv[3].encode() + b'\\r\\n\\r\\n')\n"
    "print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
)


@needs_root
def test_what_the_policy_knows_is_not_for_other_users(store: Path, tmp_path: Path) -> None:
    from .conftest import as_user, mounted

    _open_the_way(store, tmp_path)
    m = tmp_path / "mnt"
    with mounted(store, m):
        (m / "input" / "raw" / "ssn.json").write_bytes(SSN)
        settle(m)
        for f in ("catalog.sqlite", "seldonfs.log", "control.token"):
            assert (store / f).stat().st_mode & 0o077 == 0, f
        code = "import sys\ntry:\n    open(sys.argv[1], 'rb').read(); print('read')\nexcept OSError as e:\n    print(e.errno)"
        for f in (m / "system/logs/audit.jsonl", m / "system/monitoring/stats.json", store / "catalog.sqlite"):
            assert as_user(65534, 65534, code, str(f)).stdout.strip() == str(errno.EACCES), f
        assert (m / "system/logs/audit.jsonl").read_bytes()  # the store's owner reads it


@needs_root
def test_the_control_api_never_takes_an_empty_token_and_bounds_what_refusals_cost(
        store: Path, tmp_path: Path) -> None:
    from .conftest import as_user, mounted

    _open_the_way(store, tmp_path)
    (store / "control.token").write_text("")  # emptied by accident or by malice
    m = tmp_path / "mnt"
    with mounted(store, m, expect_log_problems=True):
        token = (store / "control.token").read_text().strip()
        assert len(token) >= 32  # a new one was made
        sock = str(store / "control.sock")
        os.chmod(sock, 0o666)
        post = "POST /api/v1/cleanup/emergency"
        assert as_user(65534, 65534, SOCKET_GET, sock, post, "Authorization: Bearer ").stdout.split()[1] == "401"
        long_get = "GET /api/v1/" + "x" * 60_000
        for _ in range(100):
            as_user(65534, 65534, SOCKET_GET, sock, long_get, "X-None: 1")
        settle(m)
        refused = seldonfs("audit", store, "--op", "control", "--json")
        records = [json.loads(line) for line in refused.stdout.splitlines()]
        # 30 a minute for one peer (61: the requests may straddle a minute)
        assert 0 < len(records) <= 61 and max(len(r["detail"]) for r in records) < 300


def test_an_empty_passphrase_is_refused_from_every_source(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    for env, args in (({"SELDONFS_PASSPHRASE": ""}, []), ({}, ["--passphrase-file", empty])):
        r = seldonfs("init", tmp_path / f"s{len(args)}", *args, env={**os.environ, **env})
        assert r.returncode == 2 and "empty" in r.stderr, r.stderr


def test_decrypt_never_follows_a_symlink_out_of_the_store(tmp_path: Path) -> None:
    from .conftest import init_store, key_args

    store = init_store(tmp_path / "store")
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "f").write_text("not the store's")
    os.symlink(secret, store / "data" / "input" / "processed" / "link")
    r = seldonfs("decrypt", store, "input/processed/link/f", "-o", tmp_path / "out", *key_args(store))
    assert r.returncode == 2 and "symlink" in r.stderr and not (tmp_path / "out").exists()


def test_the_janitor_archives_a_file_whose_archive_name_would_pass_255_bytes(store: Path, tmp_path: Path) -> None:
    import gzip
    import time

    from .conftest import archive_day, key_args, mounted

    name = "r" * 250 + ".csv"
    m = tmp_path / "mnt"
    with mounted(store, m):
        f = m / "output" / "reports" / name
        f.write_text("a,b\n1,2\n")
        old = time.time() - 100 * 86400  # reports are archived after 90 days
        os.utime(f, (old, old))
    r = seldonfs("janitor", store, *key_args(store))
    assert r.returncode == 0 and "1 archive" in r.stdout, r.stdout + r.stderr
    with mounted(store, m):
        arch = archive_day(m / "archive" / "output_archive")
        names = sorted(os.listdir(arch))
        assert len(names) == 2 and all(len(n.encode()) <= 255 for n in names), names
        gz, meta = names
        assert meta == gz + ".meta.json" and gz.endswith(".gz")
        assert gzip.decompress((arch / gz).read_bytes()) == b"a,b\n1,2\n"
        assert json.loads((arch / meta).read_text())["original"] == "output/reports/" + name
        assert not (m / "output" / "reports" / name).exists()


def test_checksums_of_an_encrypted_store_confirm_nothing_without_its_key(store: Path, tmp_path: Path) -> None:
    import hashlib
    import hmac

    from seldonfs import audit, crypto
    from seldonfs.keys import KeySource, unlock
    from seldonfs.store import Store

    from .conftest import keyfile_of, mounted

    body = b'{"a": 1}'
    with mounted(store, tmp_path / "mnt"):
        (tmp_path / "mnt" / "input" / "raw" / "k.json").write_bytes(body)
        settle(tmp_path / "mnt")
    ((sha,),) = catalog_rows(store, "SELECT sha256 FROM files")
    block = Store(store).identity().get("encryption")
    if block is None:
        assert sha == hashlib.sha256(body).hexdigest()
        return
    assert sha != hashlib.sha256(body).hexdigest()
    key = crypto.subkey(audit.load_key(store, unlock(block, KeySource(keyfile=keyfile_of(store)))), b"checksum")
    assert sha == hmac.new(key, body, "sha256").hexdigest()


@needs_root
def test_one_user_never_sees_or_restores_another_users_versions(store: Path, tmp_path: Path) -> None:
    from .conftest import as_user, mounted

    _open_the_way(store, tmp_path)
    m = tmp_path / "mnt"
    with mounted(store, m):
        reports = m / "output" / "reports"
        reports.chmod(0o1777)
        alice = (
            "import os, sys\nos.umask(0o077)\np = sys.argv[1]\n"
            "for text in (b'alice first', b'alice second'):\n"
            "    with open(p, 'wb') as f: f.write(text)\n"
            "print(len(os.getxattr(p, 'user.seldon.versions')))\nos.unlink(p)\n"
        )
        r = as_user(1000, 1000, alice, str(reports / "q3.txt"))
        assert r.returncode == 0 and int(r.stdout) > 2, r.stderr  # alice had a version
        bob = (
            "import errno, os, sys\np = sys.argv[1]\n"
            "with open(p, 'wb') as f: f.write(b'bob')\n"
            "print(os.getxattr(p, 'user.seldon.versions').decode())\n"
            "try:\n    os.setxattr(p, 'user.seldon.restore', b'1'); print('restored')\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
            "print(open(p, 'rb').read().decode())\n"
        )
        r = as_user(1001, 1001, bob, str(reports / "q3.txt"))
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["[]", "EINVAL", "bob"]
        vdir = store / "data" / ".seldon" / "versions"
        assert len(os.listdir(vdir)) == 1  # alice's version is kept for root, out of everyone's reach
        assert as_user(1001, 1001, "import os, sys; print(os.listdir(sys.argv[1]))", str(m)).stdout.count(".seldon") == 0


@needs_root
def test_an_unprivileged_writer_with_any_name_never_ends_the_mount(store: Path, tmp_path: Path) -> None:
    """The name test's writes, as uid 65534 into world-writable folders of
    every kind: each is created or refused with EACCES, none is lost."""
    import random

    from .conftest import as_user, mounted

    rnd = random.Random(16)
    names = []
    for _ in range(300):
        raw = bytes(rnd.choice([b for b in range(1, 256) if b != 0x2F]) for _ in range(rnd.randint(1, 240)))
        names.append((raw + rnd.choice([b"", b".json", b".csv", b".tmp"]))[:255])
    names = [n for n in names if n not in (b".", b"..")]
    _open_the_way(store, tmp_path)
    m = tmp_path / "mnt"
    writer = (
        "import errno, os, sys\nroot = os.fsencode(sys.argv[1])\n"
        "for line in open(sys.argv[2], 'rb').read().split(b'\\n'):\n"
        "    folder, _, hexname = line.partition(b' ')\n"
        "    if not hexname: continue\n"
        "    name = bytes.fromhex(hexname.decode())\n"
        "    data = [b'{}', b'{\"ssn\": \"123-45-6789\"}', b'a,b\\n1,2\\n'][len(name) % 3]\n"
        "    try:\n"
        "        with open(root + b'/' + folder + b'/' + name, 'wb') as f: f.write(data)\n"
        "        print('ok', folder.decode(), hexname.decode())\n"
        "    except OSError as e:\n"
        "        print(errno.errorcode[e.errno], folder.decode(), hexname.decode())\n"
    )
    folders = ["input/raw", "output/reports", "input/processed", "temp/working"]
    plan = tmp_path / "plan"
    plan.write_bytes(b"\n".join(f"{folders[i % 4]} {n.hex()}".encode() for i, n in enumerate(names)))
    plan.chmod(0o644)
    with mounted(store, m) as daemon:
        for f in folders:
            (m / f).chmod(0o1777)
        r = as_user(65534, 65534, writer, str(m), str(plan))
        assert r.returncode == 0, r.stderr
        results = [line.split() for line in r.stdout.splitlines()]
        assert len(results) == len(names) and {res for res, _, _ in results} <= {"ok", "EACCES"}
        settle(m)
        assert daemon.poll() is None and os.listdir(m)
        conn = sqlite3.connect(f"file:{store / 'catalog.sqlite'}?mode=ro", uri=True)
        seen = {os.fsencode(name_of(o)) for (o,) in conn.execute("SELECT original_name FROM files")}
        seen |= {os.fsencode(name_of(o)).rpartition(b"/")[2] for (o,) in conn.execute("SELECT origin FROM quarantine")}
        conn.close()
        for res, folder, hexname in results:
            name = bytes.fromhex(hexname)
            if res != "ok":
                continue
            if folder == "input/raw" and not is_temporary(os.fsdecode(name), DEFAULT_TEMP_PATTERNS):
                assert name in seen, name  # checked: committed or quarantined, never left as it came
            else:
                assert os.path.lexists(os.fsencode(m) + b"/" + folder.encode() + b"/" + name), (folder, name)
        assert sum(res == "ok" for res, _, _ in results) > 100


def test_the_log_stays_owner_only_and_takes_stderr_across_rotations(tmp_path: Path) -> None:
    """Issue 17, repro 8: the daemon's umask is 0; after a rotation the new
    seldonfs.log must still be 0600, and fd 2 must write into it."""
    import subprocess
    import sys

    code = (
        "import logging, os, sys\nfrom pathlib import Path\nfrom seldonfs.mount import LogFile\n"
        "os.umask(0)\np = Path(sys.argv[1])\nh = LogFile(p, stderr_too=True, max_bytes=2000)\n"
        "log = logging.getLogger('t'); log.addHandler(h); log.propagate = False\n"
        "for i in range(100): log.error('line %d %s', i, 'x' * 50)\n"
        "os.write(2, b'AFTER-ROTATION\\n')\n"
    )
    log = tmp_path / "seldonfs.log"
    r = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "seldonfs.log.1").exists()  # it rotated
    for p in tmp_path.glob("seldonfs.log*"):
        assert p.stat().st_mode & 0o777 == 0o600, p
    assert "AFTER-ROTATION" in log.read_text()


def test_audit_verify_of_a_missing_or_broken_catalog_is_one_line_and_exit_26(tmp_path: Path) -> None:
    from .conftest import init_store, key_args, mounted

    store = init_store(tmp_path / "store")
    with mounted(store, tmp_path / "mnt"):  # a chain of a few records, and its key
        (tmp_path / "mnt" / "input" / "processed" / "f").write_bytes(b"x")
    (store / "catalog.sqlite").unlink()
    r = seldonfs("audit", "verify", store, *key_args(store))
    assert r.returncode == 26 and "missing" in r.stderr and "Traceback" not in r.stderr, r.stderr
    (store / "catalog.sqlite").write_bytes(b"not a database at all" * 100)
    r = seldonfs("audit", "verify", store, *key_args(store))
    assert r.returncode == 26 and "unreadable" in r.stderr and "Traceback" not in r.stderr, r.stderr
