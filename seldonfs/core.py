"""Filesystem semantics over the backing tree STORE/data; no pyfuse3 here.

Every object the kernel knows (every inode it holds a lookup count on) is
pinned by an O_PATH descriptor of its backing object, as libfuse's
passthrough_ll does:

- operations on an inode act on that descriptor, so renames of it or of its
  parents never leave the table stale, and an unlinked file that is still
  open keeps working;
- operations on a name act on the parent's descriptor with ``dir_fd=`` and
  O_NOFOLLOW, so no symlink in the tree can lead outside the store;
- the inode number shown is the backing inode number (hard links share it,
  and it is stable for the life of the mount). Holding the descriptor keeps
  the backing filesystem from reusing that number while the kernel may still
  ask for it; the descriptor is closed on the last `forget`.

Errors are raised as OSError with the errno the caller should see.

Whoever watches the tree (the policy engine) is told through `hooks`
(hooks.py) at the moments that matter, and answers the control attributes
it serves through `attrs` (xattrs.py); both do nothing by default. What a
hook needs of the tree it gets through the methods under "for hooks":
where an inode is, its descriptor, the root's, and how to tell the kernel
that a name changed behind its back (`notify`, set by the FUSE glue).

Concurrency: the mount runs every method on the trio thread and none of them
awaits, so each call is atomic with respect to the others; the tables below
rely on that.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import queue
import stat as stat_m
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import _libc, xattrs
from .content import ContentDamaged, ContentLayer, FileContent
from .hooks import Hooks, Track
from .store import walk
from .virtual import MODE as VIRTUAL_MODE, Stream, Virtual

log = logging.getLogger(__name__)

ROOT_INODE = 1
_PROBED_XATTRS = {
    b"security.capability": 1,
    b"security.selinux": 2,
    b"system.posix_acl_access": 4,
    b"system.posix_acl_default": 8,
}
# Without SELinux the backing filesystem labels nothing.
_SELINUX = os.path.exists("/sys/fs/selinux/enforce")

# Flags that only matter to the kernel's open or that we emulate: the
# kernel resolves O_APPEND offsets itself (it owns i_size while the file is
# open), O_TRUNC goes through the content layer, and O_NOFOLLOW was applied
# by the kernel already (on our /proc/self/fd reopen it would fail: ELOOP).
# O_DIRECT is the kernel's business (its direct I/O path keeps the page cache
# coherent); on the backing file it would demand aligned buffers (EINVAL).
_STRIP_FLAGS = (
    os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND | os.O_TRUNC | os.O_NOFOLLOW | os.O_DIRECT
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked: from the FUSE request context."""

    uid: int
    gid: int
    pid: int
    umask: int = 0o022


@dataclass(slots=True)
class Stat:
    """Attributes as the kernel should see them (inode mapped, size plaintext)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    blksize: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    volatile: bool = False  # a name the kernel must not cache (it lasts until a commit)


@dataclass(slots=True)
class Node:
    fd: int  # O_PATH descriptor of the backing object
    nlookup: int
    fmt: int  # stat.S_IFMT of the backing object; it never changes
    # Bits of _PROBED_XATTRS known to be absent. The kernel asks for
    # security.capability before every write(2), and ls -l for two more;
    # all xattr changes come through setxattr/removexattr here, which clear
    # the bit, so a miss can be answered without a syscall.
    absent_xattrs: int = 0
    path: str | None = None  # a file's rel_path, while `Core.renames` is still `path_gen`
    path_gen: int = -1


@dataclass(slots=True)
class Handle:
    ino: int
    fd: int  # read/write descriptor of the backing file
    content: FileContent
    track: Track | None = None  # the hooks' state, for files they follow
    opener: Caller | None = None  # who opened it (release has no caller)
    written: int = 0  # bytes written through it, for the audit record
    nread: int = 0


@dataclass(slots=True)
class DirHandle:
    ino: int
    fd: int  # readable descriptor of the backing directory
    entries: list[bytes] | None = None


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class _Closer:
    """Closes the descriptors of forgotten inodes, in a thread of its own
    while closing is slow.

    The last close of an unlinked file is where the backing filesystem
    frees it: about 120 us a file on ext4 here, half of what `rm -rf`
    waited for. The requests after a FORGET need not wait for that; the
    thread holds the GIL only between closes. Where closing is cheap (tmpfs,
    files still linked), handing descriptors to the thread costs more than
    closing them, so the closes of every WINDOW decide who does the next
    WINDOW: the thread when they took more than SLOW_NS each.
    """

    WINDOW = 64
    SLOW_NS = 30_000

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.threaded = False
        self._n = self._ns = 0  # closes in this window, and their time

    def close(self, fds: list[int]) -> None:
        if not self.threaded:
            self._close(fds)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="seldonfs-closer", daemon=True)
            self._thread.start()
        self._queue.put(fds)

    def _close(self, fds: list[int]) -> None:  # on either thread; the counts are a heuristic
        t = time.perf_counter_ns()
        for fd in fds:
            try:
                os.close(fd)
            except OSError as e:  # the backing filesystem's own late error (EIO)
                log.error("closing a forgotten inode's descriptor: %s", e)
        self._ns += time.perf_counter_ns() - t
        self._n += len(fds)
        if self._n >= self.WINDOW:
            self.threaded = self._ns > self._n * self.SLOW_NS
            self._n = self._ns = 0

    def _run(self) -> None:
        while (fds := self._queue.get()) is not None:
            self._close(fds)

    def stop(self) -> None:
        """Wait for every close asked for so far."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class Core:
    def __init__(self, data_root: Path, content: ContentLayer, writeback: bool = False) -> None:
        self.content = content
        self.writeback = writeback
        self.data_root = os.fspath(data_root)
        self.hooks = Hooks()  # the policy engine, when rules apply (engine.py)
        self.attrs = xattrs.Namespace()  # control attributes and who serves them
        self.hidden: frozenset[bytes] = frozenset()  # names at the root no one sees (the private folder)
        self.virtual = Virtual([])  # read-only made-up files (virtual.py)
        # Told of every directory made: (its /proc path, path, caller's pid).
        self.on_mkdir: Callable[[str, str, int], None] = lambda proc_path, rel, pid: None
        # Tell the kernel that a name in a directory changed behind its back
        # (it drops its cached entry); set by the FUSE glue.
        self.notify: Callable[[int, bytes], None] = lambda parent, name: None
        self.vhandles: dict[int, Stream] = {}
        self._born_ns = time.time_ns()
        self.as_root = os.geteuid() == 0
        root_fd = os.open(data_root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._root_backing_ino = os.fstat(root_fd).st_ino
        self.nodes: dict[int, Node] = {ROOT_INODE: Node(root_fd, 1, stat_m.S_IFDIR)}
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._closer = _Closer()
        self._next_fh = 1
        # Paths of directories (rel_path): only a directory's rename or
        # removal changes one, and both clear this (every change of the tree
        # comes through here; the policy engine renames files only).
        self._dir_paths: dict[int, str] = {}
        self.damaged: set[tuple[int, str]] = set()  # (inode, what) already logged
        # Counts every change that can move a file to another path or take
        # its name away (renames and unlinks here, renames by the policy
        # engine, the janitor's steps): a path noted while it had one value
        # is still true while it has it (`Node.path`).
        self.renames = 0
        self.damage_count = 0
        # The descriptor budget: one O_PATH descriptor per inode the kernel
        # holds. Past `max_inodes` the oldest files no handle has open are
        # dropped from the kernel's cache (`notify`), which then forgets them
        # (0: no budget).
        self.max_inodes = 0
        self._next_relief = 0
        # Offered in the last round and not forgotten yet: skipped once (their
        # forget may be on its way), offered again after that (an invalidation
        # can miss, e.g. when it overtakes the reply that made the entry).
        self._offered: set[int] = set()

    # ------------------------------------------------------------ inode table

    def _ino(self, backing_ino: int) -> int:
        # The root must be inode 1: swap it with whatever backing inode is 1.
        if backing_ino == self._root_backing_ino:
            return ROOT_INODE
        if backing_ino == ROOT_INODE:
            return self._root_backing_ino
        return backing_ino

    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            log.warning("request for unknown inode %d", ino)
            raise OSError(errno.ESTALE, "unknown inode") from None

    def _stat(self, ino: int, st: os.stat_result) -> Stat:
        size = st.st_size
        if stat_m.S_ISREG(st.st_mode):
            size = self.content.plain_size(size)
        return Stat(
            ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev, size,
            st.st_blocks, st.st_blksize, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
        )

    def _register(self, fd: int) -> Stat:
        """Take ownership of O_PATH `fd` as one more lookup of its inode."""
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        ino = self._ino(st.st_ino)
        node = self.nodes.get(ino)
        if node is None:
            self.nodes[ino] = Node(fd, 1, stat_m.S_IFMT(st.st_mode))
            if self.max_inodes and len(self.nodes) > max(self.max_inodes, self._next_relief):
                self._relieve()
        else:
            os.close(fd)
            node.nlookup += 1
        return self._stat(ino, st)

    def _relieve(self) -> None:
        """Ask the kernel to forget the oldest files no handle has open,
        down to three quarters of the budget. Directories stay: the kernel
        keeps a directory while it knows anything inside."""
        want = len(self.nodes) - self.max_inodes * 3 // 4
        open_inos = {h.ino for h in self.handles.values()}
        parents: dict[str, int | None] = {}
        victims: list[tuple[int, bytes]] = []
        last_round, self._offered = self._offered, set()
        for ino, node in self.nodes.items():  # oldest first
            if len(victims) >= want:
                break
            if node.fmt == stat_m.S_IFDIR or ino in open_inos or ino in last_round:
                continue
            rel = self.rel_path(ino)
            if not rel:
                continue
            d, name = posixpath.split(rel)
            if d not in parents:
                parents[d] = self.ino_of_dir(d)
            if parents[d] is not None:
                victims.append((parents[d], os.fsencode(name)))
                self._offered.add(ino)
        # Forgets arrive later; meanwhile ask again only a step further on.
        self._next_relief = len(self.nodes) + max(100, self.max_inodes // 10)
        log.debug("%d inodes known: asking the kernel to forget %d", len(self.nodes), len(victims))
        for parent, name in victims:  # dropped from the kernel's cache; forgets follow
            self.notify(parent, name)

    def lookup(self, parent: int, name: bytes, pid: int = 0) -> Stat:
        """One more lookup of `name` in `parent`. A name a commit moved a
        moment ago resolves to where it went for the process that wrote it
        (hooks.moved; the result is `volatile`); hooks.Absent when it
        resolves for another process only."""
        pfd = self._node(parent).fd
        if name in (b".", b".."):
            # the kernel resolves these itself; ".." at the root would leave the store
            raise OSError(errno.ENOENT, "no dot lookups")
        if parent == ROOT_INODE and name in self.hidden:
            raise OSError(errno.ENOENT, "the filesystem's own files")
        if name in self.virtual.names:
            v = self.virtual.find(self.rel_path(parent), name)
            if v is not None:
                return self._vstat(v.ino)
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            moved = self.hooks.moved(parent, name, pid)
            if moved is None:
                raise
            found = self.lookup(moved.parent, moved.name) if moved.parent is not None else self.lookup_path(moved.rel)
            found.volatile = True  # others must not see the old name
            return found
        ino = self._ino(st.st_ino)
        node = self.nodes.get(ino)
        if node is not None:  # known: no new descriptor needed
            node.nlookup += 1
            return self._stat(ino, st)
        return self._register(os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd))

    def lookup_path(self, rel: str) -> Stat:
        """A lookup by path below the root (never following a symlink)."""
        d, name = os.path.split(rel)
        dfd = walk(self.nodes[ROOT_INODE].fd, d)
        try:
            return self._register(os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd))
        finally:
            os.close(dfd)

    def rel_path(self, ino: int) -> str | None:
        """Where inode `ino` is now, relative to the store's data/; None
        when it has no name any more, is not known, or its path is longer
        than the kernel can tell (PATH_MAX): no folder rule applies there."""
        node = self.nodes.get(ino)
        if node is None:
            return None
        if ino == ROOT_INODE:
            return ""
        if node.fmt == stat_m.S_IFDIR:
            cached = self._dir_paths.get(ino)
            if cached is not None:
                return cached
        elif node.path_gen == self.renames:
            return node.path
        try:
            path = os.readlink(_proc(node.fd))
        except OSError as e:
            if e.errno != errno.ENAMETOOLONG:
                raise
            return None  # deeper than PATH_MAX: no rule can name it
        prefix = self.data_root + "/"
        if not path.startswith(prefix) or path.endswith(" (deleted)"):
            return None
        rel = path[len(prefix):]
        if node.fmt == stat_m.S_IFDIR:
            if len(self._dir_paths) > 65536:
                self._dir_paths.clear()
            self._dir_paths[ino] = rel
        else:
            node.path, node.path_gen = rel, self.renames
        return rel

    def note_path(self, ino: int, rel: str) -> None:
        """File `ino` is at `rel` now (known from a create or a move made
        here): `rel_path` need not ask the kernel until something moves."""
        node = self.nodes.get(ino)
        if node is not None and node.fmt != stat_m.S_IFDIR:
            node.path, node.path_gen = rel, self.renames

    # ------------------------------------------------------------ for hooks

    @property
    def root_fd(self) -> int:
        """The O_PATH descriptor of data/ (store.walk starts here)."""
        return self.nodes[ROOT_INODE].fd

    def known(self, ino: int) -> bool:
        """The kernel holds `ino` (it has a descriptor here)."""
        return ino in self.nodes

    def moved(self) -> None:
        """Something was moved or removed behind the core's back (the
        engine's renames, the janitor): noted paths may be stale."""
        self.renames += 1

    def invalidate(self, rel: str) -> None:
        """Tell the kernel the name `rel` changed behind its back."""
        parent = self.ino_of_dir(posixpath.dirname(rel))
        if parent is not None:
            self.notify(parent, os.fsencode(posixpath.basename(rel)))

    def ino_of(self, backing_ino: int) -> int:
        return self._ino(backing_ino)

    def ino_of_dir(self, rel: str) -> int | None:
        """The inode number the kernel knows directory `rel` by, if it holds it."""
        try:
            fd = walk(self.nodes[ROOT_INODE].fd, rel)
        except OSError:
            return None
        try:
            ino = self._ino(os.fstat(fd).st_ino)
        finally:
            os.close(fd)
        return ino if ino in self.nodes else None

    def node_fd(self, ino: int) -> int:
        return self._node(ino).fd

    def _vstat(self, ino: int) -> Stat:
        t = time.time_ns()
        return Stat(ino, VIRTUAL_MODE, 1, 0, 0, 0, 0, 0, 4096, t, t, self._born_ns)

    def _refuse_virtual(self, parent: int, name: bytes) -> None:
        if name in self.virtual.names and self.virtual.find(self.rel_path(parent), name) is not None:
            raise OSError(errno.EACCES, "a read-only file of the filesystem")
        if parent == ROOT_INODE and name in self.hidden:
            raise OSError(errno.EACCES, "the filesystem's own files")

    def forget(self, entries: list[tuple[int, int]]) -> None:
        """The kernel dropped `n` lookups of each (ino, n): unpin what it
        no longer knows (`_Closer` closes the descriptors)."""
        fds = []
        for ino, n in entries:
            node = self.nodes.get(ino)
            if node is None or ino == ROOT_INODE:
                continue
            node.nlookup -= n
            if node.nlookup <= 0:
                del self.nodes[ino]
                self._offered.discard(ino)
                fds.append(node.fd)
                self.hooks.forgot(ino)
        if fds:
            if len(self.nodes) < self.max_inodes:
                self._next_relief = 0  # under budget again: the next crossing asks at once
            self._closer.close(fds)

    # ------------------------------------------------------------ attributes

    def getattr(self, ino: int) -> Stat:
        if ino in self.virtual.by_ino:
            return self._vstat(ino)
        return self._stat(ino, os.fstat(self._node(ino).fd))

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
    ) -> Stat:
        if ino in self.virtual.by_ino:
            raise OSError(errno.EACCES, "a read-only file of the filesystem")
        node = self._node(ino)
        handle = self.handles.get(fh) if fh is not None else None
        if size is not None and node.fmt == stat_m.S_IFREG:
            self.hooks.truncating(ino, size, self.content.plain_size(os.fstat(node.fd).st_size))
        if size is not None:
            if handle is not None:
                self._guarded(ino, handle.content.truncate, size)
            else:
                fd = self._reopen(node, os.O_RDWR)
                try:
                    self._guarded(ino, self.content.attach(fd).truncate, size)
                finally:
                    os.close(fd)
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
        if atime_ns is None and mtime_ns is None:
            return self.getattr(ino)
        st = os.fstat(node.fd)
        if atime_ns is None and mtime_ns == st.st_mtime_ns:
            # With the writeback cache the kernel sends its times back after
            # every unlink, rename and link of a file; most carry the mtime
            # the file has (ctime it cannot set anyway).
            return self._stat(ino, st)
        _libc.utimens_path_fd(node.fd, atime_ns, mtime_ns)
        return self.getattr(ino)

    def readlink(self, ino: int) -> bytes:
        return os.readlink(b"", dir_fd=self._node(ino).fd)

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(_proc(self.nodes[ROOT_INODE].fd))

    def access(self, ino: int, mode: int, caller: Caller, groups: list[int]) -> bool:
        if ino in self.virtual.by_ino:
            return not mode & (os.W_OK | os.X_OK)
        st = os.fstat(self._node(ino).fd)
        if caller.uid == 0:
            # root may do anything but execute a file no one may execute
            return not (mode & os.X_OK) or stat_m.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
        if st.st_uid == caller.uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == caller.gid or st.st_gid in groups:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return (mode & bits) == mode

    # ------------------------------------------------------------ names

    def _owner(self, pfd: int, caller: Caller) -> tuple[int, int] | None:
        """(uid, gid) a new entry should get; None when we cannot chown.
        gid -1 keeps what a set-group-ID parent passed down."""
        if not self.as_root or caller.uid == caller.gid == 0:
            return None  # root's own: it has that owner already
        gid = -1 if os.fstat(pfd).st_mode & stat_m.S_ISGID else caller.gid
        if caller.uid == 0 and gid == -1:
            return None
        return caller.uid, gid

    def _chown_new(self, pfd: int, name: bytes, owner: tuple[int, int] | None, undo) -> None:
        if owner is None:
            return
        try:
            os.chown(name, owner[0], owner[1], dir_fd=pfd, follow_symlinks=False)
        except BaseException:
            undo(name, dir_fd=pfd)
            raise

    def _check_new(self, parent: int, name: bytes, kind: int) -> None:
        if parent == ROOT_INODE and name in self.hidden:
            raise OSError(errno.EACCES, "reserved name")
        self.hooks.new_entry(parent, name, kind)

    def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller) -> Stat:
        pfd = self._node(parent).fd
        self._check_new(parent, name, stat_m.S_IFDIR)
        owner = self._owner(pfd, caller)
        os.mkdir(name, stat_m.S_IMODE(mode), dir_fd=pfd)
        self._chown_new(pfd, name, owner, os.rmdir)
        st = self.lookup(parent, name)
        self.nodes[st.ino].absent_xattrs |= self._new_absent(parent) | _PROBED_XATTRS[b"security.capability"]
        d = self.rel_path(parent)
        if d is not None:
            self.on_mkdir(_proc(self.nodes[st.ino].fd), posixpath.join(d, os.fsdecode(name)), caller.pid)
        return st

    def _new_absent(self, parent: int) -> int:
        """Probe xattrs a new entry of `parent` certainly lacks: no SELinux
        label without SELinux, and no ACLs where the parent has no default
        ACL to pass down (probed once per directory)."""
        bits = 0 if _SELINUX else _PROBED_XATTRS[b"security.selinux"]
        default_acl = _PROBED_XATTRS[b"system.posix_acl_default"]
        if not self._node(parent).absent_xattrs & default_acl:
            try:
                self.getxattr(parent, b"system.posix_acl_default")  # sets the bit if absent
            except OSError:
                pass
        if self._node(parent).absent_xattrs & default_acl:
            bits |= _PROBED_XATTRS[b"system.posix_acl_access"] | default_acl
        return bits

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, caller: Caller) -> Stat:
        pfd = self._node(parent).fd
        self._check_new(parent, name, stat_m.S_IFMT(mode))
        owner = self._owner(pfd, caller)
        os.mknod(name, mode, rdev, dir_fd=pfd)
        self._chown_new(pfd, name, owner, os.unlink)
        if owner is not None and mode & (stat_m.S_ISUID | stat_m.S_ISGID):
            os.chmod(name, stat_m.S_IMODE(mode), dir_fd=pfd, follow_symlinks=False)
        return self.lookup(parent, name)

    def symlink(self, parent: int, name: bytes, target: bytes, caller: Caller) -> Stat:
        pfd = self._node(parent).fd
        self._check_new(parent, name, stat_m.S_IFLNK)
        owner = self._owner(pfd, caller)
        os.symlink(target, name, dir_fd=pfd)
        self._chown_new(pfd, name, owner, os.unlink)
        return self.lookup(parent, name)

    def link(self, ino: int, new_parent: int, new_name: bytes) -> Stat:
        node = self._node(ino)
        pfd = self._node(new_parent).fd
        self._check_new(new_parent, new_name, node.fmt)
        # linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW) links the
        # object the descriptor pins (a symlink included), as passthrough_ll does.
        os.link(_proc(node.fd), new_name, dst_dir_fd=pfd, follow_symlinks=True)
        return self.lookup(new_parent, new_name)

    def unlink(self, parent: int, name: bytes) -> None:
        self._refuse_virtual(parent, name)
        os.unlink(name, dir_fd=self._node(parent).fd)
        self.renames += 1  # a file pinned through this name has no path now

    def rmdir(self, parent: int, name: bytes) -> None:
        os.rmdir(name, dir_fd=self._node(parent).fd)
        self._dir_paths.clear()

    def rename(
        self, old_parent: int, old: bytes, new_parent: int, new: bytes, flags: int, pid: int = 0
    ) -> None:
        """rename(2); the hooks may refuse the target or keep the file it
        replaces, and hear of the rename after it. A name a commit moved a
        moment ago is renamed from where it went, for the process that
        wrote it (a tool renames its output after close)."""
        ofd = self._node(old_parent).fd
        nfd = self._node(new_parent).fd
        self._refuse_virtual(old_parent, old)
        self._refuse_virtual(new_parent, new)
        opened = -1
        try:
            try:
                src = os.stat(old, dir_fd=ofd, follow_symlinks=False)
            except FileNotFoundError:
                moved = self.hooks.moved(old_parent, old, pid)
                if moved is None:
                    raise
                d, n = posixpath.split(moved.rel)
                ofd = opened = walk(self.root_fd, d)
                old = os.fsencode(n)
                src = os.stat(old, dir_fd=ofd, follow_symlinks=False)
            self.hooks.renaming(new_parent, new, src, flags)
            self._rename(ofd, old, nfd, new, flags)
        finally:
            if opened >= 0:
                os.close(opened)
        self.hooks.renamed(new_parent, new, pid)

    def _rename(self, ofd: int, old: bytes, nfd: int, new: bytes, flags: int) -> None:
        self.renames += 1
        if self._dir_paths:
            self._dir_paths.clear()  # cheaper than telling a file from a directory first
        if flags:
            _libc.renameat2(ofd, old, nfd, new, flags)
        else:
            os.rename(old, new, src_dir_fd=ofd, dst_dir_fd=nfd)

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
        self.handles[fh] = handle
        if track is not None:
            track.readable = self._open_flags(flags) & os.O_ACCMODE != os.O_WRONLY
            self.hooks.opened(ino, track, created)
        return fh

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
            return self._open_virtual(ino, flags)
        node = self._node(ino)
        track = None
        if node.fmt == stat_m.S_IFREG:
            track = self.hooks.opening(ino, flags, caller.pid if caller else 0)
        fd = self._reopen(node, self._open_flags(flags))
        try:
            return self._new_handle(ino, fd, flags, track, caller)
        except BaseException:
            os.close(fd)
            raise

    def _open_virtual(self, ino: int, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise OSError(errno.EACCES, "a read-only file of the filesystem")
        fh = self._next_fh
        self._next_fh += 1
        self.vhandles[fh] = Stream(self.virtual.by_ino[ino].produce)
        return fh

    def open_ino(self, ino: int, flags: int) -> int:
        return self._reopen(self._node(ino), flags)

    def create(self, parent: int, name: bytes, mode: int, flags: int, caller: Caller) -> tuple[int, Stat]:
        pfd = self._node(parent).fd
        if parent == ROOT_INODE and name in self.hidden:
            raise OSError(errno.EACCES, "reserved name")
        track = self.hooks.creating(parent, name, caller.pid)
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
            if created:
                # a new file has no capabilities; nothing else can add them
                # but setxattr here (the kernel asks before every write)
                self.nodes[st.ino].absent_xattrs |= (
                    _PROBED_XATTRS[b"security.capability"] | self._new_absent(parent)
                )
                flags &= ~os.O_TRUNC  # empty already
                d = self.rel_path(parent)
                if d is not None:
                    self.note_path(st.ino, posixpath.join(d, os.fsdecode(name)))
            st.volatile = track is not None and track.volatile
            return self._new_handle(st.ino, fd, flags, track, caller, created), st
        except BaseException:
            os.close(fd)
            raise

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
        return data

    def write(self, fh: int, off: int, data: bytes) -> int:
        h = self._handle(fh)
        if h.track is None:
            n = self._guarded(h.ino, h.content.write, off, data)
        else:
            self.hooks.writing(h.ino, h.track, off, len(data), h.content)
            try:
                n = self._guarded(h.ino, h.content.write, off, data)
            except BaseException:
                self.hooks.write_failed(h.ino)
                raise
            self.hooks.wrote(h.ino, off, data if n == len(data) else data[:n])
        h.written += n
        return n

    def _guarded(self, ino: int, fn, *args):
        """Call a content operation; damaged content becomes EIO, logged
        once per inode and cause, and counted."""
        try:
            return fn(*args)
        except ContentDamaged as e:
            self.damage_count += 1
            if (ino, str(e)) not in self.damaged:
                self.damaged.add((ino, str(e)))
                log.error("inode %d: damaged content: %s", ino, e)
            raise OSError(errno.EIO, "damaged content") from None

    def fsync(self, fh: int, datasync: bool) -> None:
        fd = self._handle(fh).fd
        os.fdatasync(fd) if datasync else os.fsync(fd)

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
            if self.virtual.by_dir:
                d.entries += list(self.virtual.by_dir.get(self.rel_path(d.ino) or "\0", {}))
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

    # ------------------------------------------------------------ xattrs

    def _xattr_path(self, ino: int) -> str | None:
        """A path for the xattr calls, or None for a symlink: following the
        magic link of a symlink could lead out of the store, and Linux
        allows no user.* attributes on symlinks anyway."""
        node = self._node(ino)
        return None if node.fmt == stat_m.S_IFLNK else _proc(node.fd)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        if ino in self.virtual.by_ino:
            raise OSError(errno.ENODATA, "no such attribute")
        node = self._node(ino)
        if xattrs.reserved(name):
            value = self.attrs.get(ino, name)
            if value is not None:
                return value
        bit = _PROBED_XATTRS.get(name, 0)
        if node.absent_xattrs & bit or node.fmt == stat_m.S_IFLNK:
            raise OSError(errno.ENODATA, "no such attribute")
        try:
            return os.getxattr(_proc(node.fd), name)
        except OSError as e:
            if e.errno == errno.ENODATA:
                node.absent_xattrs |= bit
            raise

    def listxattr(self, ino: int) -> list[bytes]:
        if ino in self.virtual.by_ino:
            return []
        path = self._xattr_path(ino)
        return [] if path is None else [os.fsencode(n) for n in os.listxattr(path)]

    def setxattr(self, ino: int, name: bytes, value: bytes, caller: Caller | None = None) -> None:
        """Set an attribute; a `user.seldon.*` one is a control attribute
        (xattrs.Namespace) or refused."""
        if xattrs.reserved(name):
            self.attrs.set(ino, name, value, caller.uid if caller else 0, caller.pid if caller else 0)
            return
        if ino in self.virtual.by_ino:
            raise OSError(errno.EACCES, "a read-only file of the filesystem")
        path = self._xattr_path(ino)
        if path is None:
            raise OSError(errno.EPERM, "no attributes on symlinks")
        self.nodes[ino].absent_xattrs &= ~_PROBED_XATTRS.get(name, 0)
        os.setxattr(path, name, value)

    def removexattr(self, ino: int, name: bytes) -> None:
        if xattrs.reserved(name):
            # The filesystem's own records (quarantine reason, origin...).
            raise OSError(errno.EPERM, "reserved attribute prefix")
        path = self._xattr_path(ino)
        if path is None:
            raise OSError(errno.ENODATA, "no such attribute")
        os.removexattr(path, name)

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        for fh in list(self.handles):
            self.release(fh)
        for fh in list(self.dirs):
            self.releasedir(fh)
        for node in self.nodes.values():
            os.close(node.fd)
        self.nodes.clear()
        self._closer.stop()
