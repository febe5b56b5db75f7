"""pyfuse3.Operations over `core.Core`: arguments in, core call, FUSEError out.

Nothing here decides anything: a handler converts its arguments, makes one
core call and answers; the audit record and the request count are taken on
the way (`_Audited`, `_errors`). Only FUSEError may leave a handler (pyfuse3's
`Operations` docstring): OSError becomes its errno, anything else is a bug,
logged with its traceback and answered with EIO so the mount stays up.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from time import perf_counter_ns
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
from pyfuse3 import FUSEError

from .audit import AuditLog
from .config import MountConfig
from .core import Caller, Core, Handle, Stat
from .hooks import Absent
from .metrics import OpStats
from .refusals import Refusals, Refused

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _errors(fn: F) -> F:
    """Errors to errnos, every request counted (metrics.OpStats) and, under
    `mount -d`, logged: operation, its inode (or file handle), result and
    microseconds. Not debugging costs one attribute test per request."""
    op = fn.__name__
    first = fn.__code__.co_varnames[1]  # parent_inode, inode, fh or ctx
    subject = "fh" if first == "fh" else "inode" if first.endswith("inode") else ""

    @functools.wraps(fn)
    async def wrapper(self: SeldonOperations, *args: Any, **kwargs: Any) -> Any:
        stats = self.stats
        t = perf_counter_ns() if stats is not None or self.debug else 0
        result = "OK"
        try:
            return await fn(self, *args, **kwargs)
        except OSError as e:
            result = errno.errorcode.get(e.errno or errno.EIO, "EIO")
            raise FUSEError(e.errno or errno.EIO) from None
        except FUSEError as e:
            result = errno.errorcode.get(e.errno, "EIO")
            raise
        except Exception:
            result = "EIO"
            log.exception("internal error in %s", op)
            raise FUSEError(errno.EIO) from None
        finally:
            if stats is not None:
                stats.op(op, result, perf_counter_ns() - t)
            if self.debug:
                on = f" {subject} {args[0]}" if subject else ""
                log.debug("%s%s: %s, %d us", op, on, result, (perf_counter_ns() - t) // 1000)

    return wrapper  # type: ignore[return-value]


class _Audited:
    """Records one operation in the audit chain when it ends, with its
    result: `with self._audited("mkdir", ctx, parent, name):`."""

    __slots__ = ("ops", "op", "ctx", "parent", "name", "path2", "detail", "path")

    def __init__(self, ops: SeldonOperations, op: str, ctx: Any, parent: int, name: bytes | None,
                 path2: str = "", detail: str = "") -> None:
        self.ops, self.op, self.ctx, self.parent, self.name = ops, op, ctx, parent, name
        self.path2, self.detail = path2, detail
        self.path = ""  # set on exit

    def __enter__(self) -> _Audited:
        return self

    def __exit__(self, etype: Any, e: Any, tb: Any) -> None:
        audit = self.ops.audit
        if isinstance(e, Refused):  # the rule's reason, in the record and the mount's last refusals
            self.path = self.ops._path(self.parent, self.name)
            self.ops.refusals.add(self.op, self.ctx.uid, self.ctx.pid, self.path, e.errno, e.reason, self.path2)
            self.detail = f"{self.detail}: {e.reason}" if self.detail else e.reason
        if audit is None:
            return
        if e is None:
            result = "OK"
        elif isinstance(e, OSError):
            result = errno.errorcode.get(e.errno or errno.EIO, "EIO")
        elif isinstance(e, FUSEError):
            result = errno.errorcode.get(e.errno, "EIO")
        else:
            result = "EIO"
        path = self.path = self.path or self.ops._path(self.parent, self.name)
        audit.record(self.op, self.ctx.uid, self.ctx.gid, self.ctx.pid, path, self.path2, result, 0, self.detail)


_ACCESS = {os.O_RDONLY: "r", os.O_WRONLY: "w", os.O_RDWR: "rw"}  # as an open record names it


def _caller(ctx: pyfuse3.RequestContext) -> Caller:
    return Caller(ctx.uid, ctx.gid, ctx.pid, ctx.umask)


class SeldonOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_acl = False

    def __init__(self, core: Core, cfg: MountConfig, writeback: bool, audit: AuditLog | None = None,
                 cfg_metrics: bool = True, refusals: Refusals | None = None) -> None:
        super().__init__()
        self.core = core
        self.audit = audit
        self.refusals = refusals if refusals is not None else Refusals()
        self._write_refused: set[int] = set()  # handles whose refused write is recorded (once each)
        self.stats: OpStats | None = OpStats() if cfg_metrics else None  # [monitoring] metrics
        self.debug = log.isEnabledFor(logging.DEBUG)  # mount -d: every request logged
        self.cfg = cfg
        self.enable_writeback_cache = writeback
        core.notify = self._notify_gone
        core.on_damage = self._damaged
        # attributes only: this never waits for writeback (pyfuse3 warns
        # that a full invalidation can), so it is safe inside a handler
        core.invalidate_attrs = lambda ino: pyfuse3.invalidate_inode(ino, attr_only=True)

    @staticmethod
    def _notify_gone(parent: int, name: bytes) -> None:
        # async: the kernel may hold the directory's lock while we answer
        pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)

    def _damaged(self, ino: int, what: str) -> None:
        if self.audit is not None:  # who asked is not known here: the filesystem's own record
            self.audit.record("damaged", 0, 0, os.getpid(), self._path(ino), result="EIO", detail=what)

    def _path(self, parent: int, name: bytes | None = None) -> str:
        """Where an object is, for the audit record ('?' when it has no name now)."""
        d = self.core.rel_path(parent)
        if d is None:
            d = "?"
        if name is None:
            return d
        return os.fsdecode(name) if not d else f"{d}/{os.fsdecode(name)}"

    def _audited(self, op: str, ctx: Any, parent: int, name: bytes | None = None, **kw: str) -> _Audited:
        return _Audited(self, op, ctx, parent, name, **kw)

    def _entry(self, st: Stat) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = st.ino
        e.generation = 0
        e.entry_timeout = 0 if st.volatile else self.cfg.entry_timeout
        e.attr_timeout = self.cfg.attr_timeout
        e.st_mode = st.mode
        e.st_nlink = st.nlink
        e.st_uid = st.uid
        e.st_gid = st.gid
        e.st_rdev = st.rdev
        e.st_size = st.size
        e.st_blksize = st.blksize
        e.st_blocks = st.blocks
        e.st_atime_ns = st.atime_ns
        e.st_mtime_ns = st.mtime_ns
        e.st_ctime_ns = st.ctime_ns
        return e

    def _file_info(self, fh: int) -> pyfuse3.FileInfo:
        # keep_cache: every change reaches the backing files through this
        # mount, so the kernel's page cache of a file stays true across opens.
        # No direct_io even for O_DIRECT opens: the kernel's own O_DIRECT path
        # (fuse_direct_IO) bypasses and invalidates the cache correctly.
        # Except under a size limit with the writeback cache: the write that
        # crosses the limit must reach us to fail with EFBIG.
        if self.core.direct_io(fh):
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_errors
    async def lookup(self, parent_inode, name, ctx):
        try:
            return self._entry(self.core.lookup(parent_inode, name, ctx.uid))
        except Absent:
            raise  # for this process only: say so without caching it
        except FileNotFoundError:
            # inode 0 is a negative entry the kernel may cache
            e = pyfuse3.EntryAttributes()
            e.st_ino = 0
            e.entry_timeout = self.cfg.negative_timeout
            return e

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.core.forget(inode_list)

    @_errors
    async def getattr(self, inode, ctx):
        return self._entry(self.core.getattr_for(inode, ctx.pid))

    @_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        if self.audit is None:
            try:
                return self._setattr(inode, attr, fields, fh, ctx)
            except Refused as e:
                self.refusals.add("setattr", ctx.uid, ctx.pid, self._path(inode), e.errno, e.reason)
                raise
        changed = []
        if fields.update_mode:
            changed.append(f"mode={attr.st_mode & 0o7777:o}")
        if fields.update_uid:
            changed.append(f"uid={attr.st_uid}")
        if fields.update_gid:
            changed.append(f"gid={attr.st_gid}")
        if fields.update_size:
            changed.append(f"size={attr.st_size}")
        if fields.update_atime:
            changed.append("atime")
        if fields.update_mtime:
            changed.append("mtime")
        if changed == ["mtime"] and self.enable_writeback_cache:
            # With the writeback cache the kernel keeps file times itself and
            # hands them back after writes, renames and unlinks; the writes
            # are recorded. (An explicit `touch -m` looks the same: unrecorded.)
            return self._setattr(inode, attr, fields, fh, ctx)
        with self._audited("setattr", ctx, inode, detail=" ".join(changed)):
            return self._setattr(inode, attr, fields, fh, ctx)

    def _setattr(self, inode, attr, fields, fh, ctx):
        st = self.core.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            fh=fh,
            caller=_caller(ctx) if fields.update_size else None,  # who truncates keeps set-ID bits or not
        )
        return self._entry(st)

    @_errors
    async def readlink(self, inode, ctx):
        return self.core.readlink(inode)

    @_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        with self._audited("mknod", ctx, parent_inode, name):
            return self._entry(self.core.mknod(parent_inode, name, mode, rdev, _caller(ctx)))

    @_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        with self._audited("mkdir", ctx, parent_inode, name):
            return self._entry(self.core.mkdir(parent_inode, name, mode, _caller(ctx)))

    @_errors
    async def unlink(self, parent_inode, name, ctx):
        with self._audited("unlink", ctx, parent_inode, name):
            self.core.unlink(parent_inode, name)

    @_errors
    async def rmdir(self, parent_inode, name, ctx):
        with self._audited("rmdir", ctx, parent_inode, name):
            self.core.rmdir(parent_inode, name)

    @_errors
    async def symlink(self, parent_inode, name, target, ctx):
        with self._audited("symlink", ctx, parent_inode, name):
            return self._entry(self.core.symlink(parent_inode, name, target, _caller(ctx)))

    @_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        new = self._path(parent_inode_new, name_new) if self.audit is not None else ""
        with self._audited("rename", ctx, parent_inode_old, name_old, path2=new):
            self.core.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx.uid)

    @_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        new = self._path(new_parent_inode, new_name) if self.audit is not None else ""
        with self._audited("link", ctx, inode, path2=new):
            return self._entry(self.core.link(inode, new_parent_inode, new_name, ctx.uid))

    @_errors
    async def open(self, inode, flags, ctx):
        how = _ACCESS.get(flags & os.O_ACCMODE, "?")
        if flags & os.O_TRUNC and how != "r":  # the contents go, as at a truncate to 0: recorded so
            with self._audited("open", ctx, inode, detail=how + "+trunc"):
                return self._file_info(self.core.open(inode, flags, _caller(ctx)))
        try:
            return self._file_info(self.core.open(inode, flags, _caller(ctx)))
        except Refused:  # by the folder rules (write-once): recorded with the reason
            with self._audited("open", ctx, inode, detail=how):
                raise

    @_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        with self._audited("create", ctx, parent_inode, name):
            fh, st = self.core.create(parent_inode, name, mode, flags, _caller(ctx))
        return self._file_info(fh), self._entry(st)

    @_errors
    async def read(self, fh, off, size):
        data = self.core.read(fh, off, size)
        if self.stats is not None:
            self.stats.read += len(data)
        return data

    @_errors
    async def write(self, fh, off, buf):
        try:
            n = self.core.write(fh, off, buf)
        except Refused as e:
            self._refused_write(fh, e)
            raise
        if self.stats is not None:
            self.stats.written += n
        return n

    @_errors
    async def flush(self, fh):
        self.core.flush(fh)  # close(2): the moment a written file commits (engine.py)

    def _refused_write(self, fh: int, e: Refused) -> None:
        """The first refused write of a handle: recorded with its reason
        (a writer that goes on writing is not recorded again)."""
        h = self.core.handles.get(fh)
        if h is None or fh in self._write_refused:
            return
        self._write_refused.add(fh)
        who = h.opener
        uid, gid, pid = (who.uid, who.gid, who.pid) if who is not None else (-1, -1, 0)
        path = self._path(h.ino)
        self.refusals.add("write", uid, pid, path, e.errno, e.reason)
        if self.audit is not None:
            result = errno.errorcode.get(e.errno or errno.EIO, "EIO")
            self.audit.record("write", uid, gid, pid, path, result=result, detail=e.reason)

    @_errors
    async def release(self, fh):
        self._write_refused.discard(fh)
        h = self.core.release(fh)
        if self.audit is not None and h is not None and h.opener is not None:
            self._record_writes(h)
            if h.nread and self.audit.reads:
                who = h.opener
                self.audit.record("read", who.uid, who.gid, who.pid, self._path(h.ino), nbytes=h.nread)

    def record_open_writes(self) -> None:
        """At the end of the mount: the writes of handles still open (a
        SIGTERM does not wait for them to be closed), which no release
        will record."""
        for h in self.core.handles.values():
            self._record_writes(h)

    def _record_writes(self, h: Handle) -> None:
        """The bytes written through `h` since its last write record, if any
        (at release, and at fsync: durable data has a durable record)."""
        if self.audit is not None and h.written and h.opener is not None:
            who = h.opener
            self.audit.record("write", who.uid, who.gid, who.pid, self._path(h.ino), nbytes=h.written)
            h.written = 0

    @_errors
    async def fsync(self, fh, datasync):
        h = self.core.handles.get(fh)
        if h is not None:
            self._record_writes(h)  # synced with the data below
        self._synced(lambda: self.core.fsync(fh, datasync), None if h is None else h.fd)

    def _synced(self, fsync, fd: int | None = None) -> None:
        """Run `fsync` (of the backing file `fd`); the records of a change
        are durable when the change is: the audit's sync log goes out before
        the data's flush, or the audit writer syncs them meanwhile."""
        if self.audit is None:
            fsync()
        else:
            self.audit.sync(fsync, fd)

    @_errors
    async def opendir(self, inode, ctx):
        return self.core.opendir(inode)

    @_errors
    async def readdir(self, fh, start_id, token):
        for name, st, next_id in self.core.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, name, self._entry(st), next_id):
                self.core.forget([(st.ino, 1)])  # the kernel did not take it
                break

    @_errors
    async def releasedir(self, fh):
        self.core.releasedir(fh)

    @_errors
    async def fsyncdir(self, fh, datasync):
        self._synced(lambda: self.core.fsyncdir(fh, datasync))

    @_errors
    async def statfs(self, ctx):
        v = self.core.statfs()
        s = pyfuse3.StatvfsData()
        s.f_bsize = v.f_bsize
        s.f_frsize = v.f_frsize
        s.f_blocks = v.f_blocks
        s.f_bfree = v.f_bfree
        s.f_bavail = v.f_bavail
        s.f_files = v.f_files
        s.f_ffree = v.f_ffree
        s.f_favail = v.f_favail
        s.f_namemax = v.f_namemax
        return s

    @_errors
    async def setxattr(self, inode, name, value, ctx):
        with self._audited("setxattr", ctx, inode, detail=os.fsdecode(name)):
            self.core.setxattr(inode, name, value, _caller(ctx))

    @_errors
    async def getxattr(self, inode, name, ctx):
        return self.core.getxattr(inode, name)

    @_errors
    async def listxattr(self, inode, ctx):
        return self.core.listxattr(inode)

    @_errors
    async def removexattr(self, inode, name, ctx):
        with self._audited("removexattr", ctx, inode, detail=os.fsdecode(name)):
            self.core.removexattr(inode, name)

    @_errors
    async def access(self, inode, mode, ctx):
        groups = pyfuse3.get_sup_groups(ctx.pid) if ctx.uid else set()
        return self.core.access(inode, mode, _caller(ctx), list(groups))
