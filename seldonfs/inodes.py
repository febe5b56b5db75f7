"""The inode table: every object the kernel knows, pinned, and where it is.

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

`InodeTable` is the base of core.Core (entries.py adds the operations on
names and attributes, core.py those on open files and directories, as
gocryptfs splits its node type's methods over files by family). It owns
lookups, paths, the descriptor budget, and what a hook needs of the tree
(the methods under "for hooks"). Trio thread only; no method awaits.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .content import ContentDamaged, ContentLayer
from .hooks import Hooks
from .store import walk
from .virtual import Virtual

log = logging.getLogger(__name__)

ROOT_INODE = 1
CAPS = b"security.capability"  # file capabilities: the kernel asks before every write(2)
PROBED_XATTRS = {
    CAPS: 1,
    b"security.selinux": 2,
    b"system.posix_acl_access": 4,
    b"system.posix_acl_default": 8,
}


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
    # Bits of PROBED_XATTRS known to be absent. The kernel asks for
    # security.capability before every write(2), and ls -l for two more;
    # all xattr changes come through setxattr/removexattr here, which clear
    # the bit, so a miss can be answered without a syscall. Changed only
    # through InodeTable.lacks / may_have, which share them (`share_absent`).
    absent_xattrs: int = 0
    path: str | None = None  # a file's rel_path, while `Core.renames` is still `path_gen`
    path_gen: int = -1
    # The (parent, name)s the kernel was given it by (lookups, creates,
    # listings, its renames): where the kernel may hold it, which a commit's
    # move in the store does not change. At most KNAMES, the newest.
    knames: list[tuple[int, bytes]] | None = None




KNAMES = 4


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



class InodeTable:
    def __init__(self, data_root: Path, content: ContentLayer) -> None:
        self.content = content
        self.data_root = os.fspath(data_root)
        self.hooks = Hooks()  # the policy engine, when rules apply (engine.py)
        self.hidden: frozenset[bytes] = frozenset()  # names at the root no one sees (the private folder)
        self.virtual = Virtual([])  # read-only made-up files (virtual.py)
        # Tell the kernel that a name in a directory changed behind its back
        # (it drops its cached entry); set by the FUSE glue.
        self.notify: Callable[[int, bytes], None] = lambda parent, name: None
        # Told every inode's absent probed xattrs (Node.absent_xattrs) as they
        # change, 0 when it is forgotten: the io_uring queues answer those
        # misses themselves (uring.Ring.answer_absent); set by the mount.
        self.share_absent: Callable[[int, int], None] = lambda ino, bits: None
        self._born_ns = time.time_ns()
        root_fd = os.open(data_root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._root_backing_ino = os.fstat(root_fd).st_ino
        self.nodes: dict[int, Node] = {ROOT_INODE: Node(root_fd, 1, stat_m.S_IFDIR)}
        self._closer = _Closer()
        # Paths of directories (rel_path): only a directory's rename or
        # removal changes one, and both clear this (every change of the tree
        # comes through here; the policy engine renames files only).
        self._dir_paths: dict[int, str] = {}
        # Counts every change that can move a file to another path or take
        # its name away (renames and unlinks here, renames by the policy
        # engine, the janitor's steps): a path noted while it had one value
        # is still true while it has it (`Node.path`).
        self.renames = 0
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

    @staticmethod
    def _known_as(node: Node, parent: int, name: bytes) -> None:
        """The kernel got an entry for `node` as `name` in `parent`."""
        k = (parent, name)
        if node.knames is None:
            node.knames = [k]
        elif k not in node.knames:
            node.knames.append(k)
            del node.knames[:-KNAMES]

    def open_inodes(self) -> set[int]:
        """Inodes some handle has open (core.Core knows its handles)."""
        return set()

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
            if stat_m.S_ISREG(st.st_mode) and st.st_size and self._settle(fd):
                st = os.fstat(fd)
            self.nodes[ino] = Node(fd, 1, stat_m.S_IFMT(st.st_mode))
            self.share_absent(ino, 0)
            if self.max_inodes and len(self.nodes) > max(self.max_inodes, self._next_relief):
                self.relieve()
        else:
            os.close(fd)
            node.nlookup += 1
        return self._stat(ino, st)

    def _settle(self, fd: int) -> bool:
        """Before the kernel first sees a file's size: finish what a write or
        truncate killed halfway left in it (ContentLayer.settle)."""
        try:
            changed = self.content.settle(_proc(fd))
        except (OSError, ContentDamaged) as e:  # left as it is: reading it tells
            log.error("%s: cannot finish a resize cut short: %s", os.readlink(_proc(fd)), e)
            return False
        if changed:
            log.warning("%s: finished a write or truncate cut short by a kill", os.readlink(_proc(fd)))
        return changed

    def relieve(self) -> None:
        """Ask the kernel to forget the oldest files no handle has open,
        down to three quarters of the budget. Directories stay: the kernel
        keeps a directory while it knows anything inside. Called past the
        budget on a lookup, and now and then by the mount (`over_budget`):
        an invalidation the kernel missed is asked again.

        A file is dropped under every name the kernel was given it by
        (`knames`): once a commit moved it, the kernel holds it by the name
        it was written under, and by its managed name too after a listing.
        Asked by its name in the store alone, the kernel kept committed
        files, and a managed folder ran out of descriptors."""
        want = len(self.nodes) - self.max_inodes * 3 // 4
        open_inos = self.open_inodes()
        parents: dict[str, int | None] = {}
        victims: list[tuple[int, bytes]] = []
        last_round, self._offered = self._offered, set()
        for ino, node in self.nodes.items():  # oldest first
            if len(victims) >= want:
                break
            if node.fmt == stat_m.S_IFDIR or ino in open_inos or ino in last_round:
                continue
            held = [k for k in node.knames or () if k[0] in self.nodes]
            if held:
                victims += held
                self._offered.add(ino)
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

    def over_budget(self) -> bool:
        return bool(self.max_inodes) and len(self.nodes) > self.max_inodes

    def lookup(self, parent: int, name: bytes, uid: int = -1) -> Stat:
        """One more lookup of `name` in `parent` by a process of user `uid`
        (-1: the filesystem's own). A name a commit moved a moment ago
        resolves to where it went for the user that wrote it (hooks.moved;
        the result is `volatile`); hooks.Absent when it resolves for another
        user only."""
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
            moved = self.hooks.moved(parent, name, uid)
            if moved is None:
                raise
            found = self.lookup(moved.parent, moved.name) if moved.parent is not None else self.lookup_path(moved.rel)
            found.volatile = True  # others must not see the old name
            self._known_as(self.nodes[found.ino], parent, name)
            return found
        ino = self._ino(st.st_ino)
        node = self.nodes.get(ino)
        if node is not None:  # known: no new descriptor needed
            node.nlookup += 1
            self._known_as(node, parent, name)
            return self._stat(ino, st)
        found = self._register(os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd))
        self._known_as(self.nodes[found.ino], parent, name)
        return found

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

    def lacks(self, ino: int, bits: int) -> None:
        """Inode `ino` certainly lacks the probed xattrs `bits`."""
        node = self._node(ino)
        node.absent_xattrs |= bits
        self.share_absent(ino, node.absent_xattrs)

    def may_have(self, ino: int, bits: int) -> None:
        """Inode `ino` may have the probed xattrs `bits` now (before it is
        given them: no answer after this one says they are absent)."""
        node = self._node(ino)
        node.absent_xattrs &= ~bits
        self.share_absent(ino, node.absent_xattrs)

    def node_fd(self, ino: int) -> int:
        return self._node(ino).fd

    def _vstat(self, ino: int) -> Stat:
        t = time.time_ns()
        return Stat(ino, self.virtual.by_ino[ino].mode, 1, os.geteuid(), os.getegid(), 0, 0, 0, 4096, t, t, self._born_ns)

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
                self.share_absent(ino, 0)
                self._offered.discard(ino)
                fds.append(node.fd)
                self.hooks.forgot(ino)
        if fds:
            if len(self.nodes) < self.max_inodes:
                self._next_relief = 0  # under budget again: the next crossing asks at once
            self._closer.close(fds)

    def close_inodes(self) -> None:
        for node in self.nodes.values():
            os.close(node.fd)
        self.nodes.clear()
        self._closer.stop()
