"""Filesystem semantics over the backing tree STORE/data; no pyfuse3 here.

`Core` is what the FUSE glue calls: the inode table (inodes.py), the
operations on names and attributes (entries.py), and here the open files
and directories: handles, reads and writes through the content layer
(plain or sealed blocks, a sequential reader's backing file asked for
ahead: readahead.py), flush and release, and the size, mode and times
of a file. Errors are raised as OSError with the errno the caller should
see.

Whoever watches the tree (the policy engine) is told through `hooks`
(hooks.py) at the moments that matter, and answers the control attributes
it serves through `attrs` (xattrs.py); both do nothing by default. What a
hook needs of the tree it gets through the methods under "for hooks" in
inodes.py: where an inode is, its descriptor, the root's, and how to tell
the kernel that a name changed behind its back (`notify`, set by the FUSE
glue).

Concurrency: the mount runs one method at a time, on the trio thread or,
over io_uring, on a queue thread holding the request loop's lock
(uring.py), and none of them awaits, so each call is atomic with respect
to the others; the tables rely on that.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import posixpath
import stat as stat_m
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import _libc, faults, readahead
from .content import ContentDamaged, ContentLayer, FileContent
from .entries import Caller, Entries, credentials, set_id_left
from .hooks import Track
from .inodes import CAPS, PROBED_XATTRS, ROOT_INODE, Node, Stat, _proc
from .naming import shown
from .readahead import Reader, ReadAhead
from .virtual import Stream

__all__ = ["ROOT_INODE", "Caller", "Core", "Handle", "Stat"]

log = logging.getLogger(__name__)

# Flags that only matter to the kernel's open or that we emulate: the
# kernel resolves O_APPEND offsets itself (it owns i_size while the file is
# open), O_TRUNC goes through the content layer, and O_NOFOLLOW was applied
# by the kernel already (on our /proc/self/fd reopen it would fail: ELOOP).
# O_DIRECT is the kernel's business (its direct I/O path keeps the page cache
# coherent); on the backing file it would demand aligned buffers (EINVAL).
_STRIP_FLAGS = (
    os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND | os.O_TRUNC | os.O_NOFOLLOW | os.O_DIRECT
)

# A write request this large is a file streamed out (the kernel's writeback
# gathers up to 1 MiB): its backing file starts for the disk at once, so the
# writer's fsync finds little left (256 MiB with dd conv=fsync: the final
# fsync 128 -> 2 ms, the whole copy 0.90x the time in 10 pairs).
WRITE_BEHIND = 512 << 10


@dataclass(slots=True)
class Handle:
    ino: int
    fd: int  # read/write descriptor of the backing file
    content: FileContent
    track: Track | None = None  # the hooks' state, for files they follow
    opener: Caller | None = None  # who opened it (release has no caller)
    written: int = 0  # bytes written through it since its last audit record
    nread: int = 0
    reader: Reader | None = None  # where its reader is, once it has read readahead.AFTER bytes


@dataclass(slots=True)
class DirHandle:
    ino: int
    fd: int  # readable descriptor of the backing directory
    entries: list[bytes] | None = None


class Core(Entries):
    def __init__(self, data_root: Path, content: ContentLayer, writeback: bool = False) -> None:
        super().__init__(data_root, content)
        self.writeback = writeback
        self.read_ahead = ReadAhead(content.backing_offset)
        self.handles: dict[int, Handle] = {}
        self.vhandles: dict[int, Stream] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self.damaged: set[tuple[int, str]] = set()  # (inode, what) already logged
        self.damage_count = 0
        # Told once per inode and cause of damaged content read (the FUSE
        # glue records it in the audit chain): (inode, what).
        self.on_damage: Callable[[int, str], None] = lambda ino, what: None
        # A write that failed for space, by inode: the pid of the handle's
        # opener, told ENOSPC at its next getattr. With the writeback cache
        # a writer's write(2) only fills the page cache; the kernel asks for
        # the attributes again (they are invalidated through
        # `invalidate_attrs`, set by the FUSE glue) before it accepts the
        # next write, and fails that write with getattr's error. Without
        # this a writer on a full store never stops (issue 17, repro 2).
        self.out_of_space: dict[int, int] = {}
        self.invalidate_attrs: Callable[[int], None] = lambda ino: None

    def open_inodes(self) -> set[int]:
        return {h.ino for h in self.handles.values()}

    # ------------------------------------------------------------ attributes

    def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        fh: int | None = None,
        caller: Caller | None = None,
    ) -> Stat:
        if ino in self.virtual.by_ino:
            raise OSError(errno.EACCES, "a read-only file of the filesystem")
        node = self._node(ino)
        handle = self.handles.get(fh) if fh is not None else None
        if uid is not None or gid is not None:
            self.hooks.changing(ino, "owner")
        if mode is not None:
            self.hooks.changing(ino, "mode")
        before = os.fstat(node.fd) if size is not None and node.fmt == stat_m.S_IFREG else None
        if before is not None:
            self.hooks.truncating(ino, size, self.content.plain_size(before.st_size))
        if size is not None:
            if handle is not None:
                self._guarded(ino, handle.content.truncate, size)
            else:
                fd = self._reopen(node, os.O_RDWR)
                try:
                    self._guarded(ino, self.content.attach(fd).truncate, size)
                finally:
                    os.close(fd)
            if caller is not None and before is not None:
                self._drop_set_id(node, before, caller)
        if uid is not None or gid is not None:
            # chown before chmod: chown by root clears set-id bits, and the
            # kernel sends the mode it wants kept along with the chown.
            _libc.fchown_path_fd(node.fd, -1 if uid is None else uid, -1 if gid is None else gid)
        if mode is not None:
            if handle is not None:
                os.fchmod(handle.fd, stat_m.S_IMODE(mode))
            elif node.fmt != stat_m.S_IFLNK:
                os.chmod(_proc(node.fd), stat_m.S_IMODE(mode))
            else:
                raise OSError(errno.EOPNOTSUPP, "symlinks have no mode")
        if atime_ns is not None or mtime_ns is not None:
            st = os.fstat(node.fd)
            if atime_ns is not None or mtime_ns != st.st_mtime_ns:
                self.hooks.changing(ino, "times")
                _libc.utimens_path_fd(node.fd, atime_ns, mtime_ns)
            elif before is None:
                # With the writeback cache the kernel sends its times back after
                # every unlink, rename and link of a file; most carry the mtime
                # the file has (ctime it cannot set anyway).
                return self._stat(ino, st)
        if before is not None:
            self.hooks.truncated(ino, -1 if caller is None else caller.uid)
        return self.getattr(ino)

    # ------------------------------------------------------------ files

    def _open_flags(self, flags: int) -> int:
        flags &= ~_STRIP_FLAGS
        if (self.writeback or self.content.needs_read_to_write) and flags & os.O_ACCMODE == os.O_WRONLY:
            # With writeback caching the kernel reads pages to fill partial
            # writes, through any handle (libfuse passthrough_hp does the
            # same); sealed blocks are read to rewrite part of one.
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return flags | os.O_CLOEXEC

    def _reopen(self, node: Node, flags: int) -> int:
        # The magic link names the pinned inode itself; it cannot be
        # redirected by a rename or a symlink planted in the tree.
        return os.open(_proc(node.fd), flags | os.O_CLOEXEC)

    def _new_handle(
        self, ino: int, fd: int, flags: int, track: Track | None = None, opener: Caller | None = None,
        created: bool = False,
    ) -> int:
        fh = self._next_fh
        self._next_fh += 1
        handle = Handle(ino, fd, self.content.attach(fd), track, opener)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            self._guarded(ino, handle.content.truncate, 0)
            self._drop_privileges(ino, fd, opener)
        self.handles[fh] = handle
        if track is not None:
            track.readable = self._open_flags(flags) & os.O_ACCMODE != os.O_WRONLY
            self.hooks.opened(ino, track, created)
        return fh

    def _drop_privileges(self, ino: int, fd: int, caller: Caller | None) -> None:
        """open(O_TRUNC) for writing: what a truncate takes from a file on a
        local disk, its set-ID bits (`_drop_set_id`) and its file
        capabilities, whoever truncates. The kernel does this for
        truncate(2) and write(2), but leaves an O_TRUNC to us (we truncate
        at open: atomic_o_trunc)."""
        node = self._node(ino)
        if caller is not None:
            self._drop_set_id(node, os.fstat(fd), caller)
        try:  # asked first (an absence is remembered): removing one needs CAP_SETFCAP even where there is none
            self.getxattr(ino, CAPS)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
        else:
            os.removexattr(fd, CAPS)
            self.lacks(ino, PROBED_XATTRS[CAPS])

    def _drop_set_id(self, node: Node, st: os.stat_result, caller: Caller) -> None:
        """`caller` truncated the file: the set-ID bits it may not keep
        (entries.set_id_left; the kernel's FUSE code drops set-group-ID
        only where group execute is set)."""
        if st.st_mode & (stat_m.S_ISUID | stat_m.S_ISGID):
            mode = set_id_left(st.st_mode, st.st_gid, *credentials(caller))
            if mode != st.st_mode:
                os.chmod(_proc(node.fd), stat_m.S_IMODE(mode))

    def mark(self, ino: int, attr: bytes, on: bool) -> None:
        """Set (`on`) or remove a stored `user.seldon.*` mark of the
        file's backing inode, whatever its name now. A failure is logged:
        the request goes on, and only a crash meets the wrong mark."""
        try:
            if on:
                os.setxattr(_proc(self.node_fd(ino)), attr, b"")
            else:
                os.removexattr(_proc(self.node_fd(ino)), attr)
        except OSError as e:
            log.error("%s: cannot %s %s: %s", shown(self.rel_path(ino) or str(ino)), "set" if on else "remove",
                      attr.decode(), e)

    def direct_io(self, fh: int) -> bool:
        """The handle bypasses the kernel's page cache (a virtual file; a
        size limit under the writeback cache, whose crossing write must
        reach us to fail with EFBIG)."""
        if fh in self.vhandles:  # made up at open, size 0: read to the end
            return True
        track = self.handles[fh].track
        return track is not None and track.direct_io

    def open(self, ino: int, flags: int, caller: Caller | None = None) -> int:
        if ino in self.virtual.by_ino:
            return self._open_virtual(ino, flags, caller.uid if caller is not None else 0)
        node = self._node(ino)
        track = None
        if node.fmt == stat_m.S_IFREG:
            track = self.hooks.opening(ino, flags, caller.uid if caller else -1, caller.pid if caller else 0)
        fd = self._reopen(node, self._open_flags(flags))
        try:
            return self._new_handle(ino, fd, flags, track, caller)
        except BaseException:
            os.close(fd)
            raise

    def _open_virtual(self, ino: int, flags: int, uid: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise OSError(errno.EACCES, "a read-only file of the filesystem")
        fh = self._next_fh
        self._next_fh += 1
        self.vhandles[fh] = Stream(self.virtual.by_ino[ino].producer(uid))
        return fh

    def open_ino(self, ino: int, flags: int) -> int:
        return self._reopen(self._node(ino), flags)

    def create(self, parent: int, name: bytes, mode: int, flags: int, caller: Caller) -> tuple[int, Stat]:
        pfd = self._node(parent).fd
        self._refuse_own(parent, name)
        track = self.hooks.creating(parent, name, caller.pid, caller.uid)
        owner = self._owner(pfd, caller)
        oflags = self._open_flags(flags) | os.O_NOFOLLOW
        try:
            # O_EXCL always: only a file made here may be chowned to the caller
            fd = os.open(name, oflags | os.O_CREAT | os.O_EXCL, stat_m.S_IMODE(mode), dir_fd=pfd)
            created = True
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            # appeared behind the kernel's back: open it as it is
            fd = os.open(name, oflags, dir_fd=pfd)
            created = False
        try:
            if created and owner is not None:
                os.fchown(fd, *owner)
                if mode & (stat_m.S_ISUID | stat_m.S_ISGID):
                    os.fchmod(fd, stat_m.S_IMODE(mode))  # chown cleared them
            st = self._register(os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd))
            self._known_as(self.nodes[st.ino], parent, name)
            if created:
                # a new file has no capabilities; nothing else can add them
                # but setxattr here (the kernel asks before every write)
                self.lacks(st.ino, PROBED_XATTRS[CAPS] | self._new_absent(parent))
                flags &= ~os.O_TRUNC  # empty already
                d = self.rel_path(parent)
                if d is not None:
                    self.note_path(st.ino, posixpath.join(d, os.fsdecode(name)))
            st.volatile = track is not None and track.volatile
            return self._new_handle(st.ino, fd, flags, track, caller, created), st
        except BaseException:
            os.close(fd)
            raise

    def writing_handles(self, ino: int) -> list[Handle]:
        """The open handles of file `ino` whose descriptor can write."""
        return [h for h in self.handles.values()
                if h.ino == ino and fcntl.fcntl(h.fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY]

    def _handle(self, fh: int) -> Handle:
        try:
            return self.handles[fh]
        except KeyError:
            raise OSError(errno.EBADF, "unknown file handle") from None

    def read(self, fh: int, off: int, size: int) -> bytes:
        if self.vhandles and fh in self.vhandles:
            return self.vhandles[fh].read(off, size)
        h = self._handle(fh)
        data = self._guarded(h.ino, h.content.read, off, size)
        h.nread += len(data)
        if h.reader is not None:
            self.read_ahead.read(h.reader, h.fd, off, len(data))
        elif h.nread >= readahead.AFTER:
            h.reader = Reader(off + len(data))
        return data

    def getattr_for(self, ino: int, pid: int) -> Stat:
        """getattr as asked by process `pid`: ENOSPC, once, for the writer
        whose write to this inode failed for space (see `out_of_space`)."""
        if self.out_of_space.get(ino) == pid:
            del self.out_of_space[ino]
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.getattr(ino)

    def write(self, fh: int, off: int, data: bytes) -> int:
        h = self._handle(fh)
        try:
            n = self._write(h, off, data)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT) and h.opener is not None and self.writeback:
                self.out_of_space[h.ino] = h.opener.pid
                self.invalidate_attrs(h.ino)
            raise
        if self.out_of_space:
            self.out_of_space.pop(h.ino, None)  # space again: nothing to tell
        if n >= WRITE_BEHIND:
            _libc.write_behind(h.fd)
        h.written += n
        return n

    def _write(self, h: Handle, off: int, data: bytes) -> int:
        if h.track is None:
            return self._guarded(h.ino, h.content.write, off, data)
        self.hooks.writing(h.ino, h.track, off, len(data), h.content)
        try:
            n = self._guarded(h.ino, h.content.write, off, data)
        except BaseException:
            self.hooks.write_failed(h.ino)
            raise
        self.hooks.wrote(h.ino, off, data if n == len(data) else data[:n])
        return n

    def _guarded(self, ino: int, fn, *args):
        """Call a content operation; damaged content becomes EIO, logged
        and audited once per inode and cause, and counted."""
        try:
            return fn(*args)
        except ContentDamaged as e:
            self.damage_count += 1
            if (ino, str(e)) not in self.damaged:
                self.damaged.add((ino, str(e)))
                log.error("inode %d: damaged content: %s", ino, e)
                self.on_damage(ino, str(e))
            raise OSError(errno.EIO, "damaged content") from None

    def fsync(self, fh: int, datasync: bool) -> None:
        fd = self._handle(fh).fd
        faults.fdatasync(fd) if datasync else faults.fsync(fd)

    def flush(self, fh: int) -> None:
        """close(2) of a descriptor: the moment a written file commits (the
        hooks' verdict is the writer's error, e.g. EACCES: rejected)."""
        h = self.handles.get(fh)
        if h is not None and h.track is not None:
            err = self.hooks.flushed(h.ino, h.track, h.fd, h.content, False)
            if err:
                raise OSError(err, os.strerror(err))

    def release(self, fh: int) -> Handle | None:
        """The last descriptor of a handle is gone; returns it (None: a
        virtual file's or an unknown one)."""
        if self.vhandles and fh in self.vhandles:
            self.vhandles.pop(fh).close()
            return None
        handle = self.handles.get(fh)
        if handle is None:
            return None
        if handle.track is not None:
            try:
                self.hooks.flushed(handle.ino, handle.track, handle.fd, handle.content, True)
            except OSError as e:  # no one to tell of an error now; the handle must still go
                log.error("inode %d: commit at release failed: %s", handle.ino, e)
        del self.handles[fh]
        os.close(handle.fd)
        if handle.track is not None:
            self.hooks.released(handle.ino, handle.track)
        return handle

    # ------------------------------------------------------------ directories

    def opendir(self, ino: int) -> int:
        node = self._node(ino)
        fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=node.fd)
        fh = self._next_fh
        self._next_fh += 1
        self.dirs[fh] = DirHandle(ino, fd)
        return fh

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Stat, int]]:
        """Entries from offset `start`, each with one lookup taken on it.

        The listing is read once when the stream starts at offset 0 and kept
        with the handle, so offsets stay valid while the directory changes
        (entries created meanwhile appear after a rewind)."""
        d = self.dirs[fh]
        if start == 0 or d.entries is None:
            d.entries = [os.fsencode(n) for n in os.listdir(d.fd)]
            if self.virtual.listing:
                rel = self.rel_path(d.ino)
                d.entries += self.virtual.listing.get(rel, []) if rel is not None else []
        hidden = self.hidden if d.ino == ROOT_INODE else ()
        for i in range(start, len(d.entries)):
            if d.entries[i] in hidden:
                continue
            try:
                st = self.lookup(d.ino, d.entries[i])
            except FileNotFoundError:
                continue  # removed since the listing was read
            yield d.entries[i], st, i + 1

    def fsyncdir(self, fh: int, datasync: bool) -> None:
        fd = self.dirs[fh].fd
        os.fdatasync(fd) if datasync else os.fsync(fd)

    def releasedir(self, fh: int) -> None:
        d = self.dirs.pop(fh, None)
        if d is not None:
            os.close(d.fd)

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        for fh in list(self.handles):
            self.release(fh)
        for fh in list(self.dirs):
            self.releasedir(fh)
        self.close_inodes()
