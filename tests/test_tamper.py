"""Issue 17, the tamper matrix: each way of changing a store behind the
filesystem's back is detected, by `verify` (files) or `audit verify` (the
history), with exit 26; a damaged file reads as EIO through the mount,
never as wrong bytes."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from pathlib import Path

import pytest

from seldonfs.blockformat import BLOCK_OVERHEAD, HEADER_SIZE

from .conftest import init_store, key_args, mounted, needs_fuse, seldonfs

B = 16384  # the default block size
S = B + BLOCK_OVERHEAD
BIG = os.urandom(3 * B + 500)  # three whole blocks and a short one
RAW = "input/raw"


def _json(n: int) -> bytes:
    """About 40 KiB of JSON: letters only, so no run of digits looks like a
    card or account number to the sensitive-data checks."""
    letters = str.maketrans("0123456789", "ghijklmnop")
    return json.dumps({"n": n, "values": [os.urandom(8).hex().translate(letters) for _ in range(2000)]}).encode()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An encrypted store with a plain file of four blocks and two
    committed (checked, named, recorded) JSON files."""
    store = init_store(tmp_path / "store")
    with mounted(store, tmp_path / "m"):
        (tmp_path / "m/input/processed/big.bin").write_bytes(BIG)
        for n in (1, 2):
            (tmp_path / "m" / RAW / f"d{n}.json").write_bytes(_json(n))
    return store


def _committed(store: Path) -> list[Path]:
    found = sorted((store / "data" / RAW).iterdir())
    assert len(found) == 2
    return found


def _cut(p: Path, size: int) -> None:
    os.truncate(p, size)


def _zero_block(p: Path, n: int) -> None:
    with open(p, "r+b") as f:
        f.seek(HEADER_SIZE + n * S)
        f.write(bytes(S))


def _flip(p: Path, at: int) -> None:
    raw = bytearray(p.read_bytes())
    raw[at] ^= 0x01
    p.write_bytes(bytes(raw))


FILE_TAMPERS = {
    "swap two files": None,  # below: needs both
    "cut at a block boundary": lambda p: _cut(p, HEADER_SIZE + 2 * S),
    "cut to 31 bytes": lambda p: _cut(p, 31),
    "zero a block": lambda p: _zero_block(p, 1),
    "flip a byte": lambda p: _flip(p, HEADER_SIZE + S + 100),
}


@needs_fuse
@pytest.mark.parametrize("tamper", list(FILE_TAMPERS))
def test_a_tampered_file_is_found_by_verify_and_reads_as_eio(tamper: str, store: Path, tmp_path: Path) -> None:
    if tamper == "swap two files":
        a, b = _committed(store)
        t = a.with_name("t")
        a.rename(t)
        b.rename(a)
        t.rename(b)
        victims = []  # a swap is seen against the catalog's checksums; the format alone cannot see it
    else:
        p = store / "data/input/processed/big.bin"
        FILE_TAMPERS[tamper](p)
        victims = [tmp_path / "m/input/processed/big.bin"]
    r = seldonfs("verify", str(store), *key_args(store))
    assert r.returncode == 26, r.stdout + r.stderr
    with mounted(store, tmp_path / "m", expect_log_problems=True):
        for v in victims:
            with pytest.raises(OSError) as e:
                v.read_bytes()
            assert e.value.errno == errno.EIO


def _empty_audit(store: Path) -> None:
    with sqlite3.connect(store / "catalog.sqlite") as c:
        c.execute("DELETE FROM audit")


def _edit_record(store: Path) -> None:
    with sqlite3.connect(store / "catalog.sqlite") as c:
        c.execute("UPDATE audit SET path = 'elsewhere' WHERE seq = (SELECT MIN(seq) FROM audit WHERE op = 'create')")


def _delete_catalog(store: Path) -> None:
    for p in store.glob("catalog.sqlite*"):
        p.unlink()


HISTORY_TAMPERS = {
    "delete the catalog": _delete_catalog,
    "empty the audit rows": _empty_audit,
    "empty the audit rows and delete audit.head": lambda s: (_empty_audit(s), (s / "audit.head").unlink()),
    "edit one record": _edit_record,
}


@needs_fuse
@pytest.mark.parametrize("tamper", list(HISTORY_TAMPERS))
def test_a_tampered_history_is_found_by_audit_verify(tamper: str, store: Path) -> None:
    HISTORY_TAMPERS[tamper](store)
    r = seldonfs("audit", "verify", str(store), *key_args(store))
    assert r.returncode == 26, r.stdout + r.stderr
    assert len((r.stdout + r.stderr).strip().splitlines()) >= 1
