"""The on-disk layout of an encrypted file: header, sealed blocks, offset math.

This module *is* the format; docs/file-format.md explains it for people who
write a decrypter. A backing file is ``header || block 0 || block 1 || ...``,
or 0 bytes (an empty file has no header). Integers are big-endian::

    header, HEADER_SIZE = 32 bytes
      off  size  field
        0     4  magic b"SLDN"
        4     2  format version u16 = 2 (1 still read and written)  (others refused)
        6     2  flags u16 = 0                     (unknown bits refused)
        8     4  key id u32: which master key      (crypto.key_id)
       12    16  file id: random; new for every new or emptied file
       28     1  block size exponent e: block size B = 1 << e, e in 6..20
       29     3  reserved, zero                    (non-zero refused)

    sealed block n, B + BLOCK_OVERHEAD (28) bytes; the last may be shorter
      off  size  field
        0    12  nonce, random for every seal
       12     p  AES-256-GCM ciphertext, p = B (last block: 1..B)
     12+p    16  GCM tag
      key:   crypto.subkey(master key of `key id`, b"content", file id)
      AD v1: file id (16) || block number n u64 || key id u32            (28 bytes)
      AD v2: file id (16) || block number n u64 || key id u32 || final u8 (29 bytes)
             final = 1 for the file's last block, 0 for every other

- Every block but the last holds exactly B plaintext bytes, so block n starts
  at HEADER_SIZE + n * (B + 28): random access needs no index.
- The AD binds each block to its file and position, so blocks cannot be
  swapped, reordered or moved between files without failing to open
  (gocryptfs: internal/contentenc/content.go, concatAD).
- Version 2's final byte authenticates the end of the file: a file cut at a
  block boundary ends in a block sealed as not final ("file cut"). A block
  before the last that is sealed as final is accepted: a write killed
  between writing its new blocks and resealing the old last block leaves
  one (see `_put` for the order of writes).
- A sealed block whose stored bytes are all zero is a *hole* and reads as
  zeros (len - 28 of them). In version 2 only if the backing filesystem
  reports its range as a hole (SEEK_DATA finds no data in the whole
  st_blksize units inside it): allocated zeros are a block overwritten with
  zeros, and damage. Only
  growing the file (truncate up, a write past the end) makes holes, by
  writing past the backing file's end, so sparse files stay sparse; a block
  of zero plaintext written by a program is sealed like any other
  (gocryptfs does the same). In version 2 the last block is never a hole:
  growing a file seals its new last block (zeros, final).
- Some changes take more than one system call, and the file does not read
  in between: a write that moves the end of the file past a partial last
  block, and a truncate that makes a block shorter, change a block's stored
  length and the backing size; a reservation that fills a hole leaves
  allocated zeros (damage) until the write over it. For that window the
  backing file carries the xattr RESIZING, "SIZE N LO:HI...": block N is
  the one whose length is in flux (-1: none), SIZE the backing size at
  which it reads as the last block, LO:HI the holes the reservation filled.
  Opened again with it still there (the writer was killed), block N is read
  as the file now stands and, if it does not open, the file is cut to SIZE
  (an append is taken back, a truncate finished); a filled hole that still
  holds only zeros is punched again. Then the xattr goes
  (`EncryptedFile._settle`).
- A tail of 1..28 bytes after the last whole sealed block cannot be a block,
  and a backing file of 1..32 bytes holds no block: the backing file was
  cut. Either counts as one more byte, so st_size covers it and reading it
  fails loudly instead of the file silently ending early.

Every damage is loud: a read raises `BlockDamaged` (a bad block), `FileCut`
(a cut file) or `FormatError` (a bad header), all `content.ContentDamaged`
(EIO), and never returns wrong bytes.

Thread safety: an `EncryptedFile` is not thread-safe. The caller serializes
calls per inode (a per-file lock around the read-modify-write of partial
blocks, as gocryptfs's open file table does), and, because the header is
cached, does not let a second EncryptedFile empty and rewrite the same
backing file while this one is in use. The module-level functions are pure.
"""

from __future__ import annotations

import errno
import os
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _libc, crypto, faults
from .content import ContentDamaged
from .xattrs import RESIZING

MAGIC = b"SLDN"
FORMAT_VERSION = 2  # what new files get
READ_VERSIONS = (1, 2)  # what opens; a version 1 file stays version 1 when written
KNOWN_FLAGS = 0x0000  # no optional features yet; a set bit means a newer writer
HEADER_SIZE = 32
FILE_ID_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16
BLOCK_OVERHEAD = NONCE_SIZE + TAG_SIZE  # 28
# 64 B blocks are allowed so property tests cross many block boundaries
# cheaply; 1 MiB bounds what a damaged header can make us allocate.
MIN_BLOCK_SHIFT = 6
MAX_BLOCK_SHIFT = 20

# Block size, measured through EncryptedFile on a 64 MiB file in the page
# cache (2 CPUs, Python 3.11, cryptography 50; best of 3, two runs), for
# block sizes                4 KiB   8 KiB  16 KiB  32 KiB  64 KiB
#   128 KiB writes, MiB/s      870    1200    1500    1830    1990
#   128 KiB reads, MiB/s      1370    1840    2430    2940    3200
#   1 MiB writes, MiB/s        990    1410    1930    2280    2620
#   8 KiB appends, MiB/s       450     530     360     310     250
#   random 4 KiB write, us      11      20      23      29      41
#   random 4 KiB read, us        8       9      11      14      20
#   new 4 KiB file, us          34      38      38      38      38
#   space overhead            0.68%   0.34%   0.17%   0.09%   0.04%
# A 4 KiB file is one short block whatever the block size (32 + 4096 + 28
# bytes). Below 16 KiB the fixed cost per block (a Python call, a nonce, an
# AD) dominates streaming; above it streaming gains ~20 % per doubling while
# every random small write and every append to a partial block re-seals the
# whole block. Against a FUSE request of ~22 us (docs/design.md) 16 KiB keeps
# a random 4 KiB write near one request's cost and streams within ~75 % of
# 64 KiB blocks. gocryptfs uses 4 KiB, but Go's per-block cost is far lower.
DEFAULT_BLOCK_SIZE = 16 * 1024

Buffer = bytes | bytearray | memoryview

_HEADER = struct.Struct(">4sHHI16sB3s")
_AD_TAIL = struct.Struct(">QI")
_FINAL = (b"\x00", b"\x01")  # version 2's last AD byte: not final, final
_ZERO_TAG = bytes(TAG_SIZE)
assert _HEADER.size == HEADER_SIZE


class FormatError(ContentDamaged):
    """The backing file is not in a format we can read: bad or unsupported
    header, unknown key, wrong block size, or (subclass) a damaged block.
    As a ContentDamaged the filesystem answers EIO."""


class FileCut(FormatError):
    """The backing file ends where no file of ours ends: "file cut to 20
    bytes", "file cut: block 3 is not the last block"."""


class BlockDamaged(FormatError):
    """One sealed block failed to open; str is "block 3: authentication failed"."""

    def __init__(self, block_no: int, cause: str) -> None:
        super().__init__(f"block {block_no}: {cause}")
        self.block_no = block_no
        self.cause = cause


@dataclass(frozen=True)
class Header:
    key_id: int
    file_id: bytes
    block_size: int
    version: int = FORMAT_VERSION


def block_shift(block_size: int) -> int:
    """e with block_size == 1 << e; ValueError unless a supported power of two."""
    e = block_size.bit_length() - 1
    if block_size & (block_size - 1) or not MIN_BLOCK_SHIFT <= e <= MAX_BLOCK_SHIFT:
        raise ValueError(
            f"block size: want a power of two in {1 << MIN_BLOCK_SHIFT}..{1 << MAX_BLOCK_SHIFT}"
            f" have={block_size}"
        )
    return e


def pack_header(h: Header) -> bytes:
    if len(h.file_id) != FILE_ID_SIZE:
        raise ValueError(f"file id: want={FILE_ID_SIZE} bytes have={len(h.file_id)}")
    shift = block_shift(h.block_size)
    return _HEADER.pack(MAGIC, h.version, 0, h.key_id, h.file_id, shift, bytes(3))


def parse_header(b: bytes) -> Header:
    """The header at the start of `b`; FormatError (want=/have=) if refused."""
    if len(b) < HEADER_SIZE:
        raise FormatError(f"short header: want={HEADER_SIZE} bytes have={len(b)}")
    magic, version, flags, key_id, file_id, shift, reserved = _HEADER.unpack_from(b)
    if magic != MAGIC:
        raise FormatError(f"bad magic: want={MAGIC!r} have={magic!r}")
    if version not in READ_VERSIONS:
        want = "|".join(map(str, READ_VERSIONS))
        raise FormatError(f"unsupported version: want={want} have={version}")
    if flags & ~KNOWN_FLAGS:
        raise FormatError(f"unknown flags: want=0x{KNOWN_FLAGS:04x} have=0x{flags:04x}")
    if reserved != bytes(3):
        raise FormatError(f"reserved bytes: want=000000 have={reserved.hex()}")
    if not MIN_BLOCK_SHIFT <= shift <= MAX_BLOCK_SHIFT:
        raise FormatError(
            f"block size exponent: want={MIN_BLOCK_SHIFT}..{MAX_BLOCK_SHIFT} have={shift}"
        )
    return Header(key_id=key_id, file_id=file_id, block_size=1 << shift, version=version)


# --- offset math (pure; see tests/test_blockformat.py for the properties) ---


def block_offset(block_no: int, block_size: int) -> int:
    """Where sealed block `block_no` starts in the backing file."""
    return HEADER_SIZE + block_no * (block_size + BLOCK_OVERHEAD)


def plain_size(backing_size: int, block_size: int) -> int:
    """The visible size of a backing file of `backing_size` bytes.

    Exact for every size `backing_size()` produces; monotonic everywhere. A
    cut file of 1..32 bytes, or a cut tail of 1..28 bytes, counts as one byte
    (see the module docstring).
    """
    if backing_size <= HEADER_SIZE:
        return min(backing_size, 1)
    full, rest = divmod(backing_size - HEADER_SIZE, block_size + BLOCK_OVERHEAD)
    return full * block_size + (max(rest - BLOCK_OVERHEAD, 1) if rest else 0)


def backing_size(plain_size: int, block_size: int) -> int:
    """The backing size of a `plain_size`-byte file; inverse of plain_size()."""
    if plain_size < 0:
        raise ValueError(f"negative size {plain_size}")
    if plain_size == 0:
        return 0
    full, rest = divmod(plain_size, block_size)
    return block_offset(full, block_size) + (rest + BLOCK_OVERHEAD if rest else 0)


def block_count(backing_size: int, block_size: int) -> int:
    """How many (whole or cut) blocks a backing file of `backing_size` bytes holds."""
    step = block_size + BLOCK_OVERHEAD
    return max(backing_size - HEADER_SIZE + step - 1, 0) // step


def block_range(off: int, length: int, block_size: int) -> range:
    """The numbers of the blocks that bytes [off, off + length) touch."""
    if length <= 0:
        return range(off // block_size, off // block_size)
    return range(off // block_size, (off + length - 1) // block_size + 1)


# --- one block ---


def _ad(h: Header, block_no: int, final: bool) -> bytes:
    ad = h.file_id + _AD_TAIL.pack(block_no, h.key_id)
    return ad if h.version == 1 else ad + _FINAL[final]


def seal_block(aead: AESGCM, h: Header, block_no: int, plaintext: Buffer, final: bool) -> bytes:
    """nonce || AES-256-GCM(plaintext, AD) || tag, with a fresh random nonce;
    `final`: block_no is the file's last block (version 2 binds it)."""
    out = bytearray(len(plaintext) + BLOCK_OVERHEAD)
    seal_block_into(aead, h, block_no, plaintext, memoryview(out), final)
    return bytes(out)


def seal_block_into(
    aead: AESGCM, h: Header, block_no: int, plaintext: Buffer, out: memoryview, final: bool
) -> None:
    """`seal_block` into `out` (exactly len(plaintext) + 28 bytes), no copies."""
    if not 1 <= len(plaintext) <= h.block_size:
        raise ValueError(f"block plaintext: want 1..{h.block_size} bytes have={len(plaintext)}")
    nonce = secrets.token_bytes(NONCE_SIZE)
    out[:NONCE_SIZE] = nonce
    aead.encrypt_into(nonce, plaintext, _ad(h, block_no, final), out[NONCE_SIZE:])


def open_block(aead: AESGCM, h: Header, block_no: int, sealed: Buffer, final: bool) -> bytes:
    """The plaintext of one sealed block (zeros if its bytes are all zero:
    whether that is a hole only the backing file can tell, see
    EncryptedFile); BlockDamaged or FileCut if it does not open."""
    out = bytearray(max(len(sealed) - BLOCK_OVERHEAD, 0))
    open_block_into(aead, h, block_no, sealed, memoryview(out), final)
    return bytes(out)


def open_block_into(
    aead: AESGCM, h: Header, block_no: int, sealed: Buffer, out: memoryview, final: bool
) -> bool:
    """`open_block` into `out` (exactly len(sealed) - 28 bytes); True when
    the stored bytes are all zero (`out` then holds zeros). On an error
    `out` holds garbage: never hand it on."""
    n = len(sealed)
    if not BLOCK_OVERHEAD < n <= h.block_size + BLOCK_OVERHEAD:
        want = f"{BLOCK_OVERHEAD + 1}..{h.block_size + BLOCK_OVERHEAD}"
        raise BlockDamaged(block_no, f"sealed length: want={want} have={n}")
    # A real tag is zero with probability 2**-128: test it before the whole block.
    if sealed[-TAG_SIZE:] == _ZERO_TAG and sealed == bytes(n):
        out[:] = bytes(n - BLOCK_OVERHEAD)
        return True
    nonce, rest = sealed[:NONCE_SIZE], sealed[NONCE_SIZE:]
    try:
        aead.decrypt_into(nonce, rest, _ad(h, block_no, final), out)
        return False
    except InvalidTag:
        if h.version == 1:
            raise BlockDamaged(block_no, "authentication failed") from None
    # Only on failure: is it sealed with the other final byte?
    try:
        aead.decrypt_into(nonce, rest, _ad(h, block_no, not final), out)
    except InvalidTag:
        raise BlockDamaged(block_no, "authentication failed") from None
    if final:
        raise FileCut(f"file cut: block {block_no} is not the last block")
    return False  # sealed final before the last block: an interrupted append (module docstring)


# --- a whole file ---


class EncryptedFile:
    """The FileContent (seldonfs/content.py) of one encrypted backing file.

    `fd` is open O_RDWR (or O_RDONLY for read-only use) and not O_APPEND
    (pwrite would ignore offsets); the caller owns it.
    `keys` maps key ids to master keys: a file opens with the key its header
    names, and new (or emptied) files are written with `current_key_id`. That
    is the hook for `seldonfs rekey`: a file whose `header().key_id` is not the
    current one is rewritten by copying it through a fresh file.
    """

    __slots__ = (
        "fd", "keys", "current_key_id", "block_size",
        "_header", "_aead", "_aeads", "_emptied", "_ino", "_gen", "_sparse", "_settled",
    )

    def __init__(
        self,
        fd: int,
        keys: dict[int, bytes],
        current_key_id: int,
        block_size: int,
        aeads: AeadCache | None = None,
        emptied: dict[int, int] | None = None,
    ) -> None:
        _check_setup(keys, current_key_id, block_size)
        self.fd = fd
        self.keys = keys
        self.current_key_id = current_key_id
        self.block_size = block_size
        self._header: Header | None = None
        self._aead: AESGCM | None = None
        self._aeads = aeads if aeads is not None else AeadCache(0)
        # Times each backing inode was emptied, shared by every open file of
        # a store: another handle may empty and rewrite the file under a new
        # file id, which makes this one's cached header stale.
        self._emptied = emptied if emptied is not None else {}
        self._ino = -1
        self._gen = 0
        self._sparse = False
        self._settled = False  # RESIZING looked for (once, at the first access)

    # --- FileContent ---

    def read(self, off: int, size: int) -> bytes:
        """Up to `size` bytes at `off`; short or empty at the end of the file."""
        _check_nonneg(off, size)
        bsize = self._backing_size()
        if self._load(bsize) is None:
            return b""
        end = min(off + size, plain_size(bsize, self.block_size))
        if end <= off:
            return b""
        blocks = block_range(off, end - off, self.block_size)
        skip = off - blocks.start * self.block_size
        return bytes(memoryview(self._read_blocks(blocks, bsize))[skip : skip + end - off])

    def write(self, off: int, data: bytes) -> int:
        """Write all of `data` at `off`; a gap past the old end becomes holes."""
        _check_nonneg(off, len(data))
        if not data:
            return 0
        bsize = self._backing_size()
        # A new file: its header goes out with its blocks (one extending
        # write less: ~20 us on ext4 per small file).
        head = self._create() if self._load(bsize) is None else b""
        old = plain_size(bsize, self.block_size)
        view = memoryview(data)
        blocks = block_range(off, len(data), self.block_size)
        plains = [self._patched(n, off, view, old, bsize) for n in blocks]
        self._put(bsize, old, max(old, off + len(data)), blocks.start, plains, head)
        return len(data)

    def truncate(self, size: int) -> None:
        _check_nonneg(size)
        if size == 0:
            # An emptied file has no header; the next write picks a new file
            # id (see _load), so no block sealed before can be replayed.
            faults.ftruncate(self.fd, 0)
            ino = os.fstat(self.fd).st_ino
            self._emptied[ino] = self._emptied.get(ino, 0) + 1
            self._header = self._aead = None
            return
        bsize = self._backing_size()
        head = self._create() if self._load(bsize) is None else b""
        old = plain_size(bsize, self.block_size)
        if size > old:
            # Only the new last block is sealed (zeros); the blocks between
            # are holes, made by writing it past the backing file's end.
            last = (size - 1) // self.block_size
            tail = bytearray(size - last * self.block_size)
            if last * self.block_size < old:  # the old last block, grown
                tail[: old - last * self.block_size] = self._read_blocks(range(last, last + 1), bsize)
            self._put(bsize, old, size, last, [tail], head)
        elif size < old:
            self._shrink(bsize, size)

    def size(self) -> int:
        return plain_size(self._backing_size(), self.block_size)

    # --- beyond the protocol ---

    def header(self) -> Header | None:
        """The file's header (parsed once, then cached); None if empty."""
        return self._load(self._backing_size())

    # --- internals ---

    def _backing_size(self) -> int:
        st = os.fstat(self.fd)
        self._ino = st.st_ino
        self._sparse = st.st_blocks * 512 < st.st_size  # it has holes (or is cut short of its blocks)
        if not self._settled:
            self._settled = True
            if st.st_size > HEADER_SIZE:
                return self._settle(st.st_size)
        return st.st_size

    def _settle(self, bsize: int) -> int:
        """Finish what a write or truncate killed inside its window left
        (module docstring, RESIZING); returns the backing size."""
        try:
            raw = os.getxattr(self.fd, RESIZING)
        except OSError:  # ENODATA: nothing left (ENOTSUP: none ever set)
            return bsize
        try:
            size, n, *rest = raw.split()
            size, n = int(size), int(n)
            holes = [tuple(map(int, r.split(b":"))) for r in rest]
        except ValueError:
            size, n, holes = -1, -1, []
        path = f"/proc/self/fd/{self.fd}"  # whether or not self.fd was opened for writing
        try:
            if HEADER_SIZE < size < bsize and 0 <= n and not self._opens(n, bsize):
                os.truncate(path, size)
            if holes:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    for lo, hi in holes:
                        hi = min(hi, os.fstat(fd).st_size)
                        if lo < hi and os.pread(fd, hi - lo, lo) == bytes(hi - lo):
                            _libc.punch_hole(fd, lo, hi - lo)
                finally:
                    os.close(fd)
            os.removexattr(self.fd, RESIZING)
        except OSError:
            pass  # e.g. a read-only store: read as it stands, settled by a later open that can
        st = os.fstat(self.fd)
        self._sparse = st.st_blocks * 512 < st.st_size
        return st.st_size

    def _opens(self, n: int, bsize: int) -> bool:
        """Whether block n of the file as it stands opens."""
        self._load(bsize)
        try:
            self._read_blocks(range(n, n + 1), bsize)
        except (BlockDamaged, FileCut):
            return False
        return True

    def _resizing(self, size: int, n: int, holes: list[tuple[int, int]]) -> bool:
        """Mark the window (module docstring); False where the backing
        filesystem keeps no user xattrs (the window then stays open)."""
        value = b" ".join([b"%d %d" % (size, n), *(b"%d:%d" % h for h in holes)])
        try:
            os.setxattr(self.fd, RESIZING, value)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return False
            raise
        return True

    def _resized(self) -> None:
        os.removexattr(self.fd, RESIZING)

    def _load(self, bsize: int) -> Header | None:
        """The cached header; None (and the cache dropped) if the file is
        empty. Reloaded when another handle emptied the file meanwhile.
        FileCut for 1..32 bytes: we never leave a header without a block."""
        if bsize == 0:
            self._header = self._aead = None
            return None
        if bsize <= HEADER_SIZE:
            raise FileCut(f"file cut to {bsize} bytes")
        gen = self._emptied.get(self._ino, 0)
        if self._header is None or gen != self._gen:
            self._gen = gen
            self._use(parse_header(os.pread(self.fd, HEADER_SIZE, 0)))
        return self._header

    def _create(self) -> bytes:
        """Start a new file id; the header, to be written with the blocks."""
        master = self.keys[self.current_key_id]
        h, self._aead = self._aeads.fresh(self.current_key_id, master, self.block_size)
        self._header = h
        return pack_header(h)

    def _use(self, h: Header) -> None:
        master = self.keys.get(h.key_id)
        if master is None:
            want = "|".join(f"0x{k:08x}" for k in sorted(self.keys))
            raise FormatError(f"key id: want={want} have=0x{h.key_id:08x}")
        if h.block_size != self.block_size:
            # plain_size() must agree with getattr, which knows only the store's size.
            raise FormatError(f"block size: want={self.block_size} have={h.block_size}")
        self._aead = self._aeads.get(h, master)
        self._header = h

    def _ready(self) -> tuple[Header, AESGCM]:
        assert self._header is not None and self._aead is not None, "header not loaded"
        return self._header, self._aead

    def _read_blocks(self, blocks: range, bsize: int) -> bytearray:
        """The plaintext of `blocks` (less where the backing file ends first)
        of the backing file of `bsize` bytes, decrypted straight into one
        buffer: about twice as fast at 128 KiB reads as joining per-block
        results (measured)."""
        h, aead = self._ready()
        step = self.block_size + BLOCK_OVERHEAD
        last = block_count(bsize, self.block_size) - 1
        at = block_offset(blocks.start, self.block_size)
        raw = memoryview(os.pread(self.fd, len(blocks) * step, at))
        sealed = [raw[i : i + step] for i in range(0, len(raw), step)]
        out = bytearray(sum(max(len(s) - BLOCK_OVERHEAD, 0) for s in sealed))
        view, pos = memoryview(out), 0
        for n, s in zip(blocks, sealed):
            size = len(s) - BLOCK_OVERHEAD
            if open_block_into(aead, h, n, s, view[pos : pos + size], n == last) and h.version > 1:
                self._check_hole(n, len(s), n == last)
            pos += size
        return out

    def _check_hole(self, n: int, length: int, last: bool) -> None:
        """Block n of a version 2 file stores only zeros: fine if the backing
        file has a hole there and it is not the last block (always sealed).
        (Version 1 takes any zeros for a hole: its stores may have been
        copied without their holes.)"""
        at = block_offset(n, self.block_size)
        if _allocated(self.fd, at, at + length):
            raise BlockDamaged(n, "zeroed (allocated zeros, not a hole)")
        if last:
            raise FileCut(f"file cut: block {n}, the last, is a hole")

    def _put(
        self, bsize: int, old: int, new: int, first: int, plains: list[Buffer], head: bytes
    ) -> None:
        """Seal `plains` as blocks first, first + 1, ... of a file growing
        from `old` to `new` plain bytes (backing size `bsize`), with the
        header `head` of a new file.

        If the last block moves on, the old one is resealed as not final (and
        padded to B bytes). The writes go: space reserved for those that
        overwrite old bytes and grow the file or may fill a hole, then the
        blocks past the old last one and the header (a new file's in the
        same pwrite), then the old blocks (the old last one among them). Up
        to the last step nothing old is touched: a failure (ENOSPC, EIO)
        cuts the backing file back to `bsize` bytes, so the file is as
        before (and a new one empty, never a header alone). So a write
        wholly past the old end (a new file, an append of whole blocks)
        needs no reservation."""
        h, aead = self._ready()
        bs, last = self.block_size, (new - 1) // self.block_size
        oldlast = (old - 1) // bs if old else -1
        split = min(max(oldlast + 1 - first, 0), len(plains))  # plains[:split] are old blocks
        at = block_offset(first + split, bs)
        lead = head if head and at == len(head) else b""  # a new file's header and first blocks: one pwrite
        pieces = [(at - len(lead), self._sealed(h, aead, first + split, plains[split:], last, lead))]
        if head and not lead:
            pieces.append((0, head))
        pieces.append((block_offset(first, bs), self._sealed(h, aead, first, plains[:split], last)))
        if last > oldlast >= 0 and first > oldlast:  # the old last block, untouched, is last no more
            plain = self._read_blocks(range(oldlast, oldlast + 1), bsize)
            if len(plain) < bs or h.version > 1:  # else unchanged in version 1
                plain.extend(bytes(bs - len(plain)))
                pieces.append((block_offset(oldlast, bs), self._sealed(h, aead, oldlast, [plain], last)))
        pieces = [(at, buf) for at, buf in pieces if buf]
        holes: list[tuple[int, int]] = []  # holes inside the file the reservation fills
        # Space first: a full disk fails at the reservation, before a byte is
        # overwritten (docs/file-format.md, "Writing on a full disk"). A file
        # with holes may have one in a range; overwriting allocated bytes
        # needs no new space, and what fails past the end is cut off again.
        reserve = []
        for at, buf in pieces:
            if at < bsize and (at + len(buf) > bsize or self._sparse):
                if self._sparse:
                    found = _holes(self.fd, at, min(at + len(buf), bsize))
                    if not found and at + len(buf) <= bsize:
                        continue
                    holes += found
                reserve.append((at, len(buf)))
        # A partial old last block is rewritten whole after the blocks past
        # it, and a filled hole holds allocated zeros until it is written: in
        # between neither reads (module docstring, RESIZING).
        moves = last > oldlast >= 0 and bsize < block_offset(oldlast + 1, bs)
        marked = (moves or bool(holes)) and self._resizing(bsize, oldlast if moves else -1, holes)
        try:
            for at, length in reserve:
                faults.reserve(self.fd, at, length)
            for at, buf in pieces:
                self._pwrite_all(buf, at)
        except OSError:
            faults.ftruncate(self.fd, bsize)
            for lo, hi in holes:  # allocated zeros would read as damage: holes again
                _libc.punch_hole(self.fd, lo, hi - lo)
            if marked:
                self._resized()
            raise
        if marked:
            self._resized()

    def _sealed(
        self, h: Header, aead: AESGCM, first: int, plains: list[Buffer], final: int, lead: bytes = b""
    ) -> bytearray:
        """Blocks first, first + 1, ... sealed into one buffer after `lead`
        (`final`: the number of the file's last block). `seal_block_into`
        unrolled, with one getrandom for all the nonces: a quarter faster at
        1 MiB."""
        out = bytearray(len(lead) + sum(len(p) for p in plains) + BLOCK_OVERHEAD * len(plains))
        out[: len(lead)] = lead
        view, pos = memoryview(out), len(lead)
        nonces = secrets.token_bytes(NONCE_SIZE * len(plains))
        encrypt_into = aead.encrypt_into
        for i, p in enumerate(plains):
            if not 1 <= len(p) <= h.block_size:
                raise ValueError(f"block plaintext: want 1..{h.block_size} bytes have={len(p)}")
            n, nonce = first + i, nonces[i * NONCE_SIZE : (i + 1) * NONCE_SIZE]
            mid = pos + NONCE_SIZE
            view[pos:mid] = nonce
            pos = mid + len(p) + TAG_SIZE
            encrypt_into(nonce, p, _ad(h, n, n == final), view[mid:pos])
        return out

    def _patched(self, n: int, off: int, data: memoryview, old: int, bsize: int) -> Buffer:
        """Block n's new plaintext with its share of `data` (written at `off`)
        in place; a partly covered block is read and patched, unless it
        starts at or past the old end `old` (nothing there to read)."""
        start = n * self.block_size
        lo = max(off - start, 0)
        piece = data[max(start - off, 0) : start + self.block_size - off]
        if lo == 0 and (len(piece) == self.block_size or start >= old):
            return piece
        plain = self._read_blocks(range(n, n + 1), bsize) if start < old else bytearray()
        plain.extend(bytes(max(lo - len(plain), 0)))
        plain[lo : lo + len(piece)] = piece
        return plain

    def _shrink(self, bsize: int, new: int) -> None:
        """Cut to `new` (> 0) plain bytes: reseal the new last block as
        final (in version 1 only when it gets shorter), then cut the backing
        file. Killed in between, the file reads as before where the block
        kept its length (a block before the last may be sealed final); where
        it got shorter, RESIZING has the cut finished at the next open."""
        h, aead = self._ready()
        n, rest = divmod(new - 1, self.block_size)
        if not (h.version > 1 or rest + 1 < self.block_size):
            faults.ftruncate(self.fd, backing_size(new, self.block_size))
            return
        old = self._read_blocks(range(n, n + 1), bsize)
        buf = self._sealed(h, aead, n, [old[: rest + 1]], n)
        at = block_offset(n, self.block_size)
        cut = backing_size(new, self.block_size)
        holes = _holes(self.fd, at, at + len(buf)) if self._sparse else []  # else it is allocated, and as long
        # Shorter than what the file spans there, block n does not read until
        # the cut, nor a filled hole until the write (module docstring, RESIZING).
        shorter = at + len(buf) < min(bsize, block_offset(n + 1, self.block_size))
        marked = (shorter or bool(holes)) and self._resizing(cut, n if shorter else -1, holes)
        written = False
        try:
            if holes:
                faults.reserve(self.fd, at, len(buf))
            self._pwrite_all(buf, at)
            written = True
            faults.ftruncate(self.fd, cut)
        except OSError:
            if written:
                # A shorter block now sits where the longer one was, which the
                # file still spans: put that one back, or it reads as damage.
                oldlast = (plain_size(bsize, self.block_size) - 1) // self.block_size
                self._pwrite_all(self._sealed(h, aead, n, [old], oldlast), at)
            else:
                for lo, hi in holes:  # allocated zeros would read as damage: holes again
                    _libc.punch_hole(self.fd, lo, hi - lo)
            if marked:
                self._resized()
            raise
        if marked:  # not in a `finally`: left by anything but a failed call, it is the next open's to settle
            self._resized()

    def _pwrite_all(self, buf: Buffer, off: int) -> None:
        view = memoryview(buf)
        while view:
            done = faults.pwrite(self.fd, view, off)
            view, off = view[done:], off + done


class AeadCache:
    """The AEADs of recently used files by (key id, file id): deriving a
    file's key (HKDF) and setting up AES-GCM cost ~7 us, about a third of a
    FUSE request, on every open. Oldest out first once `size` is reached.

    New files take their id and AEAD from `fresh`, made FRESH_BATCH at a
    time: in one loop the derivation costs a fifth of what it costs as one
    step of a request among many (measured: 4 us against 20 us, the CPU's
    caches cold from everything else a request runs)."""

    FRESH_BATCH = 32

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._map: OrderedDict[tuple[int, bytes], AESGCM] = OrderedDict()
        self._fresh: list[tuple[Header, AESGCM]] = []
        self._fresh_for: tuple[int, bytes, int] | None = None  # key id, master, block size

    def fresh(self, key_id: int, master: bytes, block_size: int) -> tuple[Header, AESGCM]:
        """A new file's header (random file id) and its AEAD."""
        if self._fresh_for != (key_id, master, block_size):
            self._fresh, self._fresh_for = [], (key_id, master, block_size)
        if not self._fresh:
            for fid in _split(secrets.token_bytes(FILE_ID_SIZE * self.FRESH_BATCH), FILE_ID_SIZE):
                h = Header(key_id, fid, block_size)
                self._fresh.append((h, AESGCM(crypto.subkey(master, b"content", fid))))
        h, aead = self._fresh.pop()
        self._put((key_id, h.file_id), aead)
        return h, aead

    def get(self, h: Header, master: bytes) -> AESGCM:
        k = (h.key_id, h.file_id)
        aead = self._map.get(k)
        if aead is None:
            aead = AESGCM(crypto.subkey(master, b"content", h.file_id))
            self._put(k, aead)
        return aead

    def _put(self, k: tuple[int, bytes], aead: AESGCM) -> None:
        if self.size:
            if len(self._map) >= self.size:
                self._map.popitem(last=False)
            self._map[k] = aead


def _allocated(fd: int, start: int, end: int) -> bool:
    """Whether the backing filesystem stores data in [start, end): asked
    (SEEK_DATA) for the whole st_blksize units inside it, as the units at
    its edges may be shared with the sealed blocks beside it. A range with
    no whole unit inside counts as a hole."""
    unit = os.fstat(fd).st_blksize or 4096
    lo, hi = -(-start // unit) * unit, end // unit * unit
    if lo >= hi:
        return False
    try:
        return os.lseek(fd, lo, os.SEEK_DATA) < hi
    except OSError as e:
        if e.errno == errno.ENXIO:  # no data from lo to the end of the file
            return False
        raise


def _holes(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The holes of [start, end) as the backing filesystem reports them."""
    out, off = [], start
    while off < end:
        try:
            lo = os.lseek(fd, off, os.SEEK_HOLE)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        if lo >= end:
            break
        try:
            hi = min(os.lseek(fd, lo, os.SEEK_DATA), end)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: a hole to the end of the file
                raise
            hi = end
        out.append((lo, hi))
        off = hi
    return out


def _split(b: bytes, n: int) -> list[bytes]:
    return [b[i : i + n] for i in range(0, len(b), n)]


class EncryptedContent:
    """The ContentLayer (seldonfs/content.py) of an encrypted store."""

    # A partial block is read, patched and resealed: a write-only open needs
    # read access to its backing file.
    needs_read_to_write = True

    def __init__(
        self, keys: dict[int, bytes], current_key_id: int, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> None:
        _check_setup(keys, current_key_id, block_size)
        self.keys = keys
        self.current_key_id = current_key_id
        self.block_size = block_size
        self.aeads = AeadCache()
        self.emptied: dict[int, int] = {}

    def attach(self, fd: int) -> EncryptedFile:
        return EncryptedFile(
            fd, self.keys, self.current_key_id, self.block_size, self.aeads, self.emptied
        )

    def plain_size(self, backing_size: int) -> int:
        return plain_size(backing_size, self.block_size)

    def backing_offset(self, plain_off: int) -> int:
        return block_offset(plain_off // self.block_size, self.block_size)

    def settle(self, path: str) -> bool:
        try:
            os.getxattr(path, RESIZING)
        except OSError:  # ENODATA: the usual
            return False
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            before = os.fstat(fd).st_size
            return self.attach(fd)._backing_size() != before
        finally:
            os.close(fd)


def _check_setup(keys: dict[int, bytes], current_key_id: int, block_size: int) -> None:
    block_shift(block_size)
    if current_key_id not in keys:
        raise ValueError(f"current key id 0x{current_key_id:08x} not among the keys")


def _check_nonneg(*values: int) -> None:
    if any(v < 0 for v in values):
        raise ValueError(f"negative offset or size: {values}")
