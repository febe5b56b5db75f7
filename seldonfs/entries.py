"""Operations on names and attributes: make, link, remove and rename
entries; attributes, permissions and extended attributes.

`Entries` extends the inode table (inodes.py) and is extended by core.Core
(open files and directories). It asks its `hooks` before an entry is made
and around a rename, refuses the hidden and the virtual names, and hands a
`user.seldon.*` attribute to `attrs` (xattrs.Namespace). Trio thread only;
no method awaits.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat as stat_m
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import _libc, xattrs
from .content import ContentLayer
from .inodes import CAPS, PROBED_XATTRS, ROOT_INODE, InodeTable, Stat, _proc
from .store import walk

# Without SELinux the backing filesystem labels nothing.
_SELINUX = os.path.exists("/sys/fs/selinux/enforce")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked: from the FUSE request context."""

    uid: int
    gid: int
    pid: int
    umask: int = 0o022


CAP_FSETID = 4  # linux/capability.h


def set_id_left(mode: int, file_gid: int, privileged: bool, groups: frozenset[int]) -> int:
    """The mode a regular file keeps when a caller truncates or writes it:
    without CAP_FSETID (`privileged`) it loses set-user-ID, and set-group-ID
    where group execute is set or it is not in the file's group (`groups`),
    as the kernel's setattr_should_drop_suidgid decides for a local disk."""
    if privileged or not stat_m.S_ISREG(mode):
        return mode
    if mode & stat_m.S_ISGID and (mode & stat_m.S_IXGRP or file_gid not in groups):
        mode &= ~stat_m.S_ISGID
    return mode & ~stat_m.S_ISUID


def credentials(caller: Caller) -> tuple[bool, frozenset[int]]:
    """Whether `caller` holds CAP_FSETID, and its groups, from
    /proc/<pid>/status; a process gone by then counts as root if its uid
    is 0, in its own group only."""
    privileged, groups = caller.uid == 0, {caller.gid}
    try:
        with open(f"/proc/{caller.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    privileged = bool(int(line.split()[1], 16) >> CAP_FSETID & 1)
                elif line.startswith(b"Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return privileged, frozenset(groups)


class Entries(InodeTable):
    def __init__(self, data_root: Path, content: ContentLayer) -> None:
        super().__init__(data_root, content)
        self.attrs = xattrs.Namespace()  # control attributes and who serves them
        # Told of every directory made: (its /proc path, path, caller's pid).
        self.on_mkdir: Callable[[str, str, int], None] = lambda proc_path, rel, pid: None
        self.as_root = os.geteuid() == 0

    def _refuse_own(self, parent: int, name: bytes) -> None:
        """EACCES for a name that is the filesystem's own: the hidden
        private folder at the root, or a virtual file."""
        if parent == ROOT_INODE and name in self.hidden:
            raise OSError(errno.EACCES, "the filesystem's own files")
        if name in self.virtual.names and self.virtual.find(self.rel_path(parent), name) is not None:
            raise OSError(errno.EACCES, "a read-only file of the filesystem")

    # ------------------------------------------------------------ attributes

    def getattr(self, ino: int) -> Stat:
        if ino in self.virtual.by_ino:
            return self._vstat(ino)
        return self._stat(ino, os.fstat(self._node(ino).fd))

    def readlink(self, ino: int) -> bytes:
        return os.readlink(b"", dir_fd=self._node(ino).fd)

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(_proc(self.nodes[ROOT_INODE].fd))

    def access(self, ino: int, mode: int, caller: Caller, groups: list[int]) -> bool:
        if ino in self.virtual.by_ino:
            anyone = self.virtual.by_ino[ino].for_reader is not None
            return (anyone or caller.uid in (0, os.geteuid())) and not mode & (os.W_OK | os.X_OK)
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
        self._refuse_own(parent, name)
        self.hooks.new_entry(parent, name, kind)

    def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller) -> Stat:
        pfd = self._node(parent).fd
        self._check_new(parent, name, stat_m.S_IFDIR)
        owner = self._owner(pfd, caller)
        os.mkdir(name, stat_m.S_IMODE(mode), dir_fd=pfd)
        self._chown_new(pfd, name, owner, os.rmdir)
        st = self.lookup(parent, name)
        self.lacks(st.ino, self._new_absent(parent) | PROBED_XATTRS[CAPS])
        d = self.rel_path(parent)
        if d is not None:
            self.on_mkdir(_proc(self.nodes[st.ino].fd), posixpath.join(d, os.fsdecode(name)), caller.pid)
        return st

    def _new_absent(self, parent: int) -> int:
        """Probe xattrs a new entry of `parent` certainly lacks: no SELinux
        label without SELinux, and no ACLs where the parent has no default
        ACL to pass down (probed once per directory)."""
        bits = 0 if _SELINUX else PROBED_XATTRS[b"security.selinux"]
        default_acl = PROBED_XATTRS[b"system.posix_acl_default"]
        if not self._node(parent).absent_xattrs & default_acl:
            try:
                self.getxattr(parent, b"system.posix_acl_default")  # sets the bit if absent
            except OSError:
                pass
        if self._node(parent).absent_xattrs & default_acl:
            bits |= PROBED_XATTRS[b"system.posix_acl_access"] | default_acl
        return bits

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, caller: Caller) -> Stat:
        pfd = self._node(parent).fd
        self._check_new(parent, name, stat_m.S_IFMT(mode))
        owner = self._owner(pfd, caller)
        os.mknod(name, mode, rdev, dir_fd=pfd)
        self._chown_new(pfd, name, owner, os.unlink)
        if owner is not None and mode & (stat_m.S_ISUID | stat_m.S_ISGID):
            os.chmod(name, stat_m.S_IMODE(mode), dir_fd=pfd, follow_symlinks=False)
        st = self.lookup(parent, name)
        if stat_m.S_ISREG(mode):  # a file no close will commit (mknod(2) of S_IFREG)
            self.hooks.arrived(parent, name, caller.uid)
        return st

    def symlink(self, parent: int, name: bytes, target: bytes, caller: Caller) -> Stat:
        pfd = self._node(parent).fd
        self._check_new(parent, name, stat_m.S_IFLNK)
        owner = self._owner(pfd, caller)
        os.symlink(target, name, dir_fd=pfd)
        self._chown_new(pfd, name, owner, os.unlink)
        return self.lookup(parent, name)

    def link(self, ino: int, new_parent: int, new_name: bytes, uid: int = -1) -> Stat:
        node = self._node(ino)
        pfd = self._node(new_parent).fd
        self._check_new(new_parent, new_name, node.fmt)
        self.hooks.linking(ino, new_parent, new_name)
        # linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW) links the
        # object the descriptor pins (a symlink included), as passthrough_ll does.
        os.link(_proc(node.fd), new_name, dst_dir_fd=pfd, follow_symlinks=True)
        st = self.lookup(new_parent, new_name)
        # A commit may move the new name at once; the kernel is told (the
        # engine invalidates the name) and keeps the inode it has.
        self.hooks.arrived(new_parent, new_name, uid)
        return st

    def unlink(self, parent: int, name: bytes) -> None:
        self._refuse_own(parent, name)
        self.hooks.removing(parent, name)
        os.unlink(name, dir_fd=self._node(parent).fd)
        self.renames += 1  # a file pinned through this name has no path now

    def rmdir(self, parent: int, name: bytes) -> None:
        os.rmdir(name, dir_fd=self._node(parent).fd)
        self._dir_paths.clear()

    def rename(
        self, old_parent: int, old: bytes, new_parent: int, new: bytes, flags: int, uid: int = -1
    ) -> None:
        """rename(2); the hooks may refuse the target or keep the file it
        replaces, and hear of the rename after it. A name a commit moved a
        moment ago is renamed from where it went, for the user that wrote
        it (a tool renames its output after close)."""
        ofd = self._node(old_parent).fd
        nfd = self._node(new_parent).fd
        held_as = (old_parent, old)  # the kernel's name for it, whatever the store's is
        self._refuse_own(old_parent, old)
        self._refuse_own(new_parent, new)
        opened = -1
        try:
            try:
                src = os.stat(old, dir_fd=ofd, follow_symlinks=False)
            except FileNotFoundError:
                moved = self.hooks.moved(old_parent, old, uid)
                if moved is None:
                    raise
                d, n = posixpath.split(moved.rel)
                ofd = opened = walk(self.root_fd, d)
                old = os.fsencode(n)
                src = os.stat(old, dir_fd=ofd, follow_symlinks=False)
            self.hooks.moving(old_parent, old, src, new_parent, new, flags)
            self.hooks.renaming(new_parent, new, src, flags)
            self._rename(ofd, old, nfd, new, flags)
        finally:
            if opened >= 0:
                os.close(opened)
        moved_node = self.nodes.get(self._ino(src.st_ino))
        if moved_node is not None:  # the kernel moves its entry with it
            if moved_node.knames is not None and held_as in moved_node.knames:
                moved_node.knames.remove(held_as)
            self._known_as(moved_node, new_parent, new)
        self.hooks.arrived(new_parent, new, uid)
        if flags & _libc.RENAME_EXCHANGE:  # the target went the other way
            self.hooks.arrived(old_parent, old, uid)

    def _rename(self, ofd: int, old: bytes, nfd: int, new: bytes, flags: int) -> None:
        self.renames += 1
        if self._dir_paths:
            self._dir_paths.clear()  # cheaper than telling a file from a directory first
        if flags:
            _libc.renameat2(ofd, old, nfd, new, flags)
        else:
            os.rename(old, new, src_dir_fd=ofd, dst_dir_fd=nfd)

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
        if name.startswith(xattrs.PREFIX):  # inline: the kernel asks before every write(2)
            value = self.attrs.get(ino, name)
            if value is not None:
                return value
        bit = PROBED_XATTRS.get(name, 0)
        if node.absent_xattrs & bit or node.fmt == stat_m.S_IFLNK:
            raise OSError(errno.ENODATA, "no such attribute")
        try:
            return os.getxattr(_proc(node.fd), name)
        except OSError as e:
            if e.errno == errno.ENODATA:
                self.lacks(ino, bit)
            raise

    def listxattr(self, ino: int) -> list[bytes]:
        if ino in self.virtual.by_ino:
            return []
        path = self._xattr_path(ino)
        return [] if path is None else [os.fsencode(n) for n in os.listxattr(path)]

    def setxattr(self, ino: int, name: bytes, value: bytes, caller: Caller | None = None) -> None:
        """Set an attribute; a `user.seldon.*` one is a control attribute
        (xattrs.Namespace) or refused."""
        if ino in self.nodes:
            self.hooks.changing(ino, os.fsdecode(name))
        if xattrs.reserved(name):
            self.attrs.set(ino, name, value, caller.uid if caller else 0, caller.pid if caller else 0)
            return
        if ino in self.virtual.by_ino:
            raise OSError(errno.EACCES, "a read-only file of the filesystem")
        path = self._xattr_path(ino)
        if path is None:
            raise OSError(errno.EPERM, "no attributes on symlinks")
        self.may_have(ino, PROBED_XATTRS.get(name, 0))
        os.setxattr(path, name, value)

    def removexattr(self, ino: int, name: bytes) -> None:
        if ino in self.nodes:
            self.hooks.changing(ino, os.fsdecode(name))
        if xattrs.reserved(name):
            # The filesystem's own records (quarantine reason, origin...).
            raise OSError(errno.EPERM, "reserved attribute prefix")
        path = self._xattr_path(ino)
        if path is None:
            raise OSError(errno.ENODATA, "no such attribute")
        os.removexattr(path, name)
