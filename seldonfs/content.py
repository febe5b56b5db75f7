"""The content layer: how file contents are laid out in the backing files.

The filesystem core reads and writes file contents only through this narrow
interface (read range, write range, truncate, size), so the encrypting block
format plugs in here without touching the FUSE handlers. `PlainContent` is the
identity layout: backing bytes are the file's bytes.
"""

from __future__ import annotations

import os
from typing import Protocol


class ContentDamaged(Exception):
    """Stored content failed authentication or is malformed. The filesystem
    answers EIO (never wrong bytes), logs it once and counts it."""


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


class PlainFile:
    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)

    def write(self, off: int, data: bytes) -> int:
        return os.pwrite(self.fd, data, off)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def size(self) -> int:
        return os.fstat(self.fd).st_size


class PlainContent:
    needs_read_to_write = False

    def attach(self, fd: int) -> FileContent:
        return PlainFile(fd)

    def plain_size(self, backing_size: int) -> int:
        return backing_size
