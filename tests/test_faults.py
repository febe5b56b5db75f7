"""Issue 17: a fault at any write loses nothing that was closed or fsync'ed.

A scripted workload runs through a real mount whose daemon fails one system
call (seldonfs/faults.py): the Nth pwrite, space reservation, ftruncate,
fsync, store rename or catalog batch, with ENOSPC (and EIO where a disk
reports one). The sweep covers every N the workload reaches, on an
encrypted and a plain store. After each run: the mount is still alive; a
fresh mount reads every file that a finished step left exactly as the model
says, and every other file without an error; `verify`, `audit verify` and
`fsck` pass.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import posixpath
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from seldonfs.faults import KINDS

from .conftest import init_store, key_args, keyfile_of, mounted, needs_fuse, seldonfs, wait_for

rnd = random.Random(17)
A, B, C, D = (rnd.randbytes(n) for n in (70_000, 30_000, 10_000, 5_000))
JSON = b'{"ok": [1, 2, 3]}\n'
REPORT1, REPORT2 = b"a,b\n1,2\n", b"a,b\n3,4\n5,6\n"
FILE = "input/processed/a.bin"
REPORT = "output/reports/r.csv"

# Errors injected per kind: ENOSPC everywhere; EIO where a failing disk
# reports it to the writer (a write or an fsync).
ERRNOS = {"pwrite": ("ENOSPC", "EIO"), "fsync": ("ENOSPC", "EIO")}


# (step, file, bytes to write, open mode, seek to, truncate to first)
STEPS = [
    ("create", FILE, A, "wb", None, None),
    ("append", FILE, B, "ab", None, None),
    ("overwrite", FILE, C, "r+b", 20_000, None),
    ("extend and fill a hole", FILE, D, "r+b", 150_000, 200_000),
    ("shrink", FILE, b"", "r+b", None, 90_000),
    ("commit", "input/raw/data.json", JSON, "wb", None, None),  # checked, named, renamed
    ("report", REPORT, REPORT1, "wb", None, None),
    ("replace the report", REPORT, REPORT2, "wb", None, None),  # versioned: the old one is kept
]


def _do(m: Path, rel: str, data: bytes, mode: str, seek: int | None, truncate: int | None) -> None:
    with open(m / rel, mode) as f:
        if truncate is not None:
            f.truncate(truncate)
        if seek is not None:
            f.seek(seek)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _model(old: bytes, data: bytes, mode: str, seek: int | None, truncate: int | None) -> bytes:
    """What _do makes of a file that held `old`."""
    cur = b"" if mode == "wb" else old
    if truncate is not None:
        cur = cur[:truncate].ljust(truncate, b"\0")
    pos = len(cur) if mode == "ab" else seek or 0
    return cur[:pos].ljust(pos, b"\0") + data + cur[pos + len(data):] if data else cur


def _between(got: bytes, old: bytes, new: bytes) -> bool:
    """A failed step may have done part of its change: each byte as it was,
    as the step would make it, or zero (a gap it left); no other bytes."""
    if not min(len(old), len(new)) <= len(got) <= max(len(old), len(new)):
        return False
    return all(
        g == 0 or (i < len(old) and g == old[i]) or (i < len(new) and g == new[i]) for i, g in enumerate(got)
    )


Failed = tuple[str, str, bytes, bytes, tuple]  # step, file, before, after, (mode, seek, truncate)


def _run(store: Path, m: Path, faults: str) -> tuple[dict[str, bytes], Failed | None]:
    """The workload on a mount with `faults`: (the files as the finished
    steps left them, and for a step that failed: its name, its file, the
    file before it and the file it was making). A fault that kills the
    daemon (ERRNO KILL) ends it at the step it cut short; any other must
    leave the mount alive."""
    killing = faults.endswith(":KILL")
    done: dict[str, bytes] = {}
    with mounted(store, m, expect_log_problems=True, env={"SELDONFS_FAULTS": faults}) as proc:
        for name, rel, *how in STEPS:
            new = _model(done.get(rel, b""), *how)
            try:
                _do(m, rel, *how)
            except OSError as e:
                if killing:
                    proc.wait(timeout=20)  # a dead mount, cleared by `mounted`
                else:  # the injected error itself, never another (a full disk is not damage)
                    assert e.errno == getattr(errno, faults.rsplit(":", 1)[-1], None), (faults, name, e)
                    assert proc.poll() is None and os.path.ismount(m), f"the mount ended at step {name}"
                return done, (name, rel, done.get(rel, b""), new, (how[1], how[2], how[3]))
            done[rel] = new  # fsync'ed: kept, whatever comes after
            if proc.poll() is not None:
                assert killing, f"the mount ended at step {name}"
                return done, None
    return done, None


def _read_back(m: Path, rel: str) -> bytes | None:
    """The file `rel` holds; a file a commit renamed is found by its end,
    named or quarantined (a commit that could not name it)."""
    if rel.startswith("input/raw/"):
        found = [p for d in ("input/raw", "input/quarantine") for p in (m / d).iterdir()
                 if p.name.endswith(posixpath.basename(rel))]
        return found[0].read_bytes() if len(found) == 1 else None
    return (m / rel).read_bytes()


def _check(store: Path, m: Path, done: dict[str, bytes], failed: Failed | None) -> list[str]:
    problems = []
    with mounted(store, m, expect_log_problems=True):  # damage is logged; the reads below find it
        for rel, want in done.items():
            try:
                got = _read_back(m, rel)
            except OSError as e:
                problems.append(f"{rel}: {e}")
                continue
            if failed is not None and rel == failed[1]:
                name, _, old, new, how = failed
                cut = _model(old, b"", how[0], None, how[2])  # its O_TRUNC or truncate done, the write not
                if got is None or not (_between(got, old, new) or _between(got, cut, new)):
                    problems.append(f"{rel}: bytes from before the failed step are lost or wrong")
            elif got != want:
                problems.append(f"{rel} differs from what was fsync'ed before the fault")
        for dirpath, _, files in os.walk(m):  # the rest reads, whatever it holds
            for name in files:
                try:
                    Path(dirpath, name).read_bytes()
                except OSError as e:
                    problems.append(f"{Path(dirpath, name).relative_to(m)}: {e}")
    problems += _offline_checks(store)
    return [f"after a fault in step {failed and failed[0]}: {p}" for p in problems]


def _offline_checks(store: Path, fsck: bool = True) -> list[str]:
    """What `verify` (an encrypted store's), `audit verify` and `fsck`
    find wrong, one line each."""
    problems = []
    for cmd in (["verify"], ["audit", "verify"], *([["fsck"]] if fsck else [])):
        if cmd == ["verify"] and not key_args(store):
            continue
        r = seldonfs(*cmd, str(store), *key_args(store))
        if r.returncode != 0:
            problems.append(f"{' '.join(cmd)}: exit {r.returncode}: {(r.stdout + r.stderr).strip()[-300:]}")
    return problems


def _copy(template: Path, store: Path) -> Path:
    shutil.copytree(template, store, symlinks=True)
    if keyfile_of(template).exists():
        shutil.copy(keyfile_of(template), keyfile_of(store))
    return store


def _sweep(tmp_path: Path, faults_of: Callable[[dict[str, int]], list[str]],
           encrypted: bool = True) -> tuple[dict[str, int], list[str], int]:
    """The workload counted once, then run once for each fault that
    `faults_of(counts)` names, each on a fresh copy of a store mounted
    once before (its first mount makes the audit key: not the workload's).
    Returns the counts, the problems found, the number of faults."""
    template = init_store(tmp_path / "template", encrypted=encrypted)
    with mounted(template, tmp_path / "m"):
        pass
    counts_file = tmp_path / "counts.json"
    done, failed = _run(_copy(template, tmp_path / "count"), tmp_path / "m", f"count:{counts_file}")
    assert failed is None and done
    counts = json.loads(counts_file.read_text())
    faults = faults_of(counts)
    problems = []
    for i, fault in enumerate(faults):
        store = _copy(template, tmp_path / f"s{i}")
        done, failed = _run(store, tmp_path / "m", fault)
        problems += [f"{fault}: {p}" for p in _check(store, tmp_path / "m", done, failed)]
        shutil.rmtree(store)
    return counts, problems, len(faults)


@needs_fuse
@pytest.mark.parametrize("kind", ["encrypted", "plain"])
def test_a_fault_at_any_write_loses_nothing_closed_or_synced(kind: str, tmp_path: Path) -> None:
    counts, problems, points = _sweep(tmp_path, lambda counts: [
        f"{k}:{n}:{err}" for k in KINDS for n in range(1, counts.get(k, 0) + 1) for err in ERRNOS.get(k, ("ENOSPC",))
    ], encrypted=kind == "encrypted")
    assert counts.get("pwrite") and counts.get("fsync") and counts.get("rename") and counts.get("catalog"), counts
    print(f"{kind}: {points} injection points ({counts})")
    assert not problems, "\n".join(problems)


@needs_fuse
def test_a_kill_at_any_write_loses_nothing_closed_or_synced(tmp_path: Path) -> None:
    """The daemon killed before each of its block writes, reservations and
    cuts in turn. An append past a partial last block and a truncate that
    shortens one change a block's stored length and the file's size in two
    system calls, and between them the file does not read: killed there, it
    lost what was closed in that block (EIO) until the next open finished
    or took back the change (blockformat.py, RESIZING). A reservation that
    filled a hole read as damage until the write over it, likewise. fsck
    passes too: the file records a kill lost and the commit of a file cut
    off in its write are made by the next mount (Engine.recover)."""
    counts, problems, points = _sweep(tmp_path, lambda counts: [
        f"{k}:{n}:KILL" for k in ("pwrite", "ftruncate", "reserve") for n in range(1, counts.get(k, 0) + 1)
    ])
    assert counts.get("ftruncate") and counts.get("reserve"), counts
    print(f"{points} kill points ({counts})")
    assert not problems, "\n".join(problems)


def _audit(store: Path, op: str) -> list[dict]:
    out = seldonfs("audit", str(store), "--json", "--op", op)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


@needs_fuse
@pytest.mark.parametrize("kind", ["encrypted", "plain"])
def test_files_a_kill_cut_off_before_their_close_commit_at_the_next_mount(kind: str, tmp_path: Path) -> None:
    """A file written into a folder with a commit rule commits at its
    close. A daemon killed before that close left it unchecked and unnamed
    for good: the next mount served it as it was, and only fsck said "never
    committed". A temporary name there was forgotten with the mount that
    followed it. Now the mount after one that did not end cleanly
    (STORE/mounted still there) commits such files before its first answer:
    a file cut off mid-write is quarantined, a whole one named; a committed
    file rewritten in place is checked again, also when its writer set its
    mtime back (user.seldon.rewriting marks it); a temporary name commits
    after temp_max_age; committed files stay as they were. A write-once
    folder sealed a file cut off there for its whole retention; now it goes
    to quarantine (user.seldon.unsealed marked it while it was open)."""
    import signal

    store = init_store(tmp_path / "store", encrypted=kind == "encrypted")
    cfg = store / "seldonfs.toml"
    cfg.write_text(cfg.read_text().replace('grace = "10s"', 'grace = "10s"\ntemp_max_age = "1s"'))
    m = tmp_path / "m"
    raw, quarantine = m / "input" / "raw", m / "input" / "quarantine"
    ssn = b'{"ssn": "123-45-6789"}'
    with mounted(store, m, expect_log_problems=True) as daemon:  # the gap's warning
        for name in ("kept", "rewritten", "backdated", "settled"):
            (raw / f"{name}.json").write_bytes(b'{"fine": 1}')
        rewritten, backdated, settled = (next(raw.glob(f"*_{n}.json")) for n in ("rewritten", "backdated", "settled"))
        kept = next(raw.glob("*_kept.json")).name
        with open(settled, "r+b") as f:  # changed and committed again: its mark goes with the commit
            f.write(b'{"good": 2}')
        assert "user.seldon.rewriting" not in os.listxattr(settled)
        time.sleep(1)  # past the catalog batch of those
        compliance = m / "archive" / "compliance"
        (compliance / "done.txt").write_bytes(b"a whole record")  # closed: sealed
        fds = []
        large = b"[" + b"12345678," * (1 << 18) + b"0]"  # past INLINE_CHECK_BYTES: checked in the background
        for path, data in ((raw / "cut.json", b'{"a": [1, 2'), (raw / "whole.json", b'{"a": [1, 2]}'),
                           (rewritten, ssn), (compliance / "cut.txt", b"half a rec"), (raw / "large.json", large)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, data)
            os.fsync(fd)
            fds.append(fd)
        (raw / ".left.json.tmp").write_bytes(ssn)  # closed: a temporary name waits for temp_max_age
        before = backdated.stat().st_mtime_ns  # changed, its mtime set back to before its commit record
        fd = os.open(backdated, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, ssn)
        os.fsync(fd)
        os.utime(fd, ns=(before, before))
        fds.append(fd)
        assert "user.seldon.rewriting" in os.listxattr(backdated)
        assert (store / "mounted").exists()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass  # the close cannot reach the dead daemon
    assert sorted(p.name for p in (store / "data" / "input" / "raw").iterdir()) == sorted(
        [".left.json.tmp", "cut.json", "large.json", "whole.json", kept, rewritten.name, backdated.name, settled.name])
    with mounted(store, m, expect_log_problems=True):  # the warnings of the recovery
        names = sorted(p.name for p in raw.iterdir())
        assert "cut.json" not in names and "whole.json" not in names and rewritten.name not in names, names
        (whole,) = [n for n in names if n.endswith("_whole.json")]
        assert (raw / whole).read_bytes() == b'{"a": [1, 2]}' and kept in names and settled.name in names
        wait_for(lambda: list(raw.glob("*_large.json")), what="the large file's commit")
        assert next(raw.glob("*_large.json")).read_bytes() == large
        wait_for(lambda: len(list(quarantine.iterdir())) == 5, what="the temporary name's commit")
        held = {p.name.split("_", 2)[-1]: p.read_bytes() for p in quarantine.iterdir()}
        assert held == {"cut.json": b'{"a": [1, 2', rewritten.name: ssn, ".left.json.tmp": ssn,
                        "cut.txt": b"half a rec", backdated.name: ssn}, held
        assert "user.seldon.rewriting" not in os.listxattr(next(quarantine.glob(f"*_{backdated.name}")))
        assert os.listdir(compliance) == ["done.txt"]  # a write-once folder seals only what was closed
        with pytest.raises(PermissionError):
            (compliance / "done.txt").unlink()
        (cut_record,) = quarantine.glob("*_cut.txt")
        assert "not sealed" in os.getxattr(cut_record, "user.seldon.reason").decode()
        assert "user.seldon.unsealed" not in os.listxattr(cut_record)
    assert not (store / "mounted").exists()
    log = (store / "seldonfs.log").read_text()
    assert log.count("its writer was cut off by the end of the last mount") == 6, log
    assert "large.json: its writer was cut off by the end of the last mount before its close: checked in the " \
        "background, then committed" in log
    commits = [(r["path"], r["path2"]) for r in _audit(store, "commit")]
    assert commits.count(("input/raw/kept.json", f"input/raw/{kept}")) == 1
    assert all(path2 != f"input/raw/{kept}" or path == "input/raw/kept.json" for path, path2 in commits)
    assert {r["path"] for r in _audit(store, "quarantine")} >= {
        "input/raw/cut.json", f"input/raw/{rewritten.name}", f"input/raw/{backdated.name}", "archive/compliance/cut.txt"}
    with mounted(store, m):  # a clean end before: nothing to look for, no warning
        pass
    assert not _offline_checks(store)


FILES = {"input/processed/big.bin": rnd.randbytes(100_000), "input/processed/small.txt": b"five\n",
         "output/reports/q.csv": b"a,b\n1,2\n"}


def _killed_offline(tmp_path: Path, run: Callable[..., subprocess.CompletedProcess],
                    settle: Callable[[Path], None] = lambda store: None) -> None:
    """`run(store, env)` (an offline command) killed (SIGKILL) before each
    of its writes, syncs and renames in turn; then `settle(store)` (make the
    tests' key file the one that opens it), mount, append to every file,
    unmount, `run` again to the end: every byte written before the kill and
    after it reads back, and verify and audit verify pass."""
    template = init_store(tmp_path / "template")
    with mounted(template, tmp_path / "m"):
        for rel, data in FILES.items():
            (tmp_path / "m" / rel).write_bytes(data)
    counts_file = tmp_path / "counts.json"
    store = _copy(template, tmp_path / "count")
    r = run(store, {"SELDONFS_FAULTS": f"count:{counts_file}"})
    assert r.returncode == 0, r.stdout + r.stderr
    counts = json.loads(counts_file.read_text())
    points = [(k, n) for k, c in counts.items() for n in range(1, c + 1)]
    problems = []
    for i, (k, n) in enumerate(points):
        store = _copy(template, tmp_path / f"s{i}")
        r = run(store, {"SELDONFS_FAULTS": f"{k}:{n}:KILL"})
        assert r.returncode == -9, (k, n, r.stdout + r.stderr)
        settle(store)
        try:
            with mounted(store, tmp_path / "m"):
                for rel in FILES:
                    with open(tmp_path / "m" / rel, "ab") as f:
                        f.write(b"+after the kill")
        except RuntimeError as e:
            problems.append(f"{k}:{n}: no mount after the kill: {e}")
            continue
        r = run(store, {})
        if r.returncode != 0:
            problems.append(f"{k}:{n}: run again: exit {r.returncode}: {r.stderr.strip()}")
            continue
        settle(store)
        with mounted(store, tmp_path / "m"):
            for rel, data in FILES.items():
                if (tmp_path / "m" / rel).read_bytes() != data + b"+after the kill":
                    problems.append(f"{k}:{n}: {rel} lost bytes")
        problems += [f"{k}:{n}: {p}" for p in _offline_checks(store, fsck=False)]
        shutil.rmtree(store)
    print(f"{len(points)} kill points ({counts})")
    assert not problems, "\n".join(problems)


@needs_fuse
def test_rekey_killed_at_any_step_then_written_loses_nothing(tmp_path: Path) -> None:
    """Issue 17, repro 4: a rekey killed anywhere, the store mounted and
    written, then rekey again: nothing written in between is reverted."""
    _killed_offline(tmp_path, lambda store, env: seldonfs("rekey", str(store), *key_args(store),
                                                          env={**os.environ, **env}))


@needs_fuse
def test_passwd_killed_at_any_step_leaves_one_working_key(tmp_path: Path) -> None:
    """A passwd killed anywhere leaves the store opening with the old key
    file or the new one, and passwd runs again from the one that opens it."""

    def new_key(store: Path) -> Path:
        return store.with_name(store.name + ".newkey")

    def passwd(store: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
        return seldonfs("passwd", str(store), "--keyfile", str(keyfile_of(store)), "--new-keyfile",
                        str(new_key(store)), env={**os.environ, **env})

    def settle(store: Path) -> None:
        if seldonfs("verify", str(store), "--keyfile", str(keyfile_of(store))).returncode == 12:
            shutil.copy(new_key(store), keyfile_of(store))  # the new one opens it

    _killed_offline(tmp_path, passwd, settle)


@needs_fuse
@pytest.mark.parametrize("kind", ["encrypted", "plain"])
def test_a_fault_in_a_janitor_archive_loses_nothing(kind: str, tmp_path: Path) -> None:
    """The janitor's archive (gzip copy, its record, the original's removal)
    with a fault at each write, sync and rename, or killed there: the file
    is in place or archived whole, never neither; the next run finishes."""
    report = b"a,b\n1,2\n" * 2000
    template = init_store(tmp_path / "template", encrypted=kind == "encrypted")
    with mounted(template, tmp_path / "m"):
        q1 = tmp_path / "m/output/reports/q1.csv"
        q1.write_bytes(report)
        os.utime(q1, (time.time() - 100 * 86400,) * 2)  # the seldon profile archives reports after 90 days

    def janitor(store: Path, faults: str) -> subprocess.CompletedProcess:
        return seldonfs("janitor", str(store), *key_args(store), env={**os.environ, "SELDONFS_FAULTS": faults})

    counts_file = tmp_path / "counts.json"
    r = janitor(_copy(template, tmp_path / "count"), f"count:{counts_file}")
    assert r.returncode == 0 and "1 archive" in r.stdout, r.stdout + r.stderr
    counts = json.loads(counts_file.read_text())
    points = [(k, n, err) for k, c in counts.items() for n in range(1, c + 1) for err in ("ENOSPC", "EIO", "KILL")]
    problems = []
    for i, (k, n, err) in enumerate(points):
        store = _copy(template, tmp_path / f"s{i}")
        janitor(store, f"{k}:{n}:{err}")
        r = janitor(store, "")
        if r.returncode != 0:
            problems.append(f"{k}:{n}:{err}: the next janitor run: exit {r.returncode}: {r.stderr.strip()}")
        with mounted(store, tmp_path / "m", expect_log_problems=True):
            out = tmp_path / "m/archive/output_archive"
            days = [p for p in out.glob("*/*/*") if p.is_dir()] if out.exists() else []
            if len(days) > 1:
                problems.append(f"{k}:{n}:{err}: archived into {len(days)} day folders")
            arch = days[0] if days else out / "none"  # YYYY/MM/DD of the archiving
            try:
                if gzip.decompress((arch / "q1.csv.gz").read_bytes()) != report:
                    problems.append(f"{k}:{n}:{err}: the archive differs")
            except (OSError, EOFError) as e:  # EOFError: a cut gzip stream
                problems.append(f"{k}:{n}:{err}: no whole archive after the next run: {e!r}")
            left = sorted(p.name for p in arch.iterdir()) if arch.exists() else []
            if left != ["q1.csv.gz", "q1.csv.gz.meta.json"] or (tmp_path / "m/output/reports/q1.csv").exists():
                problems.append(f"{k}:{n}:{err}: left behind: {left}")
        problems += [f"{k}:{n}:{err}: {p}" for p in _offline_checks(store)]
        shutil.rmtree(store)
    print(f"{kind}: {len(points)} janitor fault points ({counts})")
    assert not problems, "\n".join(problems)
