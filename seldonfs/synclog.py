"""The audit's sync log: an fsync's records on disk without the writer.

An fsync through the mount promises the change and its audit records on
disk. Asking the writer process for that costs a wake-up of the other vCPU
and a second device flush beside the data's own. Instead the daemon
appends every batch it hands to the writer to this log as well (a pwrite
into the page cache), and at an fsync writes the log's new bytes out with
`sync_file_range` (no flush) before the data's fdatasync, whose flush of
the disk's cache then covers both.

That holds only where the log needs no metadata written: it is a file of
`SIZE` bytes, written in full and synced when made, and overwritten in
place. It also needs the data's fdatasync to flush the disk's cache even
with nothing else to write, which ext4 and XFS do; `usable()` says whether
the store is on one of them, with its data on the same filesystem.

A frame is MAGIC, the log's id, its number, the payload's length, an
HMAC-SHA256 under a key derived from the audit key, and the payload (the
pickled batch, as the pipe carries it). The first frame of a log holds the
last record number stored when the log began. Reading stops at the first
frame that does not verify: a torn last frame, a stale frame of the log
before, or bytes nobody with the key wrote (never unpickled).

The records of the log that the writer never stored are stored by it
when its daemon died, by the next writer when one died, and by the next
mount or offline command after a power loss (audit.py: `unstored`). A log
starts afresh only when everything in the one before is stored and synced.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
import struct
from pathlib import Path

from . import _libc, faults
from .store import sync_dir

NAME = "audit.synclog"
SIZE = 4 << 20
MAGIC = b"SFSL"
_FRAME = struct.Struct("<4s8sII")  # magic, log id, frame number, payload length; then the MAC
_MAC = 32
_LABEL = b"seldonfs audit sync log"


def usable(root: Path) -> bool:
    """The store's log and data are on one ext4 or XFS filesystem."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            kind = _libc.fs_type(fd)
        finally:
            os.close(fd)
        same = os.stat(root).st_dev == os.stat(root / "data").st_dev
    except OSError:
        return False
    return same and kind in (_libc.EXT4_SUPER_MAGIC, _libc.XFS_SUPER_MAGIC)


class SyncLog:
    """One store's log, open: frames appended at `end`, written out up to
    `written`; one log (`id`) from `start()` until the next."""

    def __init__(self, root: Path, key: bytes, readonly: bool = False) -> None:
        """Open the log, made (written in full and synced) if it is not
        whole; OSError when it cannot be. `readonly`: only to `read()` it,
        as it is (FileNotFoundError when there is none)."""
        self.key = hmac.digest(key, _LABEL, "sha256")
        path = root / NAME
        flags = os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT
        self.fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        try:
            if not readonly and os.fstat(self.fd).st_size != SIZE:
                zeros = bytes(1 << 20)
                for off in range(0, SIZE, len(zeros)):
                    pwrite_all(self.fd, zeros, off)
                os.ftruncate(self.fd, SIZE)
                os.fsync(self.fd)
                sync_dir(root)
        except OSError:
            os.close(self.fd)
            raise
        self.id = b""
        self.number = 0
        self.end = 0  # where the next frame goes
        self.written = 0  # the bytes before this are written out

    def read(self) -> tuple[int, list[tuple]]:
        """(the record number stored when the log began, the records of its
        frames in order); (0, []) for a log with no frame that verifies."""
        base, items = 0, []
        off, number, log_id = 0, 0, None
        while off + _FRAME.size + _MAC <= SIZE:
            head = os.pread(self.fd, _FRAME.size + _MAC, off)
            if len(head) < _FRAME.size + _MAC:
                break  # a log cut short: not ours
            magic, fid, n, length = _FRAME.unpack_from(head)
            end = off + _FRAME.size + _MAC + length
            if magic != MAGIC or n != number or (log_id is not None and fid != log_id) or end > SIZE:
                break
            payload = os.pread(self.fd, length, off + _FRAME.size + _MAC)
            if not hmac.compare_digest(head[_FRAME.size:], self._mac(head[:_FRAME.size], payload)):
                break
            obj = pickle.loads(payload)  # verified: written by a daemon holding the key
            if n == 0:
                base, log_id = obj, fid
            else:
                items += obj
            off, number = end, number + 1
        return base, items

    def start(self, base: int) -> None:
        """Begin a new log (its frames replace the old one's, which must all
        be stored): its first frame names `base`, the last record stored."""
        self.id, self.number, self.end, self.written = secrets.token_bytes(8), 0, 0, 0
        if not self.append(pickle.dumps(base)):
            raise AssertionError("a log too small for its first frame")

    def append(self, payload: bytes) -> bool:
        """Add a frame (into the page cache); False when the log is full."""
        head = _FRAME.pack(MAGIC, self.id, self.number, len(payload))
        frame = head + self._mac(head, payload) + payload
        if self.end + len(frame) > SIZE:
            return False
        pwrite_all(self.fd, frame, self.end)
        self.end += len(frame)
        self.number += 1
        return True

    @property
    def pending(self) -> bool:
        """Frames were added since the last write-out."""
        return self.written < self.end

    def write_out(self) -> None:
        """The frames added since the last write-out on the disk, unflushed:
        durable once something flushes the disk's cache after this."""
        if self.written < self.end:
            faults.write_out(self.fd, self.written, self.end - self.written)
            self.written = self.end

    def close(self) -> None:
        os.close(self.fd)

    def _mac(self, head: bytes, payload: bytes) -> bytes:
        h = hmac.new(self.key, head, hashlib.sha256)
        h.update(payload)
        return h.digest()


def pwrite_all(fd: int, data: bytes, off: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, off)
        view, off = view[done:], off + done
