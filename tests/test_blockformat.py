"""The block format and the key primitives (SPEC §4), without FUSE.

Properties (pattern: gocryptfs internal/contentenc/offsets_test.go): any
sequence of writes and truncates reads back like an in-memory model; every
flipped byte, swapped or foreign block and cut tail fails loudly; the size
maps are exact inverses and monotonic. Golden files pin format versions 1
and 2, and an independent decrypter written from docs/file-format.md reads
both.
"""

from __future__ import annotations

import os
import random
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seldonfs import blockformat as bf
from seldonfs import crypto
from seldonfs.blockformat import BlockDamaged, EncryptedContent, EncryptedFile, FileCut, FormatError, Header

MASTER = bytes(range(32))
KID = crypto.key_id(MASTER)
KEYS = {KID: MASTER}
BS = 64  # the smallest block size: many block boundaries for little data
STEP = BS + bf.BLOCK_OVERHEAD
FAST_KDF = crypto.KdfParams(salt=b"s" * 16, iterations=1, lanes=1, memory_cost=64)

# tmp_path is shared by the examples of one test; each example truncates its file.
with_tmp = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None, max_examples=300
)


@contextmanager
def backing(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)


def enc(
    fd: int, block_size: int = BS, keys: dict[int, bytes] = KEYS, kid: int = KID
) -> EncryptedFile:
    return EncryptedFile(fd, keys, kid, block_size)


def payload(max_size: int) -> st.SearchStrategy[bytes]:
    """Random bytes (reproducible from a seed) or zeros, which must still be sealed."""
    n = st.integers(0, max_size)
    rnd = st.tuples(n, st.integers(0, 2**32)).map(lambda t: random.Random(t[1]).randbytes(t[0]))
    return st.one_of(rnd, n.map(bytes))


def offsets(bs: int) -> st.SearchStrategy[int]:
    """Offsets and sizes up to 5 blocks, often right at or beside a boundary."""
    near = st.builds(lambda k, d: max(k * bs + d, 0), st.integers(0, 5), st.integers(-2, 2))
    return st.one_of(st.integers(0, 5 * bs), near)


def apply(model: bytearray, op: tuple[str, int, bytes]) -> None:
    kind, off, data = op
    if kind == "t":
        del model[off:]
        model.extend(bytes(off - len(model)))
    elif data:  # an empty write does not extend (POSIX)
        model.extend(bytes(max(off - len(model), 0)))
        model[off : off + len(data)] = data


# --- (a) read back what was written ---


@with_tmp
@given(block_size=st.sampled_from([64, 128, 4096]), data=st.data())
def test_reads_match_a_model(tmp_path: Path, block_size: int, data: st.DataObject) -> None:
    write = st.tuples(st.just("w"), offsets(block_size), payload(3 * block_size))
    trunc = st.tuples(st.just("t"), offsets(block_size), st.just(b""))
    ops = data.draw(st.lists(st.one_of(write, trunc), max_size=10))
    model = bytearray()
    with backing(tmp_path / "f") as fd:
        f = enc(fd, block_size)
        for op in ops:
            if op[0] == "t":
                f.truncate(op[1])
            else:
                assert f.write(op[1], op[2]) == len(op[2])
            apply(model, op)
            assert f.size() == len(model)
            assert os.fstat(fd).st_size == bf.backing_size(len(model), block_size)
        for _ in range(3):
            off = data.draw(st.integers(0, len(model) + block_size))
            size = data.draw(st.integers(0, 3 * block_size))
            assert f.read(off, size) == model[off : off + size]
        # A fresh EncryptedFile parses the header from disk: nothing lives in the cache.
        assert enc(fd, block_size).read(0, len(model) + 1) == model


EDGES = [0, 1, BS - 1, BS, BS + 1, 2 * BS - 1, 2 * BS, 2 * BS + 1, 3 * BS]


@pytest.mark.parametrize("old", EDGES[:6])
def test_writes_and_truncates_around_block_boundaries(tmp_path: Path, old: int) -> None:
    rnd = random.Random(old)
    writes = [("w", off, rnd.randbytes(n)) for off in EDGES for n in (1, BS, BS + 1)]
    truncates = [("t", size, b"") for size in EDGES]
    with backing(tmp_path / "f") as fd:
        for op in writes + truncates:
            f, model = enc(fd), bytearray(rnd.randbytes(old))
            f.truncate(0)
            f.write(0, model)
            if op[0] == "w":
                f.write(op[1], op[2])
            else:
                f.truncate(op[1])
            apply(model, op)
            assert (f.size(), f.read(0, 5 * BS)) == (len(model), model), op[:2]
            assert os.fstat(fd).st_size == bf.backing_size(len(model), BS)


def test_holes_are_zero_on_disk_and_read_as_zeros(tmp_path: Path) -> None:
    with backing(tmp_path / "f") as fd:
        f = enc(fd)
        f.write(0, b"abc")
        f.truncate(3 * BS + 5)  # block 0 resealed to full length; 1, 2 holes; 3 sealed, final
        f.write(5 * BS, b"x")  # 3 resealed full and not final, 4 a hole, 5 sealed
        raw = os.pread(fd, 10_000, 0)
        blocks = [raw[bf.block_offset(n, BS) :][:STEP] for n in range(6)]
        assert [not any(b) for b in blocks] == [False, True, True, False, True, False]
        assert len(blocks[5]) == 1 + bf.BLOCK_OVERHEAD
        assert f.read(0, 10 * BS) == b"abc" + bytes(5 * BS - 3) + b"x"
        f.truncate(2 * BS + 9)  # into a hole: the new last block is sealed (zeros)
        assert os.pread(fd, 10_000, bf.block_offset(1, BS)) == bytes(STEP) + sealed(fd, 2)
        assert any(sealed(fd, 2)) and len(sealed(fd, 2)) == 9 + bf.BLOCK_OVERHEAD
        assert f.read(0, 10 * BS) == b"abc" + bytes(2 * BS + 6)


def test_a_sparse_file_stays_sparse_but_for_its_last_block(tmp_path: Path) -> None:
    bs = bf.DEFAULT_BLOCK_SIZE
    with backing(tmp_path / "f") as fd:
        f = enc(fd, bs)
        f.truncate(1 << 20)
        assert os.fstat(fd).st_blocks * 512 <= 2 * (bs + 4096)  # header and last block
        f.write(4 << 20, b"end")
        assert os.fstat(fd).st_blocks * 512 <= 4 * (bs + 4096)
        assert f.read(0, 5 << 20) == bytes(4 << 20) + b"end"


def test_zero_plaintext_is_sealed_not_stored_as_a_hole(tmp_path: Path) -> None:
    with backing(tmp_path / "f") as fd:
        enc(fd).write(0, bytes(3 * BS + 7))
        raw = os.pread(fd, 10_000, 0)
        assert all(any(raw[bf.block_offset(n, BS) :][:STEP]) for n in range(4))


def test_truncate_to_zero_empties_the_backing_file_and_renews_the_file_id(tmp_path: Path) -> None:
    with backing(tmp_path / "f") as fd:
        f = enc(fd)
        f.write(0, b"first")
        first = f.header()
        f.truncate(0)
        assert os.fstat(fd).st_size == 0 and f.header() is None and f.read(0, 10) == b""
        f.write(0, b"second")
        assert first is not None and f.header() not in (None, first)
        assert f.read(0, 10) == b"second"


class Killed(BaseException):
    """The process ending where a system call was (no `except OSError` runs)."""


@pytest.mark.parametrize("change", ["append", "append over the last block", "shrink", "shrink the last block",
                                    "fill a hole"])
def test_a_change_killed_between_its_calls_is_finished_or_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Each change killed before each of its pwrites, reservations and cuts
    in turn; a new EncryptedFile on the file (the next open) reads it as it
    was or as the change makes it, never as damage (RESIZING). Blocks of
    16 KiB: holes in the backing file need blocks larger than its own."""
    B = bf.DEFAULT_BLOCK_SIZE
    base = random.Random(5).randbytes(10 * B + 20)  # a partial last block
    op = {
        "append": ("w", len(base), b"+" * (3 * B)),
        "append over the last block": ("w", len(base) - 30, b"+" * (3 * B)),
        "shrink": ("t", 6 * B + 7, b""),
        "shrink the last block": ("t", 10 * B + 9, b""),
        "fill a hole": ("w", 14 * B + 3, b"+" * (2 * B)),  # in a file grown to 20 blocks first
    }[change]
    seen = 0
    for at in range(1, 20):
        with backing(tmp_path / "f") as fd:
            f = enc(fd, B)
            f.write(0, base)
            if change == "fill a hole":
                f.truncate(20 * B)
            old = f.read(0, 100 * B)
            model = bytearray(old)
            apply(model, op)
            calls = 0

            def dies(real):
                def call(*args):
                    nonlocal calls
                    calls += 1
                    if calls == at:
                        raise Killed
                    return real(*args)
                return call

            for name in ("pwrite", "ftruncate", "reserve"):
                monkeypatch.setattr(bf.faults, name, dies(getattr(bf.faults, name)))
            try:
                f.write(op[1], op[2]) if op[0] == "w" else f.truncate(op[1])
            except Killed:
                seen += 1
            monkeypatch.undo()
            assert enc(fd, B).read(0, 100 * B) in (old, bytes(model)), (change, at)
            if calls < at:
                break
    assert seen >= 2, seen


def test_negative_offsets_are_refused(tmp_path: Path) -> None:
    with backing(tmp_path / "f") as fd:
        f = enc(fd)
        for call in (lambda: f.read(-1, 1), lambda: f.write(-1, b"x"), lambda: f.truncate(-1)):
            with pytest.raises(ValueError, match="negative"):
                call()


# --- (b) a flipped byte anywhere fails loudly ---


SAMPLE_HOLES = {3}


def damaged_sample(fd: int) -> bytes:
    """Blocks 0-2 and 4 sealed, 3 a hole, 5 sealed zeros (10 bytes, final); 330 bytes."""
    f = enc(fd)
    f.write(0, random.Random(1).randbytes(150))
    f.truncate(5 * BS + 10)
    f.write(4 * BS + 5, b"twenty bytes of text")
    model = f.read(0, 10 * BS)
    assert len(model) == 5 * BS + 10 and os.fstat(fd).st_size == 32 + 5 * STEP + 38
    return model


def read_block(f: EncryptedFile, n: int) -> bytes | FormatError:
    try:
        return f.read(n * BS, BS)
    except FormatError as e:
        return e


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_any_flipped_byte_is_caught(tmp_path: Path, mask: int) -> None:
    with backing(tmp_path / "f") as fd:
        model = damaged_sample(fd)
        for pos in range(os.fstat(fd).st_size):
            orig = os.pread(fd, 1, pos)
            os.pwrite(fd, bytes([orig[0] ^ mask]), pos)
            hit = (pos - bf.HEADER_SIZE) // STEP if pos >= bf.HEADER_SIZE else None
            f = enc(fd)
            for n in range(6):
                got, want = read_block(f, n), model[n * BS : (n + 1) * BS]
                if n == hit:
                    assert isinstance(got, BlockDamaged) and got.block_no == n
                elif hit is None and n not in SAMPLE_HOLES:
                    assert isinstance(got, FormatError)
                elif hit is None:
                    # A hole carries no tag: with a damaged file id it still
                    # reads as the zeros it is; any other header damage fails.
                    assert isinstance(got, FormatError) or got == want
                else:
                    assert got == want
            os.pwrite(fd, orig, pos)
        assert enc(fd).read(0, len(model)) == model


def test_block_damaged_names_the_block(tmp_path: Path) -> None:
    with backing(tmp_path / "f") as fd:
        enc(fd).write(0, bytes(4 * BS))
        os.pwrite(fd, b"\xff", bf.block_offset(3, BS) + 20)
        with pytest.raises(BlockDamaged, match=r"^block 3: authentication failed$") as e:
            enc(fd).read(0, 4 * BS)
        assert (e.value.block_no, e.value.cause) == (3, "authentication failed")


# --- (c) swapped, foreign and cut blocks fail loudly ---


def sealed(fd: int, n: int) -> bytes:
    return os.pread(fd, STEP, bf.block_offset(n, BS))


def test_swapped_blocks_fail(tmp_path: Path) -> None:
    with backing(tmp_path / "f") as fd:
        data = random.Random(2).randbytes(3 * BS)
        enc(fd).write(0, data)
        b0, b1 = sealed(fd, 0), sealed(fd, 1)
        os.pwrite(fd, b1, bf.block_offset(0, BS))
        os.pwrite(fd, b0, bf.block_offset(1, BS))
        f = enc(fd)
        for n in (0, 1):
            with pytest.raises(BlockDamaged):
                f.read(n * BS, 1)
        assert f.read(2 * BS, BS) == data[2 * BS :]


def test_duplicated_block_fails(tmp_path: Path) -> None:
    with backing(tmp_path / "f") as fd:
        enc(fd).write(0, random.Random(3).randbytes(2 * BS))
        os.pwrite(fd, sealed(fd, 1), bf.block_offset(0, BS))
        with pytest.raises(BlockDamaged, match="block 0"):
            enc(fd).read(0, 2 * BS)


def test_block_from_another_file_fails(tmp_path: Path) -> None:
    with backing(tmp_path / "a") as a, backing(tmp_path / "b") as b:
        enc(a).write(0, random.Random(4).randbytes(2 * BS))
        enc(b).write(0, random.Random(5).randbytes(2 * BS))
        os.pwrite(b, sealed(a, 1), bf.block_offset(1, BS))  # same key, same position
        with pytest.raises(BlockDamaged, match="block 1"):
            enc(b).read(BS, BS)
        os.pwrite(b, os.pread(a, bf.HEADER_SIZE, 0), 0)  # a's header on b's blocks
        with pytest.raises(BlockDamaged, match="block 0"):
            enc(b).read(0, BS)


def test_header_naming_another_known_key_fails(tmp_path: Path) -> None:
    other = bytes(32)
    keys = {KID: MASTER, crypto.key_id(other): other}
    with backing(tmp_path / "f") as fd:
        enc(fd).write(0, b"data")
        os.pwrite(fd, struct.pack(">I", crypto.key_id(other)), 8)
        with pytest.raises(BlockDamaged):
            enc(fd, keys=keys).read(0, 4)


def test_a_backing_file_cut_anywhere_fails(tmp_path: Path) -> None:
    with backing(tmp_path / "f") as fd:
        model = damaged_sample(fd)
        full = os.pread(fd, 10_000, 0)
        for cut in range(1, len(full)):
            os.ftruncate(fd, cut)
            f = enc(fd)
            n, rest = divmod(cut - bf.HEADER_SIZE, STEP)
            assert f.size() > 0 and (rest == 0 or f.size() > n * BS)  # st_size covers the cut
            if cut <= bf.HEADER_SIZE:
                want = f"^file cut to {cut} bytes$"
            elif rest == 0 and n - 1 in SAMPLE_HOLES:
                want = f"^file cut: block {n - 1}, the last, is a hole$"
            elif rest == 0:
                want = f"^file cut: block {n - 1} is not the last block$"
            elif n in SAMPLE_HOLES and rest > bf.BLOCK_OVERHEAD:
                want = f"^file cut: block {n}, the last, is a hole$"
            else:
                want = f"^block {n}: (sealed length|authentication failed)"
            with pytest.raises(BlockDamaged if want.startswith("^block") else FileCut, match=want):
                f.read(0, len(model))
            os.pwrite(fd, full, 0)
        assert enc(fd).read(0, len(model)) == model


def test_a_block_sealed_final_before_the_last_is_read(tmp_path: Path) -> None:
    """What a write killed between its new blocks and the reseal of the old
    last block leaves behind still reads (module docstring)."""
    with backing(tmp_path / "f") as fd:
        data = random.Random(8).randbytes(3 * BS)
        enc(fd).write(0, data[:BS])
        first = sealed(fd, 0)  # sealed final
        enc(fd).write(BS, data[BS:])
        os.pwrite(fd, first, bf.block_offset(0, BS))
        assert enc(fd).read(0, 3 * BS) == data


def test_zeros_over_a_sealed_block_are_damage_but_a_hole_is_not(tmp_path: Path) -> None:
    bs, step = bf.DEFAULT_BLOCK_SIZE, bf.DEFAULT_BLOCK_SIZE + bf.BLOCK_OVERHEAD
    with backing(tmp_path / "f") as fd:
        f = enc(fd, bs)
        data = random.Random(9).randbytes(2 * bs)
        f.write(0, data)
        f.write(4 * bs, data)  # blocks 2 and 3 holes
        assert f.read(0, 6 * bs) == data + bytes(2 * bs) + data
        os.pwrite(fd, bytes(step), bf.block_offset(1, bs))
        with pytest.raises(BlockDamaged, match=r"^block 1: zeroed \(allocated zeros, not a hole\)$"):
            enc(fd, bs).read(0, 6 * bs)
        assert enc(fd, bs).read(2 * bs, 2 * bs) == bytes(2 * bs)


@pytest.mark.parametrize("fail_at", [0, 1, 2])
@pytest.mark.parametrize("old", [0, 10, BS, BS + 10])
def test_a_failed_write_leaves_the_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: int, fail_at: int) -> None:
    """An error on the n-th pwrite of a growing write or truncate: the file
    reads as before (a new one stays empty, never a header alone)."""
    real, calls = EncryptedFile._pwrite_all, []

    def failing(self: EncryptedFile, buf: bf.Buffer, off: int) -> None:
        calls.append(off)
        if len(calls) > fail_at:
            raise OSError(28, "No space left on device")
        real(self, buf, off)

    before = random.Random(old).randbytes(old)
    for grow in (lambda f: f.write(3 * BS + 5, b"new"), lambda f: f.truncate(5 * BS), lambda f: f.write(old, b"n" * BS)):
        with backing(tmp_path / "f") as fd:
            enc(fd).write(0, before)
            size = os.fstat(fd).st_size
            monkeypatch.setattr(EncryptedFile, "_pwrite_all", failing)
            calls.clear()
            try:
                grow(enc(fd))
                assert len(calls) <= fail_at  # it needed no more writes than that
            except OSError:
                assert os.fstat(fd).st_size == size
            monkeypatch.setattr(EncryptedFile, "_pwrite_all", real)
            if os.fstat(fd).st_size == size:
                assert enc(fd).read(0, 10 * BS) == before


def test_a_cut_tail_of_zeros_is_not_taken_for_a_hole(tmp_path: Path) -> None:
    with backing(tmp_path / "f") as fd:
        enc(fd).write(0, random.Random(7).randbytes(BS))
        os.pwrite(fd, bytes(5), bf.block_offset(1, BS))  # 5 stray bytes: a cut block 1
        f = enc(fd)
        assert f.size() == BS + 1
        for touch in (
            lambda: f.read(0, 2 * BS),
            lambda: f.truncate(3 * BS),
            lambda: f.write(3 * BS, b"x"),
        ):
            with pytest.raises(BlockDamaged, match="^block 1: sealed length: want=29..92 have=5$"):
                touch()


def test_unknown_key_and_block_size_are_refused_on_first_access(tmp_path: Path) -> None:
    with backing(tmp_path / "f") as fd:
        enc(fd).write(0, b"x")
        other = {crypto.key_id(bytes(32)): bytes(32)}
        kid = next(iter(other))
        msg = f"key id: want=0x{kid:08x} have=0x{KID:08x}"
        with pytest.raises(FormatError, match=re.escape(msg)):
            enc(fd, keys=other, kid=kid).read(0, 1)
        with pytest.raises(FormatError, match=re.escape(msg)):
            enc(fd, keys=other, kid=kid).write(0, b"y")
        with pytest.raises(FormatError, match=re.escape("block size: want=128 have=64")):
            enc(fd, 128).read(0, 1)


# --- (d) offset math ---

BLOCK_SIZES = st.sampled_from([64, 4096, bf.DEFAULT_BLOCK_SIZE, 1 << 20])


@given(bs=BLOCK_SIZES, k=st.integers(0, 10**6), d=st.integers(-2, 2))
def test_sizes_are_inverse_at_and_around_block_boundaries(bs: int, k: int, d: int) -> None:
    p = max(k * bs + d, 0)
    assert bf.plain_size(bf.backing_size(p, bs), bs) == p
    assert bf.backing_size(p + 1, bs) > bf.backing_size(p, bs)
    b = bf.backing_size(p, bs)
    for b2 in (b - 1, b, b + 1):
        assert bf.plain_size(b2, bs) <= bf.plain_size(b2 + 1, bs)


def test_sizes_exhaustively_for_small_blocks() -> None:
    valid = set()
    for p in range(20 * BS):
        b = bf.backing_size(p, BS)
        assert bf.plain_size(b, BS) == p
        valid.add(b)
    prev = 0
    for b in range(max(valid)):
        ps = bf.plain_size(b, BS)
        assert ps >= prev
        prev = ps
        if b in valid:
            assert bf.backing_size(ps, BS) == b
        else:  # a cut header, or a cut tail of 1..28 bytes (counted as one byte)
            rest = (b - bf.HEADER_SIZE) % STEP
            assert b <= bf.HEADER_SIZE or 1 <= rest <= bf.BLOCK_OVERHEAD


@given(bs=BLOCK_SIZES, off=st.integers(0, 10**9), length=st.integers(0, 10**7))
def test_block_range_covers_exactly_the_touched_blocks(bs: int, off: int, length: int) -> None:
    r = bf.block_range(off, length, bs)
    if length == 0:
        assert len(r) == 0
        return
    assert r.start * bs <= off < (r.start + 1) * bs
    assert (r.stop - 1) * bs < off + length <= r.stop * bs


def test_worked_example_of_the_docs() -> None:
    # docs/file-format.md: 10,000 bytes in 4 KiB blocks = 4096 + 4096 + 1808
    assert bf.backing_size(10_000, 4096) == 32 + 2 * (4096 + 28) + (1808 + 28) == 10_116
    assert bf.plain_size(10_116, 4096) == 10_000


# --- (e) header ---


@given(
    key_id=st.integers(0, 2**32 - 1),
    file_id=st.binary(min_size=16, max_size=16),
    shift=st.integers(bf.MIN_BLOCK_SHIFT, bf.MAX_BLOCK_SHIFT),
)
def test_header_round_trip(key_id: int, file_id: bytes, shift: int) -> None:
    h = Header(key_id=key_id, file_id=file_id, block_size=1 << shift)
    b = bf.pack_header(h)
    assert len(b) == bf.HEADER_SIZE and b[:4] == b"SLDN"
    assert bf.parse_header(b) == h


def patched(at: int, value: bytes) -> bytes:
    b = bytearray(bf.pack_header(Header(key_id=7, file_id=bytes(range(16)), block_size=4096)))
    b[at : at + len(value)] = value
    return bytes(b)


@pytest.mark.parametrize(
    "raw, message",
    [
        (patched(0, b"SLDX"), "bad magic: want=b'SLDN' have=b'SLDX'"),
        (patched(4, b"\x00\x03"), "unsupported version: want=1|2 have=3"),
        (patched(4, b"\x00\x00"), "unsupported version: want=1|2 have=0"),
        (patched(6, b"\x00\x01"), "unknown flags: want=0x0000 have=0x0001"),
        (patched(6, b"\x80\x00"), "unknown flags: want=0x0000 have=0x8000"),
        (patched(29, b"\x00\x01\x00"), "reserved bytes: want=000000 have=000100"),
        (patched(28, b"\x15"), "block size exponent: want=6..20 have=21"),
        (patched(28, b"\x05"), "block size exponent: want=6..20 have=5"),
        (patched(0, b"")[:31], "short header: want=32 bytes have=31"),
    ],
)
def test_header_refusals_say_want_and_have(raw: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=f"^{re.escape(message)}$"):
        bf.parse_header(raw)


def test_version_3_is_refused_also_when_packed_by_us() -> None:
    b = bf.pack_header(Header(key_id=1, file_id=bytes(16), block_size=4096, version=3))
    with pytest.raises(FormatError, match="want=1|2 have=3"):
        bf.parse_header(b)


@pytest.mark.parametrize("size", [0, 32, 100, 4095, 1 << 21])
def test_bad_block_sizes_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="block size"):
        bf.pack_header(Header(key_id=1, file_id=bytes(16), block_size=size))
    with pytest.raises(ValueError, match="block size"):
        EncryptedContent(KEYS, KID, size)


# --- golden file and an independent decrypter ---

# 200 bytes written by format version 1 with MASTER and 64-byte blocks: two data
# blocks, a block holding b"tail" at 150, and a short hole (8 bytes) at the end.
GOLDEN = bytes.fromhex(
    "534c444e000100001a58ea363cd753847e17a8ca92e67e65d9f96d930600000073c374bafb4868ae2a7a1a16"
    "420d98f7a8cb7c377725f1c6e54c471d13b0f086c8757c3a108dc28d4ed5cc86dffba168696471566b200ab3"
    "c3b71d13e27ce74b9d39396a7db38f33764c3e3466f0b4000322022af72c71ad0f1c9389e2b37d0e3ce0c7d8"
    "4401367ee7539d075926b026add75f3ff3f9db015e6f2abc67e76f0c85f3b34906a35ca324778194f3313d64"
    "8257c7a62a1ebd9d787d6cd23234d142395ea791e4929c3df643ac91c395531aa46a71ab76fea9797f226b45"
    "fb2c428607defde4151abc7eee9159b2c80b85ea28145fb64592b397108199af21aa134a4eb8b5a35464f15b"
    "8f43d83ef08ef27d7605c7f3b828b04ed5ee9bec3b7884f9f6097437a4dec12303abc3f7b0e713f93d010445"
    "000000000000000000000000000000000000000000000000000000000000000000000000"
)
GOLDEN_PLAIN = (
    b"SeldonFS golden file, format 1: " + bytes(range(48)) + bytes(70) + b"tail" + bytes(46)
)


# 200 bytes written by format version 2 with MASTER and 64-byte blocks: two
# data blocks (the second padded with zeros when the file grew past it), a hole,
# and a last block of 8 bytes, sealed as final.
GOLDEN_2 = bytes.fromhex(
    "534c444e000200001a58ea364b331ba9408f13c47f7504c39e3d14f9060000008ec66b584f4731d7d0368f50"
    "d2c90ee79d974d2006704b75e8033703f7c94539ec66d692b1009972755ac61f2055c3188a2ea1c68fe442c7"
    "b05ae2e7bd8ced516b0a593edc6fb57ad167d84cf116e48f4f14d2125c1b5d386eba345fd8c6bc91e191aa08"
    "931de5160c30cab13748640698965d5927e540d78cdad4ecf8129e9748118d9b1427d83f97c0500e6a4beeba"
    "106594aa048f7f5b787cd43e3dc686b597f2f6e5569f12e575ab6292300fe2ad9a0e8ab03fe0fdef00000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "69e3f0956f90ed35445753e77b0b986725a9faa702924e95eaa8556b8f3e78261c06e39b"
)
GOLDEN_2_PLAIN = b"SeldonFS golden file, format 2: " + bytes(range(48)) + bytes(112) + b"the end."


@pytest.mark.parametrize("raw, plain", [(GOLDEN, GOLDEN_PLAIN), (GOLDEN_2, GOLDEN_2_PLAIN)], ids=["v1", "v2"])
def test_golden_files_still_read(tmp_path: Path, raw: bytes, plain: bytes) -> None:
    assert KID == 0x1A58EA36
    with backing(tmp_path / "f") as fd:
        os.write(fd, raw)
        f = enc(fd)
        assert f.size() == 200 and f.read(0, 1000) == plain


def test_a_version_1_file_stays_version_1_when_written(tmp_path: Path) -> None:
    with backing(tmp_path / "f") as fd:
        os.write(fd, GOLDEN)
        f = enc(fd)
        f.write(100, b"changed")
        f.write(300, b"grown")
        f.truncate(250)
        want = (GOLDEN_PLAIN[:100] + b"changed" + GOLDEN_PLAIN[107:]).ljust(250, b"\0")
        assert os.pread(fd, 6, 0) == b"SLDN\x00\x01"
        assert independent_decrypt(os.pread(fd, 10_000, 0), MASTER) == want == enc(fd).read(0, 1000)


def independent_decrypt(backing_bytes: bytes, master: bytes) -> bytes:
    """A decrypter from docs/file-format.md alone, sharing no code with seldonfs."""
    if not backing_bytes:
        return b""
    assert len(backing_bytes) > 32, "file cut"
    header = struct.unpack(">4sHHI16sB3s", backing_bytes[:32])
    magic, version, flags, key_id, file_id, shift, reserved = header
    assert (magic, version in (1, 2), flags, reserved) == (b"SLDN", True, 0, bytes(3))
    hkdf = HKDF(hashes.SHA256(), 32, salt=None, info=b"seldonfs content\0" + file_id)
    aead, bs, out = AESGCM(hkdf.derive(master)), 1 << shift, bytearray()
    starts = range(32, len(backing_bytes), bs + 28)
    for n, at in enumerate(starts):
        blk, last = backing_bytes[at : at + bs + 28], n == len(starts) - 1
        ad = file_id + struct.pack(">QI", n, key_id)
        if blk == bytes(len(blk)):
            assert version == 1 or not last, "file cut"
            out += bytes(len(blk) - 28)
        elif version == 1:
            out += aead.decrypt(blk[:12], blk[12:], ad)
        elif last:
            out += aead.decrypt(blk[:12], blk[12:], ad + b"\x01")
        else:  # 0, or 1 where a write was interrupted
            try:
                out += aead.decrypt(blk[:12], blk[12:], ad + b"\x00")
            except InvalidTag:
                out += aead.decrypt(blk[:12], blk[12:], ad + b"\x01")
    return bytes(out)


def test_independent_decrypter_reads_golden_and_fresh_files(tmp_path: Path) -> None:
    assert independent_decrypt(GOLDEN, MASTER) == GOLDEN_PLAIN
    assert independent_decrypt(GOLDEN_2, MASTER) == GOLDEN_2_PLAIN
    with backing(tmp_path / "f") as fd:
        content = EncryptedContent(KEYS, KID)  # the default block size
        data = random.Random(6).randbytes(3 * bf.DEFAULT_BLOCK_SIZE + 1000)
        content.attach(fd).write(0, data)
        content.attach(fd).truncate(len(data) + 3 * bf.DEFAULT_BLOCK_SIZE)
        data += bytes(3 * bf.DEFAULT_BLOCK_SIZE)
        backing_bytes = os.pread(fd, 1 << 20, 0)
        assert independent_decrypt(backing_bytes, MASTER) == data
        assert content.plain_size(len(backing_bytes)) == len(data)


def test_new_files_use_the_current_key_and_old_files_still_open(tmp_path: Path) -> None:
    new = bytes(range(32, 64))
    keys = {KID: MASTER, crypto.key_id(new): new}
    with backing(tmp_path / "old") as old_fd, backing(tmp_path / "new") as new_fd:
        EncryptedContent(KEYS, KID).attach(old_fd).write(0, b"old")
        content = EncryptedContent(keys, crypto.key_id(new))
        content.attach(new_fd).write(0, b"new")
        f_old, f_new = content.attach(old_fd), content.attach(new_fd)
        assert (f_old.read(0, 9), f_new.read(0, 9)) == (b"old", b"new")
        assert (h := f_old.header()) is not None and h.key_id == KID
        assert (h := f_new.header()) is not None and h.key_id == crypto.key_id(new)


# --- (f) crypto ---


def test_wrap_unwrap_round_trip_and_refusals() -> None:
    kek, key = crypto.new_master_key(), crypto.new_master_key()
    wrapped = crypto.wrap_key(kek, key, b"label")
    assert len(wrapped) == 12 + 32 + 16 and crypto.unwrap_key(kek, wrapped, b"label") == key
    assert crypto.wrap_key(kek, key, b"label") != wrapped  # a fresh nonce each time
    with pytest.raises(crypto.WrongKey):
        crypto.unwrap_key(crypto.new_master_key(), wrapped, b"label")
    with pytest.raises(crypto.WrongKey):
        crypto.unwrap_key(kek, wrapped, b"other label")
    with pytest.raises(crypto.WrongKey):
        crypto.unwrap_key(kek, wrapped[:27], b"label")
    with pytest.raises(crypto.WrongKey):
        crypto.unwrap_key(kek, wrapped[:-1] + bytes([wrapped[-1] ^ 1]), b"label")


def test_passphrase_kek_is_deterministic_per_params() -> None:
    kek = crypto.derive_kek_from_passphrase(b"pass", FAST_KDF)
    assert len(kek) == 32 and kek == crypto.derive_kek_from_passphrase(b"pass", FAST_KDF)
    assert kek != crypto.derive_kek_from_passphrase(b"Pass", FAST_KDF)
    other_salt = crypto.KdfParams(b"t" * 16, 1, 1, 64)
    assert kek != crypto.derive_kek_from_passphrase(b"pass", other_salt)


def test_kdf_params_json_round_trip_and_defaults() -> None:
    p = crypto.default_kdf_params()
    assert len(p.salt) == 16 and p != crypto.default_kdf_params()  # a fresh salt
    assert (p.iterations, p.lanes, p.memory_cost) == (
        crypto.DEFAULT_ITERATIONS,
        crypto.DEFAULT_LANES,
        crypto.DEFAULT_MEMORY_COST,
    )
    assert crypto.KdfParams.from_json(p.to_json()) == p
    assert p.to_json()["salt"] == p.salt.hex()
    with pytest.raises(ValueError, match="memory_cost"):
        crypto.KdfParams.from_json(dict(p.to_json(), memory_cost="big"))
    with pytest.raises(ValueError, match="salt"):
        crypto.KdfParams.from_json({k: v for k, v in p.to_json().items() if k != "salt"})


def test_keyfile_kek() -> None:
    data = bytes(range(40))
    kek = crypto.derive_kek_from_keyfile(data)
    assert len(kek) == 32 and kek == crypto.derive_kek_from_keyfile(data)
    assert kek != crypto.derive_kek_from_keyfile(data[:32])
    with pytest.raises(ValueError, match="too short"):
        crypto.derive_kek_from_keyfile(bytes(31))


def test_subkeys_are_separated_by_label_and_context() -> None:
    keys = {
        crypto.subkey(MASTER, b"content", b"a"),
        crypto.subkey(MASTER, b"content", b"b"),
        crypto.subkey(MASTER, b"content"),
        crypto.subkey(MASTER, b"audit"),
        crypto.subkey(MASTER, b"contenta"),
    }
    assert len(keys) == 5 and all(len(k) == 32 for k in keys)
    with pytest.raises(ValueError):
        crypto.subkey(MASTER, b"con\0tent")


def test_master_keys_and_key_ids() -> None:
    a, b = crypto.new_master_key(), crypto.new_master_key()
    assert len(a) == 32 and a != b
    assert crypto.key_id(a) == crypto.key_id(a) != crypto.key_id(b)
    assert 0 <= crypto.key_id(a) < 2**32
    assert crypto.key_id(MASTER) == int.from_bytes(crypto.subkey(MASTER, b"key-id")[:4], "big")


def test_subkey_is_rfc5869_hkdf() -> None:
    """The cached-Extract shortcut gives exactly cryptography's HKDF."""
    for n in range(64):
        master, context = os.urandom(32), os.urandom(n)
        info = crypto.SUBKEY_PREFIX + b"content\0" + context
        assert crypto.subkey(master, b"content", context) == crypto._hkdf(master, info)
