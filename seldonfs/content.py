"""The content layer: how file contents are laid out in the backing files.

The filesystem core reads and writes file contents only through this narrow
interface (read range, write range, truncate, size), so the encrypting block
format plugs in here without touching the FUSE handlers. `PlainContent` is the
identity layout: backing bytes are the file's bytes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Protocol

from . import faults


class ContentDamaged(Exception):
    """Stored content failed authentication or is malformed. The filesystem
    answers EIO (never wrong bytes), logs it once and counts it."""


class Unreadable(OSError):
    """A file's plaintext could not be read for a check, an archive or a
    copy: its content is damaged (`damaged`) or the backing read failed.
    An OSError (EIO, or the backing errno), so whoever handles I/O errors
    handles it; `strerror` says why."""

    def __init__(self, err: int, why: str, damaged: bool) -> None:
        super().__init__(err, why)
        self.damaged = damaged


def reader(file: FileContent) -> Callable[[int, int], bytes]:
    """`file.read` for a reader of plaintext other than a FUSE request (the
    commit checks, the janitor's archive, fsck): damage and read errors
    both come out as `Unreadable`."""

    def read(off: int, size: int) -> bytes:
        try:
            return file.read(off, size)
        except ContentDamaged as e:
            raise Unreadable(errno.EIO, f"damaged content: {e}", True) from None
        except OSError as e:
            raise Unreadable(e.errno or errno.EIO, e.strerror or str(e), False) from None

    return read


class FileContent(Protocol):
    """The contents of one open backing file."""

    def read(self, off: int, size: int) -> bytes: ...
    def write(self, off: int, data: bytes) -> int: ...
    def truncate(self, size: int) -> None: ...
    def size(self) -> int: ...


class ContentLayer(Protocol):
    #: True when writing part of a file means reading some of it first
    #: (sealed blocks): the backing file is then always opened read-write.
    needs_read_to_write: bool

    def attach(self, fd: int) -> FileContent:
        """Wrap an open backing file descriptor (the caller keeps ownership)."""
        ...

    def plain_size(self, backing_size: int) -> int:
        """A file's visible size from its backing size alone (getattr reads no contents)."""
        ...

    def backing_offset(self, plain_off: int) -> int:
        """Where the bytes at `plain_off` start in the backing file (the
        block that holds them)."""
        ...

    def settle(self, path: str) -> bool:
        """Finish what a write or truncate killed halfway left in the
        backing file at `path` (a sealed file's RESIZING, blockformat.py);
        True when that changed the file."""
        ...


class PlainFile:
    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)

    def write(self, off: int, data: bytes) -> int:
        return faults.pwrite(self.fd, data, off)

    def truncate(self, size: int) -> None:
        faults.ftruncate(self.fd, size)

    def size(self) -> int:
        return os.fstat(self.fd).st_size


class PlainContent:
    needs_read_to_write = False

    def attach(self, fd: int) -> FileContent:
        return PlainFile(fd)

    def plain_size(self, backing_size: int) -> int:
        return backing_size

    def backing_offset(self, plain_off: int) -> int:
        return plain_off

    def settle(self, path: str) -> bool:
        return False  # a plain file has no blocks whose length can be caught halfway
