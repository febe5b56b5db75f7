"""Encryption at rest through the real mount and the offline tools: keys and
exit codes, damage detection, verify/decrypt, passwd, rekey, and the golden
store every version must keep reading."""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from seldonfs import offline
from seldonfs.blockformat import BLOCK_OVERHEAD, DEFAULT_BLOCK_SIZE, HEADER_SIZE, backing_size
from seldonfs.keys import KeySource, unlock, unlock_kek
from seldonfs.store import Store

from .conftest import archive_day, init_store, keyfile_of, mounted, needs_fuse, needs_root, seldonfs, small_disk, stored

BS = DEFAULT_BLOCK_SIZE  # new stores use it; the fixture checks
SEALED = BS + BLOCK_OVERHEAD
GOLDEN = Path(__file__).parent / "data" / "golden-v1"


@pytest.fixture
def estore(tmp_path: Path) -> Path:
    s = init_store(tmp_path / "store")
    assert json.loads((s / "store.json").read_text())["encryption"]["block_size"] == BS
    return s


def _write_through_mount(store: Path, tmp_path: Path, files: dict[str, bytes]) -> None:
    with mounted(store, tmp_path / "m"):
        for name, data in files.items():
            (tmp_path / "m/input/processed" / name).write_bytes(data)


def _backing(store: Path, name: str) -> Path:
    return store / "data/input/processed" / name


@needs_fuse
def test_plaintext_appears_nowhere_in_the_store(estore: Path, tmp_path: Path) -> None:
    secret = b"SELDON-CANARY-7f3a9c plan of the Foundation"
    _write_through_mount(estore, tmp_path, {"canary.txt": secret * 100})
    r = subprocess.run(["grep", "-r", "-a", "-l", "SELDON-CANARY", str(estore)], capture_output=True)
    assert r.returncode == 1, r.stdout  # 1: no match anywhere (data, catalog, logs)
    assert _backing(estore, "canary.txt").stat().st_size > len(secret) * 100


@needs_fuse
def test_wrong_keyfile_and_passphrase_exit_12(estore: Path, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    r = seldonfs("mount", "--keyfile", wrong, estore, tmp_path / "m")
    assert r.returncode == 12 and r.stderr.strip() == "seldonfs: wrong key file"
    r = seldonfs("mount", estore, tmp_path / "m", env={**os.environ, "SELDONFS_PASSPHRASE": "x"})
    assert r.returncode == 12 and "key file" in r.stderr
    assert not os.path.ismount(tmp_path / "m")


@needs_fuse
def test_passphrase_store_and_passwd(tmp_path: Path) -> None:
    store = tmp_path / "store"
    pw1, pw2 = tmp_path / "pw1", tmp_path / "pw2"
    pw1.write_text("correct horse\n")
    pw2.write_text("battery staple\n")
    r = seldonfs("init", store, "--passphrase-file", pw1)
    assert r.returncode == 0, r.stderr
    assert json.loads((store / "store.json").read_text())["encryption"]["unlock"]["method"] == "argon2id"
    (tmp_path / "m").mkdir()
    env = {**os.environ, "SELDONFS_PASSPHRASE": "nope"}
    r = seldonfs("mount", store, tmp_path / "m", env=env)
    assert r.returncode == 12 and r.stderr.strip() == "seldonfs: wrong passphrase"
    r = seldonfs("passwd", store, "--passphrase-file", pw1, "--new-passphrase-file", pw2)
    assert r.returncode == 0, r.stderr
    r = seldonfs("mount", "--passphrase-file", pw1, store, tmp_path / "m")
    assert r.returncode == 12
    env = {**os.environ, "SELDONFS_PASSPHRASE_FILE": str(pw2)}
    r = seldonfs("mount", "-o", "allow_other", store, tmp_path / "m", env=env)
    assert r.returncode == 0, r.stderr
    try:
        (tmp_path / "m/input/processed/f").write_text("after passwd")
    finally:
        assert seldonfs("umount", tmp_path / "m").returncode == 0
    # to a key file and back: the data is never rewritten
    before = sorted(p.read_bytes() for p in (store / "data").rglob("*") if p.is_file())
    key = tmp_path / "new.key"
    r = seldonfs("passwd", store, "--passphrase-file", pw2, "--new-keyfile", key)
    assert r.returncode == 0, r.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    assert sorted(p.read_bytes() for p in (store / "data").rglob("*") if p.is_file()) == before
    r = seldonfs("decrypt", store, "input", "-o", tmp_path / "out", "--keyfile", key)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out/input/processed/f").read_text() == "after passwd"


@needs_fuse
def test_damaged_block_reads_eio_rest_readable(estore: Path, tmp_path: Path) -> None:
    data = os.urandom(BS * 8)
    _write_through_mount(estore, tmp_path, {"big": data})
    backing = _backing(estore, "big")
    raw = bytearray(backing.read_bytes())
    raw[HEADER_SIZE + 3 * SEALED + 100] ^= 0x01  # one bit in block 3
    backing.write_bytes(raw)
    with mounted(estore, tmp_path / "m", expect_log_problems=True):
        fd = os.open(tmp_path / "m/input/processed/big", os.O_RDONLY)
        try:
            with pytest.raises(OSError) as e:
                os.pread(fd, BS, 3 * BS)
            assert e.value.errno == errno.EIO
            assert os.pread(fd, BS, 2 * BS) == data[2 * BS : 3 * BS]
            assert os.pread(fd, BS, 4 * BS) == data[4 * BS : 5 * BS]
        finally:
            os.close(fd)
    log = (estore / "seldonfs.log").read_text()
    assert log.count("damaged content") == 1 and "block 3" in log


@needs_fuse
def test_verify_and_decrypt_report_damage(estore: Path, tmp_path: Path) -> None:
    good, bad = os.urandom(BS * 3 + 5), os.urandom(BS * 4)
    _write_through_mount(estore, tmp_path, {"good": good, "bad": bad, "empty": b""})
    key = keyfile_of(estore)
    r = seldonfs("verify", estore, "--keyfile", key)
    assert r.returncode == 0 and "3 files checked, 0 damaged" in r.stdout
    raw = bytearray(_backing(estore, "bad").read_bytes())
    raw[HEADER_SIZE + SEALED + 50] ^= 0x80  # block 1
    _backing(estore, "bad").write_bytes(raw)
    r = seldonfs("verify", estore, "--keyfile", key)
    assert r.returncode == 26
    assert "input/processed/bad: block 1" in r.stdout and "1 damaged" in r.stdout
    r = seldonfs("decrypt", estore, "-o", tmp_path / "out", "--keyfile", key)
    assert r.returncode == 26
    out = tmp_path / "out/input/processed"
    assert (out / "good").read_bytes() == good and (out / "empty").read_bytes() == b""
    rec = (out / "bad").read_bytes()
    assert rec[:BS] == bad[:BS] and rec[2 * BS :] == bad[2 * BS :] and rec[BS : 2 * BS] == b"\0" * BS


@needs_fuse
def test_offline_tools_refuse_a_mounted_store(estore: Path, tmp_path: Path) -> None:
    with mounted(estore, tmp_path / "m"):
        r = seldonfs("verify", estore, "--keyfile", keyfile_of(estore))
        assert r.returncode == 11


@needs_fuse
def test_rekey_interrupted_and_resumed(estore: Path, tmp_path: Path) -> None:
    files = {f"f{i}": os.urandom(i * 3000) for i in range(1, 7)}
    _write_through_mount(estore, tmp_path, files)
    store = Store(estore)
    block = store.identity()["encryption"]
    keys = unlock(block, KeySource(keyfile=keyfile_of(estore)))
    old_kid = block["current_key_id"]
    # a first run that dies: new key added, two files moved, the third
    # killed after its journal entry was written
    _, kek = unlock_kek(block, KeySource(keyfile=keyfile_of(estore)))
    block = offline.start_rekey(block, keys, kek)
    store.write_identity(dict(store.identity(), encryption=block))
    job = offline.Rekey(store, keys, block)
    todo = job.pending()
    assert len(todo) == 6
    job.move(todo[0])
    job.move(todo[1])
    job._overwrite = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        job.move(todo[2])
    assert (estore / offline.REKEY_JOURNAL).exists()
    # in between, a mount reads every file (both keys are still there)
    with mounted(estore, tmp_path / "m"):
        for name, data in files.items():
            assert (tmp_path / "m/input/processed" / name).read_bytes() == data
    r = seldonfs("rekey", estore, "--keyfile", keyfile_of(estore))
    assert r.returncode == 0, r.stderr
    assert not (estore / offline.REKEY_JOURNAL).exists()
    final = store.identity()["encryption"]
    assert [k["key_id"] for k in final["keys"]] == [final["current_key_id"]] != [old_kid]
    for name in files:
        assert offline.header_of(_backing(estore, name)).key_id == final["current_key_id"]
    with mounted(estore, tmp_path / "m"):
        for name, data in files.items():
            assert (tmp_path / "m/input/processed" / name).read_bytes() == data
    assert seldonfs("verify", estore, "--keyfile", keyfile_of(estore)).returncode == 0


@needs_fuse
def test_golden_store_still_reads(tmp_path: Path) -> None:
    store = tmp_path / "golden"
    shutil.copytree(GOLDEN / "store", store)
    expected = json.loads((GOLDEN / "expected.json").read_text())
    key = GOLDEN / "store.key"
    r = seldonfs("verify", store, "--keyfile", key)
    assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / "m").mkdir()
    r = seldonfs("mount", "--keyfile", key, store, tmp_path / "m")
    assert r.returncode == 0, r.stderr
    try:
        for rel, hexdata in expected.items():
            assert (tmp_path / "m" / rel).read_bytes() == bytes.fromhex(hexdata), rel
    finally:
        seldonfs("umount", tmp_path / "m")


@needs_fuse
def test_file_rewritten_under_an_open_handle(estore: Path, tmp_path: Path) -> None:
    """Another handle empties and rewrites the file (a new file id): the open
    one reads the new contents, not EIO."""
    with mounted(estore, tmp_path / "m"):
        f = tmp_path / "m/input/processed/log"
        f.write_bytes(b"old " * 5000)
        # O_DIRECT: the reads reach the daemon through this handle, not the page cache
        fd = os.open(f, os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, 4096)
        try:
            assert os.preadv(fd, [buf], 0) == 4096 and buf[:4] == b"old "
            f.write_bytes(b"new " * 6000)  # O_TRUNC, then a new header
            assert os.preadv(fd, [buf], 16384) == 4096 and buf[:8] == b"new new "
        finally:
            os.close(fd)


@needs_fuse
def test_concurrent_writers_to_one_file(estore: Path, tmp_path: Path) -> None:
    """Two processes write interleaved, block-unaligned ranges of one file:
    no write is lost to the read-modify-write of a shared block."""
    code = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
        "k = int(sys.argv[2])\n"
        "for i in range(k, 400, 2):\n"
        "    os.pwrite(fd, bytes([65 + i % 26]) * 1000, i * 1000)\n"
        "os.close(fd)\n"
    )
    with mounted(estore, tmp_path / "m"):
        f = tmp_path / "m/input/processed/shared"
        f.write_bytes(b"")
        procs = [subprocess.Popen(["python3", "-c", code, str(f), str(k)]) for k in (0, 1)]
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
        got = f.read_bytes()
    assert got == b"".join(bytes([65 + i % 26]) * 1000 for i in range(400))
    assert stored(estore, "input/processed/shared") == got


@needs_fuse
def test_a_rekey_resumed_after_a_mount_keeps_what_the_mount_wrote(estore: Path, tmp_path: Path) -> None:
    """Issue 17, repro 4: killed after its journal, then a mount appends,
    then the rekey is run again: the append stays."""
    _write_through_mount(estore, tmp_path, {"f.txt": b"old content\n"})
    store = Store(estore)
    block = store.identity()["encryption"]
    keys = unlock(block, KeySource(keyfile=keyfile_of(estore)))
    _, kek = unlock_kek(block, KeySource(keyfile=keyfile_of(estore)))
    block = offline.start_rekey(block, keys, kek)
    store.write_identity(dict(store.identity(), encryption=block))
    job = offline.Rekey(store, keys, block)
    (todo,) = job.pending()
    job._overwrite = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        job.move(todo)
    assert (estore / offline.REKEY_JOURNAL).exists()
    with mounted(estore, tmp_path / "m"):
        with open(tmp_path / "m/input/processed/f.txt", "ab") as f:
            f.write(b"appended after the kill\n")
    assert not (estore / offline.REKEY_JOURNAL).exists()  # the mount finished the copy first
    r = seldonfs("rekey", estore, "--keyfile", keyfile_of(estore))
    assert r.returncode == 0, r.stderr
    with mounted(estore, tmp_path / "m"):
        assert (tmp_path / "m/input/processed/f.txt").read_bytes() == b"old content\nappended after the kill\n"
    assert seldonfs("verify", estore, "--keyfile", keyfile_of(estore)).returncode == 0


@needs_fuse
def test_rekey_with_a_damaged_file_is_one_line_and_exit_26(estore: Path, tmp_path: Path) -> None:
    """Issue 17, repro 7 (rekey): a damaged block stops the rekey with its
    reason, not a traceback; the damaged file is left as it was."""
    _write_through_mount(estore, tmp_path, {"bad": os.urandom(50_000), "good": b"fine"})
    p = _backing(estore, "bad")
    raw = bytearray(p.read_bytes())
    raw[HEADER_SIZE + 100] ^= 0xFF
    p.write_bytes(bytes(raw))
    r = seldonfs("rekey", estore, "--keyfile", keyfile_of(estore))
    assert r.returncode == 26 and "Traceback" not in r.stderr and "bad" in r.stderr, r.stderr
    assert p.read_bytes() == bytes(raw)


@needs_fuse
def test_one_damaged_file_does_not_stop_a_janitor_run(estore: Path, tmp_path: Path) -> None:
    """Issue 17, repro 7 (janitor): the damaged file is skipped with its
    reason and nothing half-made is left; the rest of the run goes on."""
    import time

    with mounted(estore, tmp_path / "m"):
        for name in ("bad.csv", "good.csv"):
            f = tmp_path / "m/output/reports" / name
            f.write_bytes(b"a,b\n" + b"1,2\n" * 5000)
            old = time.time() - 100 * 86400  # reports are archived after 90 days
            os.utime(f, (old, old))
    p = estore / "data/output/reports/bad.csv"
    raw = bytearray(p.read_bytes())
    raw[HEADER_SIZE + 100] ^= 0xFF
    st = p.stat()
    p.write_bytes(bytes(raw))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # still 100 days old
    r = seldonfs("janitor", estore, "--keyfile", keyfile_of(estore))
    assert r.returncode == 0, r.stderr
    assert "1 archive" in r.stdout and "skipped" in r.stdout and "damaged" in r.stdout, r.stdout
    arch = archive_day(estore / "data/archive/output_archive")
    assert sorted(os.listdir(arch)) == ["good.csv.gz", "good.csv.gz.meta.json"]  # no half-made bad.csv.gz
    assert p.read_bytes() == bytes(raw)


@needs_fuse
@needs_root
def test_a_full_disk_never_tears_a_committed_block(tmp_path: Path) -> None:
    """Issue 17, repro 1: an append that needs space the disk does not have
    fails with ENOSPC (at write, fsync or close) and leaves the committed
    bytes as they were: no torn sealed block, no EIO, verify clean."""
    import errno

    with small_disk(tmp_path / "small", 32) as small:
        store = small / "store"
        key = keyfile_of(store)
        seldonfs("init", store, "--keyfile", key, check=True)
        m = tmp_path / "m"
        keep = b"precious committed data\n"
        with mounted(store, m, expect_log_problems=True):
            with open(m / "input/processed/keep.txt", "wb") as f:
                f.write(keep)
                os.fsync(f.fileno())
            with open(m / "input/processed/sparse.bin", "wb") as f:  # holes inside
                f.truncate(4 << 20)
                f.seek(4 << 20)
                f.write(b"end")
                os.fsync(f.fileno())
            with open(small / "filler", "wb") as f:  # the disk fills up behind the mount
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC
            errors = []
            try:
                with open(m / "input/processed/keep.txt", "ab") as f:
                    f.write(os.urandom(10_000))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                errors.append(e.errno)
            assert errors and set(errors) <= {errno.ENOSPC}, errors
            errors = []
            try:  # filling a hole needs space as well
                with open(m / "input/processed/sparse.bin", "r+b") as f:
                    f.seek(1 << 20)
                    f.write(os.urandom(300_000))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                errors.append(e.errno)
            assert errors and set(errors) <= {errno.ENOSPC}, errors
            errors = []
            try:  # a new file: never left as a header without a block
                with open(m / "input/processed/new.bin", "wb") as f:
                    f.write(os.urandom(100_000))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                errors.append(e.errno)
            assert errors and set(errors) <= {errno.ENOSPC}, errors
            assert os.stat(store / "data/input/processed/new.bin").st_size == 0
            os.unlink(small / "filler")
        assert "damaged content" not in (store / "seldonfs.log").read_text()
        with mounted(store, m):
            assert (m / "input/processed/keep.txt").read_bytes() == keep
            assert (m / "input/processed/sparse.bin").read_bytes() == bytes(4 << 20) + b"end"
        r = seldonfs("verify", store, "--keyfile", key)
        assert r.returncode == 0, r.stdout + r.stderr


@needs_fuse
def test_a_writer_on_a_full_disk_is_stopped_with_enospc(tmp_path: Path) -> None:
    """Issue 17, repro 2: with the writeback cache a write(2) only fills the
    page cache, so a writer that never looks at fsync ran on for minutes
    once the store was full. Now it is told ENOSPC at its next write, the
    log names no damage, and what was there before reads as it was."""
    with small_disk(tmp_path / "small", 24) as small:
        store = small / "store"
        key = keyfile_of(store)
        seldonfs("init", store, "--keyfile", key, check=True)
        m = tmp_path / "m"
        keep = os.urandom(100_000)
        with mounted(store, m, expect_log_problems=True):
            (m / "input/processed/keep.bin").write_bytes(keep)
            # no count: only an error ends it (the timeout fails the test)
            r = subprocess.run(["dd", "if=/dev/zero", f"of={m}/temp/working/big", "bs=1M"],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode != 0 and "No space left on device" in r.stderr, r.stderr
            assert (m / "input/processed/keep.bin").read_bytes() == keep
            os.unlink(m / "temp/working/big")
        assert "damaged content" not in (store / "seldonfs.log").read_text()
        r = seldonfs("verify", store, "--keyfile", key)
        assert r.returncode == 0, r.stdout + r.stderr


@needs_fuse
def test_a_damaged_read_is_audited_once(estore: Path, tmp_path: Path) -> None:
    """SPEC §4 (issue 17, repro 7): damage reads as EIO, is counted, and is
    recorded in the audit chain once per file and cause."""
    _write_through_mount(estore, tmp_path, {"hurt": os.urandom(20_000)})
    p = _backing(estore, "hurt")
    raw = bytearray(p.read_bytes())
    raw[HEADER_SIZE + 100] ^= 0xFF
    p.write_bytes(bytes(raw))
    with mounted(estore, tmp_path / "m", expect_log_problems=True):
        for _ in range(3):
            with pytest.raises(OSError) as e:
                (tmp_path / "m/input/processed/hurt").read_bytes()
            assert e.value.errno == errno.EIO
    r = seldonfs("audit", estore, "--op", "damaged", "--json")
    (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert rec["path"] == "input/processed/hurt" and rec["result"] == "EIO" and "block 0" in rec["detail"]
    assert seldonfs("audit", "verify", estore, "--keyfile", keyfile_of(estore)).returncode == 0


def _tamper(path: Path, at: int, data: bytes | None = None) -> None:
    """Overwrite bytes of a backing file in place (its holes stay holes);
    no `data`: flip every bit of the byte at `at`."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data if data is not None else bytes([os.pread(fd, 1, at)[0] ^ 0xFF]), at)
    finally:
        os.close(fd)


@needs_fuse
def test_cut_zeroed_and_flipped_files_are_found_and_read_eio(estore: Path, tmp_path: Path) -> None:
    """Issue 17, repro 6: each tampering is one line of `verify` (exit 26)
    and EIO through the mount, never wrong bytes; holes stay holes."""
    data = os.urandom(3 * BS + 100)
    names = ["boundary", "cut31", "cut32", "zeroed", "flipped", "good"]
    _write_through_mount(estore, tmp_path, {n: data for n in names})
    with mounted(estore, tmp_path / "m"):
        sparse = tmp_path / "m/input/processed/sparse"
        with open(sparse, "wb") as f:
            f.truncate(1 << 20)  # truncate up
            f.seek(4 << 20)
            f.write(b"past the end")  # a write past the end
    os.truncate(_backing(estore, "boundary"), HEADER_SIZE + 2 * SEALED)
    os.truncate(_backing(estore, "cut31"), 31)
    os.truncate(_backing(estore, "cut32"), 32)
    _tamper(_backing(estore, "zeroed"), HEADER_SIZE + SEALED, bytes(SEALED))
    _tamper(_backing(estore, "flipped"), HEADER_SIZE + SEALED + 7)
    assert os.stat(_backing(estore, "sparse")).st_blocks * 512 < 64 * 1024  # header, two last blocks
    r = seldonfs("verify", estore, "--keyfile", keyfile_of(estore))
    assert r.returncode == 26, r.stdout + r.stderr
    lines = sorted(r.stdout.splitlines())
    assert lines == [
        "7 files checked, 5 damaged",
        "input/processed/boundary: file cut: block 1 is not the last block",
        "input/processed/cut31: file cut to 31 bytes",
        "input/processed/cut32: file cut to 32 bytes",
        "input/processed/flipped: block 1: authentication failed",
        "input/processed/zeroed: block 1: zeroed (allocated zeros, not a hole)",
    ], r.stdout
    with mounted(estore, tmp_path / "m", expect_log_problems=True):
        d = tmp_path / "m/input/processed"
        for name in names[:-1]:
            with pytest.raises(OSError) as e:
                (d / name).read_bytes()
            assert e.value.errno == errno.EIO, name
        assert (d / "good").read_bytes() == data
        assert (d / "sparse").read_bytes() == bytes(4 << 20) + b"past the end"


def _committed(store: Path) -> dict[str, Path]:
    """The committed files of input/raw by the name their writer gave them."""
    return {p.name.split("_", 1)[1]: p for p in (store / "data/input/raw").iterdir()}


@needs_fuse
def test_swapped_committed_files_are_found_by_verify(estore: Path, tmp_path: Path) -> None:
    """Issue 17: two committed files swapped in the store (mv a t; mv b a;
    mv t b) each read as the other's content through the mount (the format
    binds no names), but `verify` finds that they differ from their catalog
    records; a file changed through the mount afterwards is no false alarm."""
    contents = {"a.csv": b"name,value\nalpha,1\n" * 50, "b.csv": b"name,value\nbeta,22\n" * 70,
                "c.csv": b"name,value\ngamma,3\n" * 10}
    with mounted(estore, tmp_path / "m"):
        for name, data in contents.items():
            (tmp_path / "m/input/raw" / name).write_bytes(data)
    files = _committed(estore)
    assert sorted(files) == sorted(contents)
    with mounted(estore, tmp_path / "m"), open(tmp_path / "m/input/raw" / files["c.csv"].name, "ab") as f:
        f.write(b"delta,4\n")  # changed after its commit: a new record
    key = keyfile_of(estore)
    r = seldonfs("verify", estore, "--keyfile", key)
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = files["a.csv"], files["b.csv"]
    t = a.with_name("t")
    a.rename(t)
    b.rename(a)
    t.rename(b)
    r = seldonfs("verify", estore, "--keyfile", key)
    assert r.returncode == 26, r.stdout + r.stderr
    # b's path holds a's file, written before b was committed: compared. a's
    # path holds b's file, most likely written after a's record: not compared
    # (docs/file-format.md: of two swapped files at least the older is found).
    problem = "content differs from the catalog record (swapped or replaced)"
    lines = set(r.stdout.splitlines())
    assert f"input/raw/{b.name}: {problem}" in lines, r.stdout
    assert lines - {f"input/raw/{a.name}: {problem}"} == {
        f"input/raw/{b.name}: {problem}", f"3 files checked, {len(lines) - 1} damaged",
    }
    r = seldonfs("fsck", estore, "--keyfile", key)
    assert r.returncode == 26 and f"cannot repair: input/raw/{b.name}: {problem}" in r.stdout, r.stdout


def _age_key(store: Path, days: float) -> None:
    """Make the master key look `days` old: its date in store.json is plain
    (keys.py says why), so an edit is the real way to age it."""
    import time

    ident = json.loads((store / "store.json").read_text())
    ident["encryption"]["key_created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - days * 86400))
    (store / "store.json").write_text(json.dumps(ident))


def _alert_kinds(doc: dict) -> set[str]:
    return {a["kind"] for a in doc.get("alerts", [])}


@needs_fuse
def test_key_age(estore: Path, tmp_path: Path) -> None:
    """init dates the master key; a store written before the dates gets them
    at its first mount (INFO, no warning); a key older than
    [encryption] rotate_after shows key-age in ctl health, status and stats;
    passwd moves only the secret's date, rekey resets the key's age."""
    import time

    block = json.loads((estore / "store.json").read_text())["encryption"]
    made = time.mktime(time.strptime(block["key_created"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(made - time.time()) < 120 and block["secret_changed"] == block["key_created"]

    # an older store: no dates; its first mount gives them, said at INFO
    ident = json.loads((estore / "store.json").read_text())
    del ident["encryption"]["key_created"], ident["encryption"]["secret_changed"]
    (estore / "store.json").write_text(json.dumps(ident))
    m = tmp_path / "m"
    with mounted(estore, m):
        r = seldonfs("ctl", m, "health")
        assert r.returncode == 0 and "key-age" not in _alert_kinds(json.loads(r.stdout)), r.stdout
    assert "kept no date for the master key" in (estore / "seldonfs.log").read_text()
    assert "key_created" in json.loads((estore / "store.json").read_text())["encryption"]

    # 120 days old, rotate_after 90 days (the default)
    _age_key(estore, 120)
    with mounted(estore, m, expect_log_problems=True):
        r = seldonfs("ctl", m, "health")
        assert r.returncode == 0, r.stderr
        health = json.loads(r.stdout)
        assert "key-age" in _alert_kinds(health), health
        r = seldonfs("status", m)
        assert "key-age" in r.stdout and "master key 120 days old" in r.stdout, r.stdout
        (st,) = [json.loads(l) for l in seldonfs("status", m, "--json").stdout.splitlines()]
        assert st["key"]["rotate_due"] and "key-age" in _alert_kinds(st), st
        stats = json.loads(seldonfs("stats", m, "--json").stdout)
        assert stats["key"]["age_days"] == pytest.approx(120, abs=0.1) and stats["key"]["rotate_after_days"] == 90
    r = seldonfs("status", estore)
    assert "not mounted" in r.stdout and "key-age" in r.stdout, r.stdout

    # a longer rotate_after: not due
    conf = estore / "seldonfs.toml"
    conf.write_text(conf.read_text() + '\n[encryption]\nrotate_after = "180d"\n')
    r = seldonfs("status", estore, "--json")
    assert json.loads(r.stdout)["key"]["rotate_due"] is False, r.stdout

    # passwd: a new secret, the same key (and its age)
    old = json.loads((estore / "store.json").read_text())["encryption"]
    newkey = tmp_path / "new.key"
    r = seldonfs("passwd", estore, "--keyfile", keyfile_of(estore), "--new-keyfile", newkey)
    assert r.returncode == 0, r.stderr
    after = json.loads((estore / "store.json").read_text())["encryption"]
    assert after["key_created"] == old["key_created"] and after["secret_changed"] > old["secret_changed"]
    shutil.move(newkey, keyfile_of(estore))

    # rekey: a new key, age 0
    conf.write_text(conf.read_text().replace('"180d"', '"100d"'))
    assert json.loads(seldonfs("status", estore, "--json").stdout)["key"]["rotate_due"]
    r = seldonfs("rekey", estore, "--keyfile", keyfile_of(estore))
    assert r.returncode == 0, r.stderr
    k = json.loads(seldonfs("status", estore, "--json").stdout)["key"]
    assert k["age_days"] < 0.1 and not k["rotate_due"], k
    (estore / "seldonfs.log").unlink()  # the aged mount's warnings are behind us
    with mounted(estore, m):
        health = json.loads(seldonfs("ctl", m, "health").stdout)
        assert "key-age" not in _alert_kinds(health), health


@needs_fuse
def test_a_store_made_with_a_smaller_block_size_uses_it_everywhere(tmp_path: Path) -> None:
    s = init_store(tmp_path / "store", "--block-size", "4K")
    assert json.loads((s / "store.json").read_text())["encryption"]["block_size"] == 4096
    data = bytearray(os.urandom(5 * 4096 + 100))
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    m = tmp_path / "m"
    with mounted(s, m):
        f = m / "input/processed/f.bin"
        subprocess.run(["cp", src, f], check=True)
        # a page rewritten in place, then the file cut inside a block
        subprocess.run(["dd", "if=/dev/zero", f"of={f}", "bs=4096", "seek=2", "count=1", "conv=notrunc,fsync",
                        "status=none"], check=True)
        data[2 * 4096 : 3 * 4096] = bytes(4096)
        os.truncate(f, 4 * 4096 + 7)
        del data[4 * 4096 + 7 :]
        assert f.read_bytes() == data
    assert _backing(s, "f.bin").stat().st_size == backing_size(len(data), 4096)
    r = seldonfs("verify", s, "--keyfile", keyfile_of(s))
    assert r.returncode == 0, r.stdout + r.stderr
    with mounted(s, m):  # read back by a new mount: the size comes from store.json
        assert (m / "input/processed/f.bin").read_bytes() == data


@pytest.mark.parametrize("size", ["3000", "2K", "2M", "16X", "0", "16KB"])
def test_init_refuses_a_block_size_the_format_cannot_take(tmp_path: Path, size: str) -> None:
    r = seldonfs("init", tmp_path / "s", "--keyfile", tmp_path / "k", "--block-size", size)
    assert r.returncode == 2 and "--block-size" in r.stderr, r.stderr
    if size == "16KB":  # decimal, as the config's sizes read it: 16,000 bytes
        assert "KB is decimal: 16,000 bytes" in r.stderr, r.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "k").exists()
    r = seldonfs("init", tmp_path / "s", "--no-encryption", "--block-size", "4K")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "seldonfs: --block-size is for encrypted stores: drop it, or drop --no-encryption"], r.stderr
