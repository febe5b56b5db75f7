"""What `Core` tells whoever watches the tree: the `Hooks` protocol.

Core owns the POSIX semantics and calls these at the moments that matter
(an entry is about to be made, a file opened, written, flushed, released,
renamed, forgotten, a name looked up and missing). This base class is the
do-nothing watcher, so Core needs no checks; the policy engine
(engine.Engine) overrides what it uses. A hook that refuses raises OSError
with the errno the caller should see.

Every hook runs inside the request, one at a time (core.py), and must not
await or call trio: over io_uring it runs on a queue thread (uring.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .content import FileContent


class Absent(FileNotFoundError):
    """The name is missing for this caller only (another user's grace
    name): the kernel must not cache its absence."""


@dataclass(slots=True)
class Track:
    """A watcher's state of one open handle; Core reads these three."""

    direct_io: bool = False  # the handle bypasses the page cache (a size limit must see every write)
    volatile: bool = False  # the new file's name lasts until it commits: the kernel must not cache it
    readable: bool = False  # set by Core: the handle's descriptor can read


@dataclass(frozen=True, slots=True)
class Moved:
    """Where a name's file went (a commit renamed it a moment ago)."""

    rel: str
    parent: int | None  # the kernel's inode of its new directory, if Core holds it
    name: bytes


class Hooks:
    def new_entry(self, parent: int, name: bytes, kind: int) -> None:
        """Before an entry of `kind` (stat.S_IFMT) is made: mkdir, mknod,
        symlink, link, and a rename's target."""

    def creating(self, parent: int, name: bytes, pid: int, uid: int) -> Track | None:
        """Before open(O_CREAT) by process `pid` of user `uid` makes a file;
        a Track follows the handle."""
        return None

    def opening(self, ino: int, flags: int, uid: int, pid: int) -> Track | None:
        """Before a regular file is opened by process `pid` of user `uid`."""
        return None

    def opened(self, ino: int, track: Track) -> None:
        """A tracked handle exists (after `creating` or `opening`)."""

    def writing(self, ino: int, track: Track, off: int, size: int, content: FileContent) -> None:
        """Before a write through a tracked handle."""

    def wrote(self, ino: int, off: int, data: bytes) -> None:
        """`data` reached the file at `off`."""

    def write_failed(self, ino: int) -> None:
        """A write failed part way: what reached the file is not known."""

    def truncating(self, ino: int, size: int, cur_size: int) -> None:
        """Before a regular file's size changes from `cur_size` to `size`."""

    def truncated(self, ino: int, uid: int) -> None:
        """After a regular file's size was set by user `uid` (and its
        times, when the same request set them)."""

    def flushed(self, ino: int, track: Track, fd: int, content: FileContent, last: bool) -> int | None:
        """close(2) of a tracked handle (FLUSH), or its RELEASE (`last`);
        returns an errno for the writer (close fails with it)."""
        return None

    def released(self, ino: int, track: Track) -> None:
        """A tracked handle is gone."""

    def moving(self, old_parent: int, old: bytes, src: os.stat_result, new_parent: int, new: bytes,
               flags: int) -> None:
        """Before `old` in `old_parent` (`src`) is renamed: whether it may leave."""

    def linking(self, ino: int, new_parent: int, new: bytes) -> None:
        """Before a hard link to `ino` is made as `new` in `new_parent`."""

    def changing(self, ino: int, what: str) -> None:
        """Before `what` of `ino` changes: "mode", "owner", "times" or an
        extended attribute's name."""

    def renaming(self, new_parent: int, new: bytes, src: os.stat_result, flags: int) -> None:
        """Before `src` is renamed to `new` in `new_parent`."""

    def arrived(self, new_parent: int, new: bytes, uid: int) -> None:
        """After a rename, a hard link or a mknod(2) of a regular file to
        `new` in `new_parent` by user `uid`."""

    def removing(self, parent: int, name: bytes) -> None:
        """Before `name` in `parent` is unlinked."""

    def moved(self, parent: int, name: bytes, uid: int) -> Moved | None:
        """A name is missing: where its file went, for a process of user
        `uid` (-1: nobody's); raise Absent when it went somewhere only
        another user may follow."""
        return None

    def forgot(self, ino: int) -> None:
        """The kernel let go of `ino`."""
