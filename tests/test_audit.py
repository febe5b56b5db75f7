"""The audit chain through the real mount: records, tampering, crashes."""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seldonfs import fsck

from .conftest import (
    as_user,
    configure,
    init_store,
    key_args,
    keyfile_of,
    mounted,
    needs_fuse,
    needs_root,
    seldonfs,
    small_disk,
    unmount,
    wait_for,
    webhook_server,
)

pytestmark = needs_fuse


def records(target: Path, *args: str) -> list[dict]:
    out = seldonfs("audit", target, "--json", *args, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def verify(store: Path) -> subprocess.CompletedProcess:
    return seldonfs("audit", "verify", store, *key_args(store))


@needs_root
def test_each_change_is_recorded_with_who_did_it(store: Path, tmp_path: Path) -> None:
    m = tmp_path / "mnt"
    with mounted(store, m):
        d = m / "input" / "processed" / "shared"
        d.mkdir()
        d.chmod(0o777)
        code = (
            "import os, sys\n"
            "d = sys.argv[1]\n"
            "print(os.getpid(), flush=True)\n"
            "with open(d + '/a', 'w') as f: f.write('hello')\n"
            "os.mkdir(d + '/sub')\n"
            "os.rename(d + '/a', d + '/sub/b')\n"
            "os.chmod(d + '/sub/b', 0o600)\n"
            "os.truncate(d + '/sub/b', 2)\n"
            "with open(d + '/sub/b', 'w') as f: f.write('new')\n"
            "os.setxattr(d + '/sub/b', 'user.note', b'x')\n"
            "os.removexattr(d + '/sub/b', 'user.note')\n"
            "os.link(d + '/sub/b', d + '/c')\n"
            "os.symlink('c', d + '/s')\n"
            "os.unlink(d + '/c')\n"
            "os.unlink(d + '/s')\n"
            "os.unlink(d + '/sub/b')\n"
            "os.rmdir(d + '/sub')\n"
            "try: os.setxattr(d, 'user.seldon.reason', b'forged')\n"
            "except PermissionError: pass\n"
        )
        r = as_user(65534, 65534, code, str(d))
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout.split()[0])
    got = [(x["op"], x["path"], x["path2"], x["result"], x["bytes"], x["detail"])
           for x in records(store, "--uid", "65534")]
    # with the writeback cache a truncate also carries the kernel's mtime
    got = [g[:5] + (g[5].removesuffix(" mtime"),) for g in got]
    p = "input/processed/shared"
    assert got == [
        ("create", f"{p}/a", "", "OK", 0, ""),
        ("write", f"{p}/a", "", "OK", 5, ""),
        ("mkdir", f"{p}/sub", "", "OK", 0, ""),
        ("rename", f"{p}/a", f"{p}/sub/b", "OK", 0, ""),
        ("setattr", f"{p}/sub/b", "", "OK", 0, "mode=600"),
        ("setattr", f"{p}/sub/b", "", "OK", 0, "size=2"),
        ("open", f"{p}/sub/b", "", "OK", 0, "w+trunc"),
        ("write", f"{p}/sub/b", "", "OK", 3, ""),
        ("setxattr", f"{p}/sub/b", "", "OK", 0, "user.note"),
        ("removexattr", f"{p}/sub/b", "", "OK", 0, "user.note"),
        ("link", f"{p}/sub/b", f"{p}/c", "OK", 0, ""),
        ("symlink", f"{p}/s", "", "OK", 0, ""),
        ("unlink", f"{p}/c", "", "OK", 0, ""),
        ("unlink", f"{p}/s", "", "OK", 0, ""),
        ("unlink", f"{p}/sub/b", "", "OK", 0, ""),
        ("rmdir", f"{p}/sub", "", "OK", 0, ""),
        ("setxattr", p, "", "EPERM", 0, "user.seldon.reason"),
    ]
    mine = records(store, "--uid", "65534")
    assert {(x["pid"], x["proc"], x["gid"]) for x in mine} == {(pid, "python3", 65534)}
    ops = [x["op"] for x in records(store)]
    assert ops[0] == "mount" and ops[-1] == "unmount"
    assert verify(store).returncode == 0


def test_policy_decisions_are_recorded(store: Path, tmp_path: Path) -> None:
    m = tmp_path / "mnt"
    with mounted(store, m):
        (m / "input" / "raw" / "data.json").write_text('{"a": 1}')
        (m / "input" / "raw" / "bad.json").write_text('{"a": ')
    commits = records(store, "--op", "commit")
    assert [c["path"] for c in commits] == ["input/raw/data.json"]
    assert commits[0]["path2"].endswith("_data.json") and "sha256=" in commits[0]["detail"]
    (q,) = records(store, "--op", "quarantine")
    assert q["path"] == "input/raw/bad.json" and "not valid JSON" in q["detail"]
    assert records(store, "--path", "input/raw/bad.json", "--op", "create")[0]["result"] == "OK"


def make_chain(store: Path, tmp_path: Path) -> None:
    with mounted(store, tmp_path / "mnt"):
        for i in range(5):
            (tmp_path / "mnt" / "input" / "processed" / f"f{i}").write_text("x")
    assert verify(store).returncode == 0


def tamper(store: Path, *sql: str) -> subprocess.CompletedProcess:
    conn = sqlite3.connect(store / "catalog.sqlite")
    with conn:
        for s in sql:
            conn.execute(s)
    conn.close()
    return verify(store)


@pytest.mark.parametrize(
    "sql, kind",
    [
        (["UPDATE audit SET path = 'elsewhere' WHERE seq = 4"], "edited"),
        (["UPDATE audit SET uid = 7 WHERE seq = (SELECT max(seq) FROM audit)"], "edited"),
        (["DELETE FROM audit WHERE seq = 4"], "deleted"),
        (
            [
                "UPDATE audit SET id = -4 WHERE seq = 4",
                "UPDATE audit SET id = 4 WHERE seq = 5",
                "UPDATE audit SET id = 5 WHERE seq = 4",
            ],
            "reordered",
        ),
        (
            ["INSERT INTO audit (seq, ns, uid, gid, pid, proc, op, path, path2, result, bytes, detail, mac)"
             " SELECT max(seq) + 1, 0, 0, 0, 1, 'evil', 'unlink', 'x', '', 'OK', 0, '', x'00' FROM audit"],
            "inserted",
        ),
        (["DELETE FROM audit WHERE seq >= (SELECT max(seq) - 2 FROM audit)"], "truncated"),
    ],
)
def test_tampering_is_named(store: Path, tmp_path: Path, sql: list[str], kind: str) -> None:
    make_chain(store, tmp_path)
    r = tamper(store, *sql)
    assert r.returncode == 26, r.stdout + r.stderr
    assert f": {kind}:" in r.stdout


def test_chain_continues_across_remounts(store: Path, tmp_path: Path) -> None:
    make_chain(store, tmp_path)
    make_chain(store, tmp_path)
    seqs = [r["seq"] for r in records(store)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [r["op"] for r in records(store, "--op", "mount")] == ["mount", "mount"]


@needs_root
def test_fsynced_changes_survive_kill_9(store: Path, tmp_path: Path) -> None:
    from seldonfs.audit import OPEN_NAME

    m = tmp_path / "mnt"
    done: list[str] = []
    with mounted(store, m, expect_log_problems=True) as proc:
        code = (
            "import os, sys\n"
            "d = sys.argv[1]\n"
            "for i in range(100000):\n"
            "    fd = os.open(f'{d}/f{i}', os.O_CREAT | os.O_WRONLY, 0o644)\n"
            "    os.write(fd, b'x' * 100)\n"
            "    os.fsync(fd)\n"
            "    print(i, flush=True)\n"
            "    os.close(fd)\n"
        )
        writer = subprocess.Popen([sys.executable, "-c", code, str(m / "input" / "processed")],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out, _ = writer.communicate(timeout=30)
        done = out.split()
        unmount(m)
    # The records of the last fsyncs may be only in the sync log: the
    # writer stores them from there before it ends.
    wait_for(lambda: not (store / OPEN_NAME).exists(), what="the audit writer's end")
    assert len(done) > 10
    assert verify(store).returncode == 0
    created = {r["path"] for r in records(store, "--op", "create")}
    missing = [i for i in done if f"input/processed/f{i}" not in created]
    assert missing == []
    with mounted(store, m):  # the chain goes on after the crash
        (m / "input" / "processed" / "after").write_text("y")
    assert verify(store).returncode == 0


def test_audit_can_be_off(store: Path, tmp_path: Path) -> None:
    configure(store, "audit", "enabled = false")
    with mounted(store, tmp_path / "mnt"):
        (tmp_path / "mnt" / "input" / "processed" / "x").write_text("x")
    assert records(store) == []


def test_key_changes_are_recorded(tmp_path: Path) -> None:
    from .conftest import init_store, keyfile_of

    store = init_store(tmp_path / "store")
    make_chain(store, tmp_path)
    seldonfs("passwd", store, *key_args(store), "--new-keyfile", tmp_path / "new.key", check=True)
    keyfile_of(store).unlink()
    (tmp_path / "new.key").rename(keyfile_of(store))
    seldonfs("rekey", store, *key_args(store), check=True)
    assert [r["op"] for r in records(store)][-2:] == ["passwd", "rekey"]
    assert verify(store).returncode == 0
    make_chain(store, tmp_path)  # mounts and records under the new master key


def test_fsck_rebuilds_a_deleted_catalog(store: Path, tmp_path: Path) -> None:
    m = tmp_path / "mnt"
    with mounted(store, m):
        for i in range(3):
            (m / "input" / "raw" / f"d{i}.json").write_text(json.dumps({"i": i}))
        (m / "input" / "raw" / "bad.json").write_text("{")
        r = m / "output" / "reports" / "r.csv"
        r.write_text("a\n1\n")
        r.write_text("a\n2\n")
    before = sorted(records_of(store, "SELECT path, sha256, job FROM files WHERE verdict = 'ok'"))
    assert len(before) == 3
    assert seldonfs("fsck", store, *key_args(store)).returncode == 0
    (store / "catalog.sqlite").unlink()
    for p in store.glob("catalog.sqlite-*"):
        p.unlink()
    r = seldonfs("fsck", store, *key_args(store))
    assert r.returncode == 26 and "catalog.sqlite missing" in r.stdout
    r = seldonfs("fsck", store, "--rebuild", *key_args(store))
    assert r.returncode == 26  # rebuilt, but the audit chain is lost for good
    assert "cannot repair: the audit chain is gone" in r.stdout
    assert "rebuilt: 3 files, 1 quarantine, 1 versions" in r.stdout
    assert sorted(records_of(store, "SELECT path, sha256, job FROM files")) == before
    (q,) = records_of(store, "SELECT origin, reason FROM quarantine")
    assert q[0] == "input/raw/bad.json" and "not valid JSON" in q[1]
    r = seldonfs("mount", store, m, *key_args(store))  # the loss is refused until it is recorded
    assert r.returncode == 26 and "the catalog has no audit records" in r.stderr, r.stderr
    r = seldonfs("audit", "reset", store, "--reason", "catalog lost, rebuilt by fsck", *key_args(store))
    assert r.returncode == 0, r.stderr
    with mounted(store, m):  # names go on after the highest one in data/
        (m / "input" / "raw" / "d9.json").write_text("{}")
        assert json.loads(seldonfs("versions", m / "output" / "reports" / "r.csv", "--json").stdout)[0]["size"] == 4
    seqs = sorted(int(n.split("-")[8].split("_")[0]) for n in os.listdir(store / "data" / "input" / "raw"))
    assert len(set(seqs)) == 4
    assert seldonfs("fsck", store, *key_args(store)).returncode == 0
    r = verify(store)
    assert r.returncode == 0 and "after a break: reason: catalog lost, rebuilt by fsck" in r.stdout, r.stdout


def test_fsck_rebuild_records_only_files_that_pass_their_checks(store: Path, tmp_path: Path) -> None:
    """A file broken behind the mount's back is found: with its record
    (changed since), and with the catalog lost, when a rebuild gives it
    no record saying ok."""
    m = tmp_path / "mnt"
    with mounted(store, m):
        for name in ("good.json", "broken.json"):
            (m / "input" / "raw" / name).write_text('{"v": 1}')
    raw = store / "data" / "input" / "raw"
    (broken,) = raw.glob("*_broken.json")
    if keyfile_of(store).exists():
        broken.write_bytes(broken.read_bytes()[:-1])  # its last block's tag cut: unreadable
    else:
        broken.write_text("{")
    (good,) = raw.glob("*_good.json")
    os.utime(good)  # past its record, the same content: still vouched for
    r = seldonfs("fsck", store, *key_args(store))
    assert r.returncode == 26 and r.stdout.count("input/raw/") == 1, r.stdout
    assert f"input/raw/{broken.name}: {fsck.CHANGED_UNCHECKED}: " in r.stdout, r.stdout
    (store / "catalog.sqlite").unlink()
    for p in store.glob("catalog.sqlite-*"):
        p.unlink()
    r = seldonfs("fsck", store, "--rebuild", *key_args(store))
    assert r.returncode == 26
    assert f"input/raw/{broken.name}: {fsck.NOT_VOUCHED}: " in r.stdout, r.stdout
    assert "rebuilt: 1 files" in r.stdout
    assert [p for (p,) in records_of(store, "SELECT path FROM files")] == [
        f"input/raw/{g.name}" for g in raw.glob("*_good.json")]
    broken.unlink()  # what the operator does with it
    r = seldonfs("fsck", store, *key_args(store))
    assert "input/raw/" not in r.stdout, r.stdout  # only the lost audit chain is left


def records_of(store: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(store / "catalog.sqlite")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_fsck_finds_and_repairs_drift(store: Path, tmp_path: Path) -> None:
    """Committed files that went through the mount (removed, renamed, or
    rewritten and quarantined) are no drift: the audit chain says where
    they went. One removed behind the mount's back is."""
    raw = tmp_path / "mnt" / "input" / "raw"
    with mounted(store, tmp_path / "mnt"):
        for name in ("gone.json", "moved.json", "bad.json"):
            (raw / name).write_text("{}")
        (gone,) = raw.glob("*_gone.json")
        gone.unlink()
        (moved,) = raw.glob("*_moved.json")
        moved.rename(raw / "moved-again.json")  # commits there: a record of the new name
        (bad,) = raw.glob("*_bad.json")
        bad.write_text('{"ssn": "123-45-6789"}')  # quarantined: the path's newest record says so
        (again,) = raw.glob("*_moved-again.json")
        again.write_text('{"v": 2}')  # committed again under its name: the record still names what it holds
        assert len(list(raw.iterdir())) == 1
    r = seldonfs("fsck", store, *key_args(store))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = records_of(store, "SELECT original_name, job, sha256 != '' FROM files WHERE path LIKE '%_moved-again.json'")
    assert rows == [("moved-again.json", "INP001", 1)] * 2, rows
    with mounted(store, tmp_path / "mnt"):
        (raw / "a.json").write_text("{}")
    (f,) = (store / "data" / "input" / "raw").glob("*_a.json")
    f.unlink()  # behind the mount's back
    r = seldonfs("fsck", store, *key_args(store))
    assert r.returncode == 26 and f"files: record for input/raw/{f.name}, which is gone" in r.stdout
    history = records_of(store, "SELECT path, verdict FROM files WHERE path NOT LIKE '%_a.json'")
    r = seldonfs("fsck", store, "--rebuild", *key_args(store))
    assert r.returncode == 0, r.stdout + r.stderr
    assert seldonfs("fsck", store, *key_args(store)).returncode == 0
    assert records_of(store, "SELECT path, verdict FROM files") == history  # the rest of the history stays
    assert verify(store).returncode == 0  # the chain was kept


def test_file_records_and_old_catalogs(tmp_path: Path) -> None:
    from .conftest import init_store

    store = init_store(tmp_path / "store", encrypted=False)
    conn = sqlite3.connect(store / "catalog.sqlite")  # a schema-2 catalog: no ino, ingest_ns
    conn.execute("DROP TABLE files")
    conn.execute("CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT, original_name TEXT, job TEXT,"
                 " size INTEGER, sha256 TEXT, mime TEXT, verdict TEXT, reason TEXT, committed_ns INTEGER)")
    conn.commit()
    conn.close()
    t0 = time.time_ns()
    with mounted(store, tmp_path / "mnt"):
        (tmp_path / "mnt" / "input" / "raw" / "x.json").write_text('{"x": 1}')
    ((path, orig, size, sha, mime, ino, ingest, committed),) = records_of(
        store, "SELECT path, original_name, size, sha256, mime, ino, ingest_ns, committed_ns FROM files")
    assert orig == "x.json" and size == 8 and mime == "application/json"
    assert ino == (store / "data" / path).stat().st_ino and t0 < ingest <= committed
    import hashlib
    assert sha == hashlib.sha256(b'{"x": 1}').hexdigest()


def test_damaged_audit_key_is_one_line(store: Path, tmp_path: Path) -> None:
    make_chain(store, tmp_path)
    doc = json.loads((store / "audit.key").read_text())
    field = "wrapped" if "wrapped" in doc else "key"
    doc[field] = "00" * 8 if field == "wrapped" else "zz"
    (store / "audit.key").write_text(json.dumps(doc))
    r = verify(store)
    assert r.returncode == 1 and "audit.key" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- the anchors (issue 17, repro 5)


def head_of(store: Path) -> dict:
    r = seldonfs("audit", "head", store, check=True)
    assert r.stdout.count("\n") == 1
    return json.loads(r.stdout)


def refused_mount(store: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "mnt").mkdir(exist_ok=True)
    r = seldonfs("mount", store, tmp_path / "mnt", *key_args(store))
    if os.path.ismount(tmp_path / "mnt"):  # a failing test leaves no mount behind
        unmount(tmp_path / "mnt")
        pytest.fail(f"the mount was not refused (exit {r.returncode})")
    assert r.returncode == 26 and r.stderr.count("\n") == 1 and "audit reset" in r.stderr, r.stderr
    return r


def reset(store: Path, reason: str) -> subprocess.CompletedProcess:
    r = seldonfs("audit", "reset", store, "--reason", reason, *key_args(store))
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_a_lost_catalog_is_refused_until_a_reset_records_it(store: Path, tmp_path: Path) -> None:
    make_chain(store, tmp_path)
    kept = head_of(store)
    for p in store.glob("catalog.sqlite*"):
        p.unlink()
    assert "catalog.sqlite is missing" in refused_mount(store, tmp_path).stderr
    assert not (store / "catalog.sqlite").exists()  # the refused mount made no new one
    r = verify(store)
    assert r.returncode == 26 and r.stderr.count("\n") == 1 and "missing" in r.stderr
    out = reset(store, "disk replaced, catalog lost").stdout
    assert f"epoch 2 started at seq {kept['seq'] + 1}" in out
    make_chain(store, tmp_path)  # mounts again, the chain goes on
    for _ in range(2):  # in every later run
        r = verify(store)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (f"epoch 2 started at seq {kept['seq'] + 1} after a break: reason: disk replaced, catalog lost; "
                f"found: catalog.sqlite is missing; old head: seq {kept['seq']} mac {kept['mac']}") in r.stdout
    assert seldonfs("audit", "verify", store, "--strict", *key_args(store)).returncode == 26
    r = seldonfs("audit", "verify", store, "--head", json.dumps(kept), *key_args(store))
    assert r.returncode == 26 and f"kept head {kept['seq']}: record {kept['seq']} is no longer in the chain" in r.stdout
    assert head_of(store)["epoch"] == 2
    r = seldonfs("audit", "reset", store, "--reason", "again", *key_args(store))
    assert r.returncode == 2 and "nothing to reset" in r.stderr  # an intact chain has no break to record


@pytest.mark.parametrize("fault", ["walsync:1:KILL", "rename:1:KILL"])
def test_a_reset_killed_before_it_ends_is_refused_until_one_ends(store: Path, tmp_path: Path, fault: str) -> None:
    """`audit reset` killed after its record is stored (before the WAL's
    sync, or at store.json's rename, the new epoch's anchor) has not
    happened for the mount: it refuses the store until a reset ends. Then
    the anchor names the last reset's epoch, and the chain verifies."""
    make_chain(store, tmp_path)
    (store / "audit.head").unlink()
    r = seldonfs("audit", "reset", store, "--reason", "first try", *key_args(store),
                 env={**os.environ, "SELDONFS_FAULTS": fault})
    assert r.returncode == -signal.SIGKILL
    assert "audit chain is broken" in refused_mount(store, tmp_path).stderr
    reset(store, "second try")
    make_chain(store, tmp_path)
    r = verify(store)
    assert r.returncode == 0 and "second try" in r.stdout, r.stdout + r.stderr
    assert head_of(store)["epoch"] == json.loads((store / "store.json").read_text())["audit"]["epoch"] >= 2


def test_a_reset_reason_is_shown_escaped(tmp_path: Path) -> None:
    """The reason is kept as given, and `audit verify` prints it on the
    event's one line: a newline cannot forge a second event, an escape
    sequence does not reach the terminal."""
    store = init_store(tmp_path / "store", encrypted=False)
    make_chain(store, tmp_path)
    (store / "audit.head").unlink()
    reason = "disk\nepoch 9 started at seq 1 after a break: forged\x1b[2J"
    reset(store, reason)
    r = verify(store)
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = [x for x in r.stdout.splitlines() if "after a break" in x]
    assert "reason: disk\\x0aepoch 9 started at seq 1 after a break: forged\\x1b[2J;" in line and "\x1b" not in r.stdout
    (rec,) = records(store, "--op", "reset")
    assert rec["detail"].startswith(f"reason: {reason};")


@pytest.mark.parametrize("head_too", [False, True], ids=["rows", "rows-and-head"])
def test_emptied_audit_rows_are_found(tmp_path: Path, head_too: bool) -> None:
    store = init_store(tmp_path / "store", encrypted=False)
    make_chain(store, tmp_path)
    with sqlite3.connect(store / "catalog.sqlite") as conn:
        conn.execute("DELETE FROM audit")
    conn.close()
    if head_too:
        (store / "audit.head").unlink()
    r = verify(store)
    assert r.returncode == 26, r.stdout
    assert ("store.json anchors epoch 1 at record 1" if head_too else "records 1..") in r.stdout, r.stdout
    refused_mount(store, tmp_path)
    reset(store, "audit table emptied")
    make_chain(store, tmp_path)
    r = verify(store)
    assert r.returncode == 0 and "epoch 2 started at seq" in r.stdout and "audit table emptied" in r.stdout


def test_a_rolled_back_or_remade_store_fails_a_kept_head(tmp_path: Path) -> None:
    store = init_store(tmp_path / "store", encrypted=False)
    make_chain(store, tmp_path)
    old = tmp_path / "old"
    old.mkdir()
    for name in ("catalog.sqlite", "audit.head", "store.json"):
        shutil.copy2(store / name, old / name)
    first = head_of(store)
    make_chain(store, tmp_path)
    kept = tmp_path / "kept.jsonl"
    kept.write_text(json.dumps(first) + "\n" + json.dumps(head_of(store)) + "\n")
    r = seldonfs("audit", "verify", store, "--head", kept)
    assert r.returncode == 0 and "2 kept head(s) match" in r.stdout, r.stdout + r.stderr
    # catalog, head and anchor rolled back together: consistent locally, not with the copy
    for name in ("catalog.sqlite", "audit.head", "store.json"):
        shutil.copy2(old / name, store / name)
    assert verify(store).returncode == 0
    r = seldonfs("audit", "verify", store, "--head", kept)
    assert r.returncode == 26 and "is not in the chain (it ends at" in r.stdout, r.stdout
    # the store made anew: another key, another id, another chain
    shutil.rmtree(store)
    store = init_store(store, encrypted=False)
    make_chain(store, tmp_path)
    r = seldonfs("audit", "verify", store, "--head", kept)
    assert r.returncode == 26 and "not of this one" in r.stdout, r.stdout
    remade = dict(first, store=head_of(store)["store"])  # the id copied too: the key still differs
    r = seldonfs("audit", "verify", store, "--head", json.dumps(remade))
    assert r.returncode == 26 and "does not authenticate under this store's audit key" in r.stdout, r.stdout


def test_the_webhook_gets_the_head(tmp_path: Path) -> None:
    hook, got = webhook_server()
    store = init_store(tmp_path / "store")
    conf = store / "seldonfs.toml"
    conf.write_text(conf.read_text() + f'\n[alerts]\nwebhook = "http://127.0.0.1:{hook.server_port}/hook"\n')
    try:
        with mounted(store, tmp_path / "mnt"):
            (tmp_path / "mnt" / "input" / "processed" / "f").write_text("x")
            wait_for(lambda: any(a["kind"] == "audit-head" for a in got), timeout=30, what="the head")
    finally:
        hook.shutdown()
        hook.server_close()
    (body,) = [a for a in got if a["kind"] == "audit-head"]
    assert body["head"]["epoch"] == 1 and body["head"]["seq"] >= 1 and body["head"]["store"] == head_of(store)["store"]
    kept = tmp_path / "posted.jsonl"
    kept.write_text(json.dumps(body) + "\n")  # the webhook's bodies, kept as they came
    r = seldonfs("audit", "verify", store, "--head", kept, *key_args(store))
    assert r.returncode == 0 and "1 kept head(s) match" in r.stdout, r.stdout + r.stderr


# ---------------------------------------------------------------- losing nothing (issue 17, repro 3)


def writer_of(daemon: subprocess.Popen) -> int:
    """The pid of the mount's audit writer process."""
    def find() -> list[int]:  # children of any thread (a restarted writer is the sender thread's)
        kids = [k for t in Path(f"/proc/{daemon.pid}/task").iterdir() for k in (t / "children").read_text().split()]
        return [int(k) for k in kids if b"seldonfs.audit" in Path(f"/proc/{k}/cmdline").read_bytes()]

    wait_for(lambda: len(find()) == 1, what="the audit writer")
    return find()[0]


def _dead_writer(store: Path, m: Path) -> None:
    """Files created before, while and after the mount's audit writer was
    stopped, killed, and replaced by another."""
    with mounted(store, m, expect_log_problems=True) as daemon:
        (m / "input" / "processed" / "before").write_text("x")
        time.sleep(0.5)  # stored
        writer = writer_of(daemon)
        os.kill(writer, signal.SIGSTOP)
        (m / "input" / "processed" / "lost").write_text("x")
        time.sleep(0.5)  # handed to the stopped writer, which dies with it
        os.kill(writer, signal.SIGKILL)
        time.sleep(0.5)
        (m / "input" / "processed" / "kept").write_text("x")  # the dead writer's pipe refuses it: kept
        wait_for(lambda: writer_of(daemon) != writer, what="another writer")
        (m / "input" / "processed" / "after").write_text("x")


def test_a_dead_writers_records_go_to_the_next_from_the_sync_log(tmp_path: Path) -> None:
    """What the dead writer had been handed and had not stored is in the
    daemon's sync log, and the next writer gets it from there: nothing is
    lost, and a record says what happened."""
    from seldonfs.audit import WRITER_DIED

    store = init_store(tmp_path / "store", encrypted=False)
    _dead_writer(store, tmp_path / "mnt")
    r = verify(store)
    assert r.returncode == 0 and "gap at record" not in r.stdout, r.stdout + r.stderr
    (note,) = records(store, "--op", "recovered")
    assert note["detail"] == WRITER_DIED and note["bytes"] == 2  # the create and write of `lost`
    created = [x["path"] for x in records(store, "--op", "create")]
    assert created == ["input/processed/before", "input/processed/lost", "input/processed/kept",
                       "input/processed/after"]
    assert seldonfs("audit", "verify", store, "--strict").returncode == 0


@needs_root
def test_a_dead_writer_leaves_a_gap_record(tmp_path: Path) -> None:
    """Without a sync log (tmpfs: neither ext4 nor XFS) what the dead
    writer had been handed and had not stored is counted lost."""
    from seldonfs import synclog

    with small_disk(tmp_path / "fs", 64) as fs:
        store = init_store(fs / "store", encrypted=False)
        _dead_writer(store, tmp_path / "mnt")
        assert not (store / synclog.NAME).exists()
        r = verify(store)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "gap at record" in r.stdout and "2 records lost: the audit writer process died" in r.stdout, r.stdout
        (gap,) = records(store, "--op", "gap")
        assert gap["detail"] == "2 records lost: the audit writer process died"  # the create and write of `lost`
        created = [x["path"] for x in records(store, "--op", "create")]
        assert created == ["input/processed/before", "input/processed/kept", "input/processed/after"]
        assert seldonfs("audit", "verify", store, "--strict").returncode == 26


def test_a_writer_that_did_not_end_leaves_a_gap_record(tmp_path: Path) -> None:
    """A power loss takes the daemon and its writer at once: what the writer
    stored in its last second, not yet settled, may be gone, and the next
    writer records that. A writer that ends records nothing of the kind."""
    from seldonfs.audit import OPEN_NAME, UNCLEAN

    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "mnt"
    with mounted(store, m, expect_log_problems=True) as daemon:
        (m / "input" / "processed" / "before").write_text("x")
        writer = writer_of(daemon)
        wait_for((store / OPEN_NAME).exists, what="the writer's mark")
        daemon.send_signal(signal.SIGSTOP)  # it must not start another writer
        os.kill(writer, signal.SIGKILL)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        unmount(m)
    assert (store / OPEN_NAME).exists()
    with mounted(store, m, expect_log_problems=True):  # the warning of the gap
        (m / "input" / "processed" / "after").write_text("x")
    assert not (store / OPEN_NAME).exists()
    with mounted(store, m):
        pass
    r = verify(store)
    assert r.returncode == 0, r.stdout + r.stderr
    (gap,) = records(store, "--op", "gap")
    assert gap["detail"] == UNCLEAN and gap["uid"] == 0


def test_a_new_chain_killed_before_its_first_settle_still_mounts(tmp_path: Path) -> None:
    """A new store's first records are stored before a head names them (it
    names records on disk for good only). Its first head, naming record 0,
    is written before them, so an audit writer killed in between (here at
    its first sync of the WAL, which each new writer dies at again) leaves
    records past a head, not records with no head: the next mount takes
    the store and settles them; the chain verifies."""
    from seldonfs.anchor import read_head

    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "mnt"
    count = "SELECT count(*) FROM audit"
    with mounted(store, m, expect_log_problems=True, env={"SELDONFS_FAULTS": "walsync:1:KILL"}) as daemon:
        (m / "input" / "processed" / "first").write_text("x")
        wait_for(lambda: records_of(store, count)[0][0] > 0, what="the first records")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        unmount(m)
    assert read_head(store)["seq"] == 0
    stored = records_of(store, count)[0][0]
    with mounted(store, m, expect_log_problems=True):  # the warning of the gap
        assert (m / "input" / "processed" / "first").read_text() == "x"
    assert read_head(store)["seq"] > stored
    r = verify(store)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_killed_daemon_leaves_its_fsynced_writes_and_a_gap_record(tmp_path: Path) -> None:
    """Bytes fsync'ed through a descriptor have their write record before
    the fsync returns, not only at the close; a daemon killed before the
    close leaves, by its writer, a gap record for what it had not handed on.
    A clean unmount leaves none."""
    from seldonfs.audit import DAEMON_GONE

    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "mnt"
    with mounted(store, m, expect_log_problems=True) as daemon:  # the warning of the gap
        fd = os.open(m / "input" / "processed" / "synced", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x" * 1000)
        os.fsync(fd)
        os.write(fd, b"y" * 24)  # not synced, not closed: no record
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        with pytest.raises(OSError):
            os.close(fd)  # the flush cannot reach the daemon
        unmount(m)
    with mounted(store, m):  # after the writer has ended; and a clean end
        pass
    r = verify(store)
    assert r.returncode == 0, r.stdout + r.stderr
    writes = [(x["path"], x["bytes"]) for x in records(store, "--op", "write")]
    assert writes == [("input/processed/synced", 1000)]
    (gap,) = records(store, "--op", "gap")
    assert gap["detail"] == DAEMON_GONE


def test_the_writes_of_files_open_at_a_sigterm_are_recorded(tmp_path: Path) -> None:
    """A SIGTERM unmounts without waiting for open files: no release will
    come for them, so the end of the mount records their writes."""
    store = init_store(tmp_path / "store", encrypted=False)  # no writeback cache: the write reaches the daemon
    m = tmp_path / "mnt"
    with mounted(store, m) as daemon:
        fd = os.open(m / "input" / "processed" / "open", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"z" * 500)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        with pytest.raises(OSError):
            os.close(fd)
    writes = [(x["path"], x["bytes"]) for x in records(store, "--op", "write")]
    assert writes == [("input/processed/open", 500)]
    assert records(store, "--op", "gap") == []
    assert (store / "data" / "input" / "processed" / "open").read_bytes() == b"z" * 500


@pytest.mark.parametrize("offline_first", [False, True])
def test_fsynced_records_outlive_a_writer_that_never_stored_them(tmp_path: Path, offline_first: bool) -> None:
    """An fsync's records go out in the daemon's sync log before the data's
    flush, so the fsync returns with the audit writer stopped. When daemon
    and writer then die before the writer stored them (as in a power
    loss), the next mount, or an offline command before it, stores them
    from the log, after a record that says so; later mounts do not store
    them again."""
    from seldonfs import audit
    from seldonfs.audit import RECOVERED

    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "mnt"
    f = m / "input" / "processed" / "synced"
    with mounted(store, m, expect_log_problems=True) as daemon:
        os.kill(writer := writer_of(daemon), signal.SIGSTOP)
        fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x" * 1000)
        os.ftruncate(fd, 700)
        os.fsync(fd)  # would wait for ever for a stopped writer
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        os.kill(writer, signal.SIGKILL)
        with pytest.raises(OSError):
            os.close(fd)
        unmount(m)
    assert records_of(store, "SELECT count(*) FROM audit WHERE path = 'input/processed/synced'") == [(0,)]
    r = verify(store)
    assert r.returncode == 0 and re.search(r"^\d+ records are only in audit.synclog", r.stdout, re.M), r.stdout
    if offline_first:  # an offline command's records come after them
        audit.append_offline_many(store, store / "catalog.sqlite", audit.load_key(store, None),
                                  [("janitor-delete", "input/processed/old", "", "OK", 0, "test")])
        ops = [x["op"] for x in records(store)]
        tail = ops[ops.index("recovered") + 1:]  # the mount record too, unless stored before the writer stopped
        assert tail in (["create", "setattr", "write", "janitor-delete"],
                        ["mount", "create", "setattr", "write", "janitor-delete"]), ops
    for _ in range(2):
        with mounted(store, m, expect_log_problems=True):  # the writer's warning of the unclean end
            assert f.read_bytes() == b"x" * 700
        r = verify(store)
        assert r.returncode == 0 and "only in audit.synclog" not in r.stdout, r.stdout + r.stderr
        ops = [(x["op"], x["bytes"]) for x in records(store, "--path", "input/processed/synced")]
        assert ops == [("create", 0), ("setattr", 0), ("write", 1000)], ops  # writes: recorded at the fsync
        (note,) = records(store, "--op", "recovered")
        assert note["detail"] == RECOVERED and note["bytes"] >= 3  # and the mount record, unless stored before


def test_the_sync_log_reads_only_whole_frames_of_its_key(tmp_path: Path) -> None:
    """A torn last frame, a frame of the log before, bytes written without
    the audit key: reading stops there. A full log refuses a frame."""
    from seldonfs import synclog

    (tmp_path / "data").mkdir()
    log_ = synclog.SyncLog(tmp_path, b"k" * 32)
    log_.start(41)
    assert log_.append(pickle.dumps([("a",), ("b",)])) and log_.append(pickle.dumps([("c",)]))
    assert log_.read() == (41, [("a",), ("b",), ("c",)])
    end = log_.end
    log_.start(50)  # a new log over the old one: the old frames past its end are not its own
    assert log_.append(pickle.dumps([("d",)]))
    assert log_.end < end and log_.read() == (50, [("d",)])
    os.pwrite(log_.fd, b"\xff", log_.end - 1)  # the last frame torn
    assert log_.read() == (50, [])
    assert synclog.SyncLog(tmp_path, b"j" * 32).read() == (0, [])  # another key: nothing verifies
    while log_.append(b"x" * 65536):
        pass
    assert synclog.SIZE - log_.end < 65536 + 100
    log_.close()
    assert (tmp_path / synclog.NAME).stat().st_size == synclog.SIZE


def test_a_full_sync_log_starts_afresh_once_the_writer_has_it_all(tmp_path: Path, monkeypatch) -> None:
    """A daemon's `AuditLog` (here in the test's process, with its real
    writer process) on a sync log of 64 KiB: fsyncs fill it, the fsync
    that finds it full asks the writer, and the log starts afresh once
    every record in it is stored. Every record ends up in the chain once."""
    from seldonfs import audit, synclog

    store = init_store(tmp_path / "store", encrypted=False)
    with mounted(store, tmp_path / "mnt"):  # the audit key and the chain's start
        pass
    monkeypatch.setattr(synclog, "SIZE", 64 << 10)
    log_ = audit.AuditLog(store, store / "catalog.sqlite", audit.load_key(store, None))
    fd = os.open(store / "data" / "input" / "processed" / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    ends, n = [], 600
    try:
        for i in range(n):
            log_.record("write", 0, 0, os.getpid(), f"input/processed/f{i:04}", detail="x" * 200)
            os.pwrite(fd, b"y", i)
            log_.sync(lambda: os.fdatasync(fd), fd)
            assert log_.synclog is not None
            ends.append(log_.synclog.end)
    finally:
        os.close(fd)
        log_.close()
    restarts = sum(1 for a, b in zip(ends, ends[1:]) if b < a)
    assert restarts >= 2, ends[::50]
    assert not log_._log_full
    paths = [r["path"] for r in records(store, "--op", "write")]
    assert paths == [f"input/processed/f{i:04}" for i in range(n)]
    assert verify(store).returncode == 0


def test_an_fsync_fails_when_its_records_cannot_be_synced(tmp_path: Path) -> None:
    """An fsync promises the change and its records on disk. When the sync
    log cannot be written out (EIO, injected), the audit writer is asked to
    sync them instead; when that fails too (EIO from the WAL's fdatasync),
    the fsync fails with EIO, though the data's own fdatasync passed."""
    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "mnt"
    with mounted(store, m):  # the chain's head and anchor, before the disk fails
        pass
    with mounted(store, m, expect_log_problems=True, env={"SELDONFS_FAULTS": "walsync:*:EIO"}):
        with open(m / "input" / "processed" / "logged", "wb") as f:
            f.write(b"x")
            os.fsync(f.fileno())  # the sync log needs no WAL sync
    with mounted(store, m, expect_log_problems=True, env={"SELDONFS_FAULTS": "synclog:*:EIO,walsync:*:EIO"}):
        fd = os.open(m / "input" / "processed" / "f", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"x" * 100)
            with pytest.raises(OSError) as e:
                os.fsync(fd)
            assert e.value.errno == errno.EIO
        finally:
            os.close(fd)
    assert "ERROR audit writer: cannot sync the records" in (store.parent / f"mount-{m.name}.stderr").read_text()
    assert "cannot write out audit.synclog" in (store / "seldonfs.log").read_text()
    with mounted(store, m, expect_log_problems=True):  # the disk well again: the records are settled
        assert (m / "input" / "processed" / "f").read_bytes() == b"x" * 100
        fd = os.open(m / "input" / "processed" / "f", os.O_WRONLY)
        try:
            os.write(fd, b"y")
            os.fsync(fd)
        finally:
            os.close(fd)
    r = seldonfs("audit", "verify", *key_args(store), store)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_root
def test_a_full_disk_keeps_the_records(tmp_path: Path) -> None:
    with small_disk(tmp_path / "fs", 32) as fs:
        store = init_store(fs / "store", encrypted=False)
        m = tmp_path / "mnt"
        d = m / "input" / "processed"

        def fill(name: str) -> None:
            with open(fs / name, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass

        def stored() -> set[str]:
            conn = sqlite3.connect(f"file:{store / 'catalog.sqlite'}?mode=ro", uri=True)
            try:
                return {r[0] for r in conn.execute("SELECT path FROM audit WHERE op = 'mkdir'")}
            finally:
                conn.close()

        with mounted(store, m, expect_log_problems=True):
            wait_for(lambda: (store / "audit.reserve").exists(), what="the reserve")
            fill("filler1")
            (d / "while-full-1").mkdir()
            # the writer gives up the reserve and stores them in its room
            wait_for(lambda: "input/processed/while-full-1" in stored(), timeout=10, what="the records")
            assert not (store / "audit.reserve").exists()
            fill("filler2")  # and that room taken too: the records wait
            for i in range(20):
                (d / f"while-full-2-{i}").mkdir()
            time.sleep(2)
            assert "input/processed/while-full-2-0" not in stored()
            (fs / "filler1").unlink()
            (fs / "filler2").unlink()
            wait_for(lambda: "input/processed/while-full-2-19" in stored(), timeout=10, what="the waiting records")
            wait_for(lambda: (store / "audit.reserve").exists(), timeout=10, what="the reserve made again")
        r = verify(store)
        assert r.returncode == 0 and "gap" not in r.stdout, r.stdout + r.stderr
        want = {"input/processed/while-full-1"} | {f"input/processed/while-full-2-{i}" for i in range(20)}
        assert want <= stored()


def test_offline_commands_refuse_a_broken_chain_before_acting(tmp_path: Path) -> None:
    from .conftest import keyfile_of

    store = init_store(tmp_path / "store")
    make_chain(store, tmp_path)
    with sqlite3.connect(store / "catalog.sqlite") as conn:
        conn.execute("DELETE FROM audit")
    conn.close()
    ident = (store / "store.json").read_bytes()
    r = seldonfs("passwd", store, *key_args(store), "--new-keyfile", tmp_path / "new.key")
    assert r.returncode == 26 and "the catalog has no audit records" in r.stderr, r.stderr
    assert (store / "store.json").read_bytes() == ident and not (tmp_path / "new.key").exists()
    reset(store, "audit rows deleted")
    seldonfs("passwd", store, *key_args(store), "--new-keyfile", tmp_path / "new.key", check=True)
    keyfile_of(store).unlink()
    (tmp_path / "new.key").rename(keyfile_of(store))
    assert [x["op"] for x in records(store)] == ["reset", "passwd"]
    assert verify(store).returncode == 0


def test_a_query_can_keep_the_newest_records(store: Path, tmp_path: Path) -> None:
    """`-n N` keeps the newest N (oldest first), `--reverse` turns them round."""
    make_chain(store, tmp_path)
    every = [json.loads(l)["seq"] for l in seldonfs("audit", store, "--json").stdout.splitlines()]
    assert len(every) > 3 and every == sorted(every)
    r = seldonfs("audit", store, "--json", "-n", "3")
    assert [json.loads(l)["seq"] for l in r.stdout.splitlines()] == every[-3:]
    r = seldonfs("audit", store, "--json", "-n", "3", "--reverse")
    assert [json.loads(l)["seq"] for l in r.stdout.splitlines()] == every[-3:][::-1]
    r = seldonfs("audit", store, "--reverse")
    assert r.returncode == 0 and f"{len(every)} record(s)" in r.stdout


def segment_store(tmp_path: Path, encrypted: bool, retain: str = "7y") -> Path:
    """A seldon store whose audit segments hold 1,000 records, in archive/audit."""
    store = init_store(tmp_path / "store", encrypted=encrypted)
    cfg = store / "seldonfs.toml"
    text = cfg.read_text()
    for old, new in (('segment = "monthly"', "segment = 1000"), ('retain = "7y"', f'retain = "{retain}"'),
                     ('segments_to = "archive/compliance/audit"', 'segments_to = "archive/audit"')):
        assert old in text
        text = text.replace(old, new)
    cfg.write_text(text)
    return store


def fill(mnt: Path, files: int) -> None:
    d = mnt / "input" / "processed"
    for i in range(files):
        (d / f"f{i}.txt").write_text(f"record {i}\n")


def sealed_files(store: Path) -> list[Path]:
    return sorted((store / "data" / "archive" / "audit").glob("audit-*.jsonl.gz"))


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_old_records_move_to_sealed_segments(tmp_path: Path, encrypted: bool) -> None:
    store = segment_store(tmp_path, encrypted)
    mnt = tmp_path / "mnt"
    with mounted(store, mnt):
        fill(mnt, 500)
        wait_for(lambda: sealed_files(store), what="a sealed segment")
        (seg,) = [p.name for p in sealed_files(store)]
        # the segment reads through the mount as any file of the tree
        first = subprocess.run(["gzip", "-dc", mnt / "archive" / "audit" / seg], capture_output=True,
                               check=True).stdout.splitlines()[0]
        assert json.loads(first)[0] == 1  # record 1 and its MAC
    with mounted(store, mnt):  # the epoch's first record, now sealed, still anchors it
        fill(mnt, 10)
    conn = sqlite3.connect(store / "catalog.sqlite")
    live, low = conn.execute("SELECT count(*), min(seq) FROM audit").fetchone()
    conn.close()
    out = verify(store)
    assert out.returncode == 0, out.stdout + out.stderr
    total = int(re.search(r"(\d+) records verified", out.stdout)[1])
    assert low > 1000 and live < total  # the table holds only what is not sealed
    rec = records(store, "--since", "1h", "--op", "mount", *key_args(store))
    assert [r["seq"] for r in rec][0] == 1  # a query reaches into the segment


def test_a_lost_or_changed_segment_breaks_the_chain_until_retained(tmp_path: Path) -> None:
    store = segment_store(tmp_path, encrypted=False, retain="3s")
    with mounted(store, tmp_path / "mnt"):
        fill(tmp_path / "mnt", 500)
        wait_for(lambda: sealed_files(store), what="a sealed segment")
    (seg,) = sealed_files(store)
    lines = gzip.decompress(seg.read_bytes()).splitlines()
    kept = seg.read_bytes()
    rec = json.loads(lines[5])
    rec[1] += 1  # record 6 a nanosecond later
    lines[5] = json.dumps(rec, separators=(",", ":"), ensure_ascii=False).encode()
    seg.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    out = verify(store)
    assert out.returncode == 26 and "record 6: edited" in out.stdout, out.stdout
    seg.write_bytes(kept)
    assert verify(store).returncode == 0
    seg.unlink()
    out = verify(store)
    if out.returncode == 0:  # already past the 3 s retention on a slow machine
        assert "removed after the retention" in out.stdout
    else:
        assert out.returncode == 26 and "is missing" in out.stdout, out.stdout
        time.sleep(3)
        out = verify(store)
        assert out.returncode == 0 and "removed after the retention" in out.stdout, out.stdout
    assert seldonfs("audit", "verify", store, "--strict").returncode == 26


def test_a_segment_config_is_checked(tmp_path: Path) -> None:
    store = init_store(tmp_path / "store", "--profile", "seldon", encrypted=False)
    text = (store / "seldonfs.toml").read_text().replace('retain = "7y"', 'retain = "8y"')
    (store / "seldonfs.toml").write_text(text)
    out = seldonfs("mount", store, tmp_path / "mnt")
    assert out.returncode != 0 and "audit.retain" in out.stderr and "archive/compliance" in out.stderr


def _forwarding_store(tmp_path: Path, kind: str) -> Path:
    store = init_store(tmp_path / "store", encrypted=False)
    configure(store, "audit", f'forward = "{kind}"')
    return store


def _received(sock, n_min: int, until) -> list[bytes]:
    got: list[bytes] = []
    while True:
        got.append(sock.recv(1 << 17))
        if len(got) >= n_min and until(got[-1]):
            return got


@needs_fuse
@pytest.mark.parametrize("kind", ["journal", "syslog"])
def test_records_are_forwarded_to_the_journal_or_syslog(tmp_path: Path, kind: str) -> None:
    """`[audit] forward`: every record the chain stores also goes, with its
    seq and MAC, to a datagram socket (here one the test binds in the place
    of /run/systemd/journal/socket or /dev/log): the journal's fields, or
    syslog's line with the record as JSON; a hostile name arrives intact."""
    import socket
    import tempfile

    from seldonfs.audit_forward import MESSAGE_ID
    from seldonfs.journal import decode

    store = _forwarding_store(tmp_path, kind)
    sock_dir = Path(tempfile.mkdtemp(prefix="fwd", dir="/tmp"))
    path = sock_dir / "sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    env = {"SELDONFS_JOURNAL_SOCKET" if kind == "journal" else "SELDONFS_SYSLOG_SOCKET": str(path)}
    m = tmp_path / "m"
    name = "x\x1b[2J\ny.exe"
    try:
        sock.bind(str(path))
        sock.settimeout(20)
        with mounted(store, m, env=env):
            with pytest.raises(PermissionError):
                (m / "input/raw" / name).write_text("x")
            (m / "input/processed/ok.txt").write_text("fine")
            got = _received(sock, 3, lambda d: b"ok.txt" in d and b"write" in d)
    finally:
        sock.close()
        shutil.rmtree(sock_dir)
    from .test_operator import _chain

    chain = {r["seq"]: r for r in _chain(store)}  # as stored, read after the unmount
    if kind == "journal":
        recs = [decode(d) for d in got]
        assert {r["SYSLOG_IDENTIFIER"] for r in recs} == {"seldonfs-audit"}
        assert {r["MESSAGE_ID"] for r in recs} == {MESSAGE_ID}
        for r in recs:
            c = chain[int(r["SELDONFS_SEQ"])]
            assert (r["SELDONFS_MAC"], r["SELDONFS_OP"], r["SELDONFS_PATH"], r["SELDONFS_RESULT"], r["SELDONFS_UID"]) == (
                c["mac"], c["op"], c["path"], c["result"], str(c["uid"]))
            assert r["SELDONFS_STORE"] == str(store) and r["PRIORITY"] == ("5" if c["result"] == "OK" else "4")
        (refused,) = [r for r in recs if r["SELDONFS_OP"] == "create" and r["SELDONFS_RESULT"] == "EACCES"]
        assert refused["SELDONFS_PATH"] == "input/raw/" + name
        assert refused["SELDONFS_DETAIL"].startswith("extension .exe not allowed here")
        assert refused["MESSAGE"].startswith(f"audit {refused['SELDONFS_SEQ']}: create input/raw/{name} EACCES: ")
    else:
        lines = [d.decode() for d in got]
        for line in lines:
            m_ = re.fullmatch(r"<(\d+)>\w{3} [ \d]\d \d\d:\d\d:\d\d seldonfs-audit\[\d+\]: (\{.*\})", line, re.S)
            assert m_, line
            rec = json.loads(m_[2])
            assert "\n" not in m_[2] and "\x1b" not in m_[2]  # one line: the JSON escapes them
            assert rec == {**chain[rec["seq"]], "store": str(store)}
            assert int(m_[1]) == 10 * 8 + (5 if rec["result"] == "OK" else 4)  # authpriv
        assert any(json.loads(l.split(": ", 1)[1])["path"] == "input/raw/" + name for l in lines)


def test_forward_takes_journal_syslog_or_none() -> None:
    from seldonfs import config
    from seldonfs.errors import ConfigError

    assert config.parse({"audit": {"forward": "syslog"}}, "t.toml").audit.forward == "syslog"
    assert config.parse({}, "t.toml").audit.forward == "none"
    with pytest.raises(ConfigError, match=r"audit\.forward: want one of none, journal, syslog, have 'kafka'"):
        config.parse({"audit": {"forward": "kafka"}}, "t.toml")
