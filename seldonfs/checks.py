"""The commit checks of written files: what they read and what they remember.

A new file's one writer leaves its plaintext here as it writes it (up to
INLINE_CHECK_BYTES a file and SHADOW_BYTES in all), so its commit check
needs no read of the store; any other way its contents can change (another
open for writing, a truncate past the limit, a failed write) drops the
copy, and so does a write past either limit: that file's check reads the
store instead. A file that passed is remembered by (mtime, size) until it
changes, so a second close without a change is not checked again.

`Checks.verdict` runs on the caller's thread; `run` touches nothing shared
and is what a worker thread calls for a large file. Damage and read errors
become an "unreadable" verdict (content.Unreadable), and a check that fails
in itself (a fault of ours, or of libmagic, on what a user wrote) a "could
not be checked" one: never an exception, which would fail the commit and
leave the file unchecked under its written name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from collections.abc import Callable
from typing import Any

from . import validation
from .config import FolderRule
from .content import ContentLayer, FileContent, Unreadable, reader
from .naming import shown

#: Files up to this size are checked on the request loop; larger ones in a
#: worker thread, so a large file never stalls other operations.
INLINE_CHECK_BYTES = 1 << 20
SHADOWS = 64  # new files whose written bytes are kept for their commit check, at most
#: The bytes those copies hold together, at most: 64 writers of 1 MiB
#: files at once would otherwise hold 64 MiB in the daemon.
SHADOW_BYTES = 16 << 20

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (mtime_ns, plaintext size): the file as it was checked


class _Shadow:
    """A kept plaintext read like a file's content."""

    __slots__ = ("buf",)

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf

    def read(self, off: int, size: int) -> bytes:
        return bytes(memoryview(self.buf)[off:off + size])  # one copy, not a slice and then a copy


class Checks:
    def __init__(self, layer: ContentLayer, extra_patterns: dict, checksum: Callable[[], Any] = hashlib.sha256) -> None:
        self.layer = layer
        self.extra_patterns = extra_patterns
        self.checksum = checksum  # validation.checksum_of: keyed in an encrypted store
        self.passed: dict[int, tuple[Key, validation.Verdict]] = {}  # ino -> (key, verdict) of its last passed check
        self.written: dict[int, bytearray] = {}  # ino -> its one writer's bytes
        self.shadowed = 0  # their lengths together

    # ------------------------------------------------------------ the written copy

    def keep_written(self, ino: int) -> None:
        self.drop_written(ino)
        if len(self.written) < SHADOWS:
            self.written[ino] = bytearray()

    def wrote(self, ino: int, off: int, data: bytes) -> None:
        """`data` reached the file at `off`: keep the copy in step."""
        buf = self.written.get(ino)
        if buf is None:
            return
        end = off + len(data)
        if not self._room(ino, buf, end):
            return
        if off > len(buf):
            buf.extend(bytes(off - len(buf)))  # a hole reads as zeros
        buf[off:end] = data

    def truncated(self, ino: int, size: int) -> None:
        buf = self.written.get(ino)
        if buf is None:
            return
        if size < len(buf):
            self.shadowed -= len(buf) - size
            del buf[size:]
        elif self._room(ino, buf, size):
            buf.extend(bytes(size - len(buf)))

    def _room(self, ino: int, buf: bytearray, end: int) -> bool:
        """Whether file `ino`'s copy `buf` may grow to `end` bytes (counted
        as it will be); if not, the copy is dropped."""
        grow = end - len(buf)
        if grow <= 0:
            return True
        if end > INLINE_CHECK_BYTES or self.shadowed + grow > SHADOW_BYTES:
            self.drop_written(ino)
            return False
        self.shadowed += grow
        return True

    def drop_written(self, ino: int) -> bytearray | None:
        """Stop keeping file `ino`'s copy (its contents may have changed
        another way, it outgrew its room, or its check takes it); returns
        the copy, None when there was none."""
        buf = self.written.pop(ino, None)
        if buf is not None:
            self.shadowed -= len(buf)
        return buf

    def forget(self, ino: int) -> None:
        self.passed.pop(ino, None)
        self.drop_written(ino)

    # ------------------------------------------------------------ checking

    def key(self, fd: int) -> Key:
        st = os.fstat(fd)
        return st.st_mtime_ns, self.layer.plain_size(st.st_size)

    def unchanged(self, ino: int, key: Key) -> validation.Verdict | None:
        """The verdict of file `ino`'s last passed check while it still has `key`."""
        last = self.passed.get(ino)
        return last[1] if last is not None and last[0] == key else None

    def source(self, ino: int, key: Key, content: FileContent | None) -> FileContent | None:
        """What the check of file `ino` reads: the written copy when it is
        whole, else `content` (None: the check attaches its descriptor)."""
        buf = self.drop_written(ino)
        if buf is not None and len(buf) == key[1]:
            return _Shadow(buf)  # type: ignore[return-value]
        return content

    def run(
        self, fd: int, rel: str, rule: FolderRule, key: Key, content: FileContent | None = None,
    ) -> validation.Verdict:
        """The checks themselves; thread-safe (they touch nothing shared)."""
        read = reader(content or self.layer.attach(fd))
        try:
            return validation.check_content(
                rule, posixpath.basename(rel), key[1], read, self.extra_patterns, self.checksum,
            )
        except Unreadable as e:
            return validation.Verdict(reasons=[f"unreadable: {e.strerror}"], size=key[1])
        except Exception as e:  # the file goes to quarantine: no way around the checks
            log.exception("%s: the checks failed", shown(rel))
            why = (str(e).splitlines() or [""])[0][:160]
            reason = f"could not be checked: {type(e).__name__}" + (f": {why}" if why else "")
            return validation.Verdict(reasons=[reason], size=key[1])

    def checksum_file(self, fd: int) -> str:
        """The file's recorded kind of checksum (as a commit records it), read through `fd`."""
        read = reader(self.layer.attach(fd))
        digest = self.checksum()
        off = 0
        while chunk := read(off, 1 << 20):
            digest.update(chunk)
            off += len(chunk)
        return digest.hexdigest()

    def passed_now(self, ino: int, key: Key, v: validation.Verdict) -> None:
        if v.ok:
            self.passed[ino] = (key, v)
