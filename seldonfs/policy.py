"""The policy engine: folder rules applied at the syscall level.

`Core` calls the hooks below at the moment a fact becomes knowable; the
decisions themselves are pure functions in rules.py (which rule),
naming.py (which name) and validation.py (which verdict). This module
carries them out on the store: renames at commit, quarantine, routing,
versions, the space floor, the grace period of pre-commit names.

Commit: a file commits when the last handle that wrote it is flushed
(close(2), so the writer sees a rejection and `ls` after close sees the
final name) or when it is renamed into a folder with a commit rule.

Concurrency: every hook runs on the trio thread. Only `commit` awaits, and
only to read a large file's contents in a worker thread; it re-reads the
file's path afterwards, since the tree may have changed meanwhile.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import posixpath
import re
import secrets
import stat as stat_m
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import trio

from . import _libc, validation
from .audit import AuditLog
from .catalog import Catalog
from .config import FolderRule
from .content import FileContent
from .naming import Template, clean_job, is_temporary
from .rules import Rules
from .store import walk

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger(__name__)

#: Hidden top-level folder of data/ for the filesystem's own files.
PRIVATE_DIR = ".seldon"
VERSIONS_DIR = PRIVATE_DIR + "/versions"
#: Files up to this size are checked on the request loop; larger ones in a
#: worker thread, so a large file never stalls other operations.
INLINE_CHECK_BYTES = 1 << 20
SHADOWS = 64  # new files whose written bytes are kept for their commit check, at most
SEQ_BLOCK = 100  # sequence numbers reserved per catalog write
JOB_CACHE_S = 2.0
ROWS_FLUSH_S = 0.5  # file records wait at most this long for their catalog batch
STATVFS_TTL = 0.1
XATTR_REASON = b"user.seldon.reason"
XATTR_ORIGIN = b"user.seldon.origin"
XATTR_JOB = b"user.seldon.job"  # the writer may set this one
XATTR_VERSIONS = b"user.seldon.versions"  # virtual, read: JSON list
XATTR_RESTORE = b"user.seldon.restore"  # virtual, write: version number
XATTR_RELEASE = b"user.seldon.release"  # virtual, write: b"" or b"force"
XATTR_VERSION_OF = b"user.seldon.version"  # on a stored version: [path, saved_ns, cause]


@dataclass(slots=True)
class Tracked:
    """Policy state of one open handle."""

    rule: FolderRule | None
    commits: bool  # a commit rule applies to the folder it was opened in
    pid: int = 0  # the process that opened it: its follow-ups get the grace period
    job: str | None = None  # from the writer's environment at create
    created: bool = False
    done: bool = False  # committed at an earlier flush
    version_on_write: bool = False  # keep the old content before the first write
    floor: bool = False  # the space floor applies
    direct_io: bool = False
    readable: bool = False  # its descriptor can read (commit checks through it)
    parent: int = 0  # the kernel's inode of the directory it was created in


Source = tuple[int, FileContent]  # an open handle's descriptor and content


@dataclass(slots=True)
class Grace:
    rel: str  # where the file went
    ino: int
    pid: int
    until: float
    parent: int | None = None  # the kernel's inode of its new directory, if it holds it
    name: bytes = b""  # its new name


class _Scope:
    """Directories opened by `Policy._walk` stay open until the outermost
    scope ends (a plain class: cheaper than contextlib on every commit)."""

    __slots__ = ("policy",)

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __enter__(self) -> None:
        self.policy._depth += 1

    def __exit__(self, *exc: object) -> None:
        p = self.policy
        p._depth -= 1
        if p._depth == 0 and p._dirfds:
            for d, fd in p._dirfds.items():
                if d not in p._lent:
                    os.close(fd)
            p._dirfds.clear()
            p._lent.clear()


def _scoped(method):
    """Run a Policy method in a scope of opened directories (see `_walk`)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._scope():
            return method(self, *args, **kwargs)

    return wrapper


def _commits(rule: FolderRule | None) -> bool:
    return rule is not None and bool(rule.naming or rule.validates or rule.route)


def job_from_environ(pid: int) -> str | None:
    """SELDON_JOB_ID from the environment process `pid` started with."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    for item in env.split(b"\0"):
        if item.startswith(b"SELDON_JOB_ID="):
            return item[len(b"SELDON_JOB_ID="):].decode("utf-8", "replace")
    return None


class Policy:
    def __init__(self, core: Core, rules: Rules, catalog: Catalog, writeback: bool) -> None:
        self.core = core
        self.rules = rules
        self.catalog = catalog
        self.writeback = writeback
        self.pol = rules.policy
        self.templates = {r.naming: Template(r.naming) for r in rules.cfg.folders if r.naming}
        self.quarantine_dirs = {self.pol.quarantine} | {
            r.quarantine for r in rules.cfg.folders if r.quarantine
        }
        self.extra_patterns = validation.compile_patterns(self.pol.patterns)
        self.writers: dict[int, int] = {}  # ino -> open tracked handles
        self.dirty: set[int] = set()  # inodes written since their last commit
        self.checked: dict[int, tuple[int, int]] = {}  # ino -> (mtime_ns, size) at last passed check
        # ino -> the plaintext of a new file as its one writer wrote it (up
        # to INLINE_CHECK_BYTES): its commit check reads this instead of the
        # store. Any other way the contents can change (another open for
        # writing, a truncate, a failed write) drops it.
        self.shadow: dict[int, bytearray] = {}
        self.grace: OrderedDict[tuple[int, bytes], Grace] = OrderedDict()
        self.grace_of_ino: dict[int, tuple[int, bytes]] = {}  # its newest entry
        self.deferred: set[tuple[int, tuple[int, int]]] = set()  # checks running in the background
        self.nursery: trio.Nursery | None = None  # for those; set by the mount
        self._jobs: dict[int, tuple[str | None, float]] = {}  # pid -> (job, until)
        self.job_attrs: dict[int, str] = {}  # ino -> user.seldon.job set through the mount
        self.ingested: dict[int, int] = {}  # ino -> when created, until its commit record
        self._rows: list[tuple] = []  # file records waiting for their batch
        self._dirfds: dict[str, int] = {}  # directories opened in the current scope
        self._lent: set[str] = set()  # those of them that are core's node descriptors
        self.audit: AuditLog | None = None  # set by the mount when auditing
        self.counts: Counter[str] = Counter()  # decisions, for stats.json
        self._depth = 0
        self.seq: dict[str, tuple[int, int]] = {}  # job -> (next, end of reserved block)
        self._statvfs: tuple[float, float] = (0.0, 100.0)  # (when, free percent)
        # pyfuse3's invalidate_entry, set by the FUSE glue: tell the kernel a
        # name changed behind its back.
        self.notify_gone: Callable[[int, bytes], None] = lambda parent, name: None
        fd = walk(core.nodes[1].fd, VERSIONS_DIR, create=True)
        os.close(fd)
        os.chmod(PRIVATE_DIR, 0o700, dir_fd=core.nodes[1].fd)

    # ------------------------------------------------------------ paths

    def _scope(self) -> _Scope:
        return _Scope(self)

    def _at_rule_root(self, d: str, rule: FolderRule) -> bool:
        return len(d.split("/")) == self.rules.rule_depth(rule) if d else False

    def is_private(self, parent: int, name: bytes) -> bool:
        return parent == 1 and name == PRIVATE_DIR.encode()

    # ------------------------------------------------------------ create / open / write

    def check_new_name(self, parent: int, name: bytes, kind: int) -> str | None:
        """Refuse a new entry (file, node, link, rename target) where the
        rules forbid it; returns the directory's path (None: beyond any rule)."""
        if self.is_private(parent, name):
            raise OSError(errno.EACCES, "reserved name")
        d = self.core.rel_path(parent)
        if d is None:
            return None
        if d in self.quarantine_dirs:
            raise OSError(errno.EACCES, "only the filesystem moves files into quarantine")
        if kind != stat_m.S_IFDIR:
            rule = self.rules.for_dir(d)
            text = os.fsdecode(name)
            at_root = rule is not None and self._at_rule_root(d, rule)
            # A temporary name never commits; its rename to the final name is checked.
            temporary = is_temporary(text, self.pol.temp_patterns)
            why = validation.check_create(rule, at_root, text, place_only=temporary)
            if why:
                log.info("refused %s/%s: %s", d, text, why)
                raise OSError(errno.EACCES, why)
        return d

    def on_create(self, parent: int, name: bytes, pid: int) -> Tracked | None:
        d = self.check_new_name(parent, name, stat_m.S_IFREG)
        t = None if d is None else self._track(d, pid)
        if t is not None:
            if t.floor:
                self._check_floor()
            t.created = True
            t.parent = parent
            if t.commits and t.rule is not None and t.rule.naming and "{job}" in t.rule.naming:
                t.job = self._job_of(pid)
        return t

    def _job_of(self, pid: int) -> str | None:
        # A process's starting environment never changes: read it once per
        # writer (a pid reused within JOB_CACHE_S seconds could inherit it).
        now = time.monotonic()
        hit = self._jobs.get(pid)
        if hit is not None and hit[1] > now:
            return hit[0]
        if len(self._jobs) > 4096:
            self._jobs.clear()
        job = job_from_environ(pid)
        self._jobs[pid] = (job, now + JOB_CACHE_S)
        return job

    def _track(self, d: str, pid: int) -> Tracked | None:
        rule = self.rules.for_dir(d)
        floor = self._floor_applies(d)
        if rule is None and not floor:
            return None
        commits = _commits(rule)
        limited = rule is not None and rule.max_size is not None
        if not (commits or limited or floor or (rule is not None and rule.versions)):
            return None
        return Tracked(rule, commits, pid, floor=floor, direct_io=limited and self.writeback)

    def on_open(self, ino: int, flags: int, pid: int) -> Tracked | None:
        if flags & os.O_TRUNC and self._reopened_in_grace(ino, pid):
            # The writer opens its pre-commit name again to write it anew
            # (a loop writing data.json 200 times): that is a new file, not
            # the committed one. ESTALE makes the kernel look the name up
            # again (do_filp_open retries with LOOKUP_REVAL); the grace entry
            # is gone, so the lookup fails and the open creates a new file.
            raise OSError(errno.ESTALE, "pre-commit name opened anew")
        if flags & os.O_ACCMODE == os.O_RDONLY:
            return None
        self.shadow.pop(ino, None)  # another writer: its bytes would not be seen
        rel = self.core.rel_path(ino)
        if rel is None:
            return None
        t = self._track(posixpath.dirname(rel), pid)
        if t is not None and t.rule is not None and t.rule.versions and self._size(ino) > 0:
            if flags & os.O_TRUNC:
                self.save_version(rel, "truncate")
            else:
                t.version_on_write = True
        return t

    def forget(self, ino: int) -> None:
        """The kernel let go of `ino`: drop what was kept about it."""
        self.checked.pop(ino, None)
        self.shadow.pop(ino, None)
        self.dirty.discard(ino)
        self.job_attrs.pop(ino, None)

    def _size(self, ino: int) -> int:
        return self.core.content.plain_size(os.fstat(self.core.node_fd(ino)).st_size)

    def on_handle(self, ino: int, t: Tracked) -> None:
        self.writers[ino] = self.writers.get(ino, 0) + 1
        if t.created and t.commits:
            self.ingested[ino] = time.time_ns()
            if len(self.shadow) < SHADOWS:
                self.shadow[ino] = bytearray()

    def on_write(self, ino: int, t: Tracked, off: int, size: int, content: FileContent) -> None:
        end = off + size
        if validation.too_big(t.rule, end):
            raise OSError(errno.EFBIG, "file size limit of the folder")
        if t.floor and end > content.size():
            self._check_floor()
        if t.version_on_write:
            t.version_on_write = False
            rel = self.core.rel_path(ino)
            if rel is not None:
                self.save_version(rel, "overwrite")
        self.dirty.add(ino)

    def wrote(self, ino: int, off: int, data: bytes) -> None:
        """`data` reached the file at `off`: keep the shadow in step."""
        buf = self.shadow.get(ino)
        if buf is None:
            return
        end = off + len(data)
        if end > INLINE_CHECK_BYTES:
            del self.shadow[ino]
            return
        if off > len(buf):
            buf.extend(bytes(off - len(buf)))  # a hole reads as zeros
        buf[off:end] = data

    def write_failed(self, ino: int) -> None:
        """A write failed part way: what reached the file is not known."""
        self.shadow.pop(ino, None)

    def on_truncate(self, ino: int, size: int, cur_size: int) -> None:
        rel = self.core.rel_path(ino)
        if rel is None:
            return
        d = posixpath.dirname(rel)
        rule = self.rules.for_dir(d)
        if validation.too_big(rule, size):
            raise OSError(errno.EFBIG, "file size limit of the folder")
        if size > cur_size and self._floor_applies(d):
            self._check_floor()
        buf = self.shadow.get(ino)
        if buf is not None:
            if size > INLINE_CHECK_BYTES:
                del self.shadow[ino]
            elif size < len(buf):
                del buf[size:]
            else:
                buf.extend(bytes(size - len(buf)))
        if rule is not None and rule.versions and cur_size > 0 and size != cur_size:
            self.save_version(rel, "truncate")
        if _commits(rule):
            self.dirty.add(ino)

    def on_release(self, ino: int, t: Tracked) -> None:
        n = self.writers.get(ino, 0) - 1
        if n > 0:
            self.writers[ino] = n
        else:
            self.writers.pop(ino, None)
            self.ingested.pop(ino, None)  # committed by now, or never will be
            self.shadow.pop(ino, None)

    def _floor_applies(self, d: str) -> bool:
        """The space floor covers every folder but temp/ and its subtree."""
        return self.pol.min_free > 0 and d.split("/")[0] != "temp"

    def _check_floor(self) -> None:
        now = time.monotonic()
        when, free = self._statvfs
        if now - when > STATVFS_TTL:
            v = self.core.statfs()
            free = 100.0 * v.f_bavail / v.f_blocks if v.f_blocks else 100.0
            self._statvfs = (now, free)
        if free < self.pol.min_free:
            raise OSError(errno.ENOSPC, "store below its free-space floor")

    # ------------------------------------------------------------ grace

    def grace_target(self, parent: int, name: bytes, pid: int) -> Grace | None:
        """Where a committed file went, for the process that wrote it and
        only for `grace` seconds."""
        g = self.grace.get((parent, name))
        if g is None:
            return None
        if g.until < time.monotonic():
            del self.grace[(parent, name)]
            return None
        return g if g.pid == pid else None

    def _reopened_in_grace(self, ino: int, pid: int) -> bool:
        key = self.grace_of_ino.get(ino)
        g = self.grace.get(key) if key is not None else None
        if g is None or g.pid != pid or g.ino != ino:
            return False
        del self.grace[key]
        return True

    def _add_grace(self, parent: int, name: bytes, g: Grace) -> None:
        now = time.monotonic()
        while self.grace:
            first = next(iter(self.grace.values()))
            if first.until >= now:
                break
            _, old = self.grace.popitem(last=False)
            self.grace_of_ino.pop(old.ino, None)
        self.grace[(parent, name)] = g
        self.grace.move_to_end((parent, name))
        self.grace_of_ino[g.ino] = (parent, name)

    # ------------------------------------------------------------ commit

    @_scoped
    def flush(self, ino: int, t: Tracked, source: Source, last: bool = False) -> int | None:
        """At close(2) (FLUSH) of the last handle that writes the file:
        commit when it was written since its last commit. Returns an errno
        for the writer (EACCES: rejected).

        A FLUSH comes for every close of a descriptor, dup()s included: a
        shell's `cmd > file` opens, dup2()s and closes the original before
        anything is written. So a FLUSH without new data commits nothing;
        RELEASE (`last`, when the final descriptor is gone) commits a file
        that was created but never written, such as touch makes.

        `source` is the handle's descriptor and content: the check reads
        through them (the last block written is likely still decrypted)."""
        if not t.commits or self.writers.get(ino, 0) > 1:
            return None
        if ino not in self.dirty and not (last and t.created and not t.done):
            return None
        t.done = True
        return self.commit(
            ino, t.pid, t.job, notify_old=not t.created, source=source if t.readable else None,
            parent=t.parent,
        )

    @_scoped
    def after_rename(self, parent: int, name: bytes, pid: int) -> None:
        """A rename into a folder with a commit rule commits the file."""
        d = self.core.rel_path(parent)
        if d is None or not _commits(self.rules.for_dir(d)):
            return
        try:
            st = os.stat(name, dir_fd=self.core.node_fd(parent), follow_symlinks=False)
        except OSError:
            return
        ino = self.core.ino_of(st.st_ino)
        if not stat_m.S_ISREG(st.st_mode) or self.writers.get(ino):
            return  # not a file, or its writer's last close commits it
        self.commit(ino, pid, None, rel=posixpath.join(d, os.fsdecode(name)))

    @_scoped
    def commit(
        self, ino: int, pid: int, job: str | None, rel: str | None = None,
        verdict: validation.Verdict | None = None, defer: bool = True, notify_old: bool = True,
        source: Source | None = None, parent: int = 0,
    ) -> int | None:
        """Check, name, route or quarantine file `ino` (at `rel`). Returns
        an errno for the writer (EACCES: rejected), None otherwise.

        A large file in a folder that does not reject is checked by a task
        of its own in a worker thread (`_check_later`): its writer's close
        returns at once and other requests go on meanwhile; the file commits
        when the check is done. In a folder that rejects, close(2) has to
        wait for the verdict anyway, and the check runs right here.

        `notify_old` False: the kernel does not cache the old name (a file
        created under a commit rule is answered with entry_timeout 0).
        `parent`: the kernel's inode of the directory the file was created
        in; while the file is still there, the commit works through its
        descriptor instead of walking the store from the root."""
        rel = rel or self.core.rel_path(ino)
        if rel is None:
            return None  # unlinked while open
        d, name = posixpath.split(rel)
        rule = self.rules.for_dir(d)
        if not _commits(rule) or is_temporary(name, self.pol.temp_patterns) or d in self.quarantine_dirs:
            return None
        assert rule is not None
        if parent and parent in self.core.nodes and self.core.rel_path(parent) == d:
            if d not in self._dirfds:
                self._dirfds[d] = self.core.node_fd(parent)
                self._lent.add(d)
        else:
            parent = 0
        if verdict is None:
            defer = defer and rule.on_invalid != "reject" and self.nursery is not None
            verdict = self._check(ino, rel, rule, defer, pid, job, source)
            if verdict is None:
                return None  # vanished, or checked in the background
        self.dirty.discard(ino)
        if not verdict.ok:
            self.core.note_path(ino, self.quarantine(rel, rule, verdict.reasons))
            self._record(rel, name, "", verdict, "quarantined", ino)
            return errno.EACCES if rule.on_invalid == "reject" else None
        new_dir, new_name = d, name
        if rule.route:
            m = re.fullmatch(rule.route, name)
            if m is None:
                if rule.route_unmatched == "quarantine":
                    reason = f"name does not match the routing pattern {rule.route}"
                    self.quarantine(rel, rule, [reason])
                    return errno.EACCES if rule.on_invalid == "reject" else None
            else:
                groups = {"name": name, **{k: v for k, v in m.groupdict().items() if v is not None}}
                target = rule.route_to.format(**groups)  # type: ignore[union-attr]
                new_dir, new_name = posixpath.split(target)
        template = self.templates.get(rule.naming) if rule.naming else None
        job_id = ""
        if template is not None and not template.is_managed(new_name):
            job_id = clean_job(job or self.job_attrs.pop(ino, None), rule.job)
            new_name = None  # type: ignore[assignment]
        dest = self._place(rel, new_dir, new_name, name, template, job_id, rule)
        if dest is None:
            return errno.EACCES if rule.on_invalid == "reject" else None
        self._record(dest, name, job_id, verdict, "ok", ino)
        self.core.note_path(ino, dest)
        self._audit("commit", rel, dest, f"sha256={verdict.sha256} mime={verdict.mime} job={job_id}".strip())
        if dest != rel:
            parent = parent or self._dir_ino(d)  # type: ignore[assignment]
            new_dir = posixpath.dirname(dest)
            new_parent = parent if new_dir == d else self._dir_ino(new_dir)
            if parent:
                self._add_grace(
                    parent, os.fsencode(name),
                    Grace(dest, ino, pid, time.monotonic() + self.pol.grace, new_parent,
                          os.fsencode(posixpath.basename(dest))),
                )
                if notify_old:
                    self.notify_gone(parent, os.fsencode(name))
            if new_dir != d:  # routed: the kernel may think the name free
                if new_parent is not None:
                    self.notify_gone(new_parent, os.fsencode(posixpath.basename(dest)))
            log.debug("committed %s as %s", rel, dest)
        return None

    def _check(
        self, ino: int, rel: str, rule: FolderRule, defer: bool = False, pid: int = 0,
        job: str | None = None, source: Source | None = None,
    ) -> validation.Verdict | None:
        """Read the file's plaintext for the folder's content checks (and
        its checksum); None when the file vanished, or when the check went
        to the background (`defer`, large files)."""
        if source is None:
            try:
                fd = self._open_rel(rel, os.O_RDONLY)
            except OSError:
                return None
            content = None
        else:
            fd, content = source
        try:
            key = self._key(fd)
            if self.checked.get(ino) == key:
                return validation.Verdict(size=key[1])  # unchanged since it passed
            buf = self.shadow.pop(ino, None)
            if buf is not None and len(buf) == key[1]:
                content = _Shadow(buf)
            if defer and key[1] > INLINE_CHECK_BYTES:
                if (ino, key) not in self.deferred:
                    self.deferred.add((ino, key))
                    assert self.nursery is not None
                    self.nursery.start_soon(self._check_later, ino, rel, rule, key, pid, job)
                return None
            v = self._read_and_check(fd, rel, rule, key, content)
            if v.ok:
                self.checked[ino] = key
            return v
        finally:
            if source is None:
                os.close(fd)

    def _key(self, fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return st.st_mtime_ns, self.core.content.plain_size(st.st_size)

    def _read_and_check(
        self, fd: int, rel: str, rule: FolderRule, key: tuple[int, int], content: FileContent | None = None,
    ) -> validation.Verdict:
        """The checks themselves; thread-safe (they touch nothing shared)."""
        content = content or self.core.content.attach(fd)
        try:
            v = validation.check_content(rule, posixpath.basename(rel), key[1], content.read, self.extra_patterns)
        except OSError as e:
            v = validation.Verdict(reasons=[f"unreadable: {os.strerror(e.errno or errno.EIO)}"], size=key[1])
        return v

    async def _check_later(  # runs outside any request: opens its own scope
        self, ino: int, rel: str, rule: FolderRule, key: tuple[int, int], pid: int, job: str | None
    ) -> None:
        try:
            with self._scope():
                fd = self._open_rel(rel, os.O_RDONLY)
        except OSError:
            return
        try:
            v = await trio.to_thread.run_sync(self._read_and_check, fd, rel, rule, key)
            still = self._key(fd) == key and self.core.rel_path(ino) == rel
        finally:
            os.close(fd)
            self.deferred.discard((ino, key))
        if not still:
            return  # changed meanwhile: its next close checks it again
        if v.ok:
            self.checked[ino] = key
        try:
            self.commit(ino, pid, job, rel=rel, verdict=v)
        except OSError as e:
            log.error("commit of %s after its check failed: %s", rel, e)

    def _place(
        self, rel: str, new_dir: str, new_name: str | None, name: str,
        template: Template | None, job: str, rule: FolderRule,
    ) -> str | None:
        """Move `rel` to new_dir/new_name (a fresh managed name when None),
        never over an existing file. Returns where it is now."""
        tries = max(1, rule.route_retries) if rule.route else 1000
        for attempt in range(tries):
            if new_name is None or template is not None and not template.is_managed(new_name):
                assert template is not None
                seq = self._next_seq(job) if template.uses_seq else 0
                candidate = template.render(datetime.now(timezone.utc), job, seq, name)
            elif attempt == 0:
                candidate = new_name
            else:
                stem, dot, ext = new_name.rpartition(".")
                candidate = f"{stem}-{attempt}{dot}{ext}" if stem else f"{new_name}-{attempt}"
            target = posixpath.join(new_dir, candidate) if new_dir else candidate
            if target == rel:
                return rel
            try:
                self._rename(rel, target, create_dirs=new_dir != posixpath.dirname(rel))
                return target
            except FileExistsError:
                continue
            except OSError as e:
                log.warning("cannot move %s to %s: %s", rel, target, e)
                if not rule.route:
                    return rel
        reason = f"could not be moved to {new_dir}/ after {tries} attempts"
        self.quarantine(rel, rule, [reason])
        return None

    def _next_seq(self, job: str) -> int:
        nxt, end = self.seq.get(job, (0, 0))
        if nxt >= end:
            row = self.catalog.conn.execute("SELECT next FROM sequences WHERE job = ?", (job,)).fetchone()
            nxt = row[0] if row else 1
            end = nxt + SEQ_BLOCK
            self.catalog.conn.execute("INSERT OR REPLACE INTO sequences VALUES (?, ?)", (job, end))
        self.seq[job] = (nxt + 1, end)
        return nxt

    def _notify_moved(self, rel: str, dest: str) -> None:
        """Tell the kernel both names changed behind its back."""
        for path in (rel, dest):
            parent = self._dir_ino(posixpath.dirname(path))
            if parent is not None:
                self.notify_gone(parent, os.fsencode(posixpath.basename(path)))

    def _audit(self, op: str, path: str, path2: str = "", detail: str = "", result: str = "OK") -> None:
        """A decision of the filesystem's own, in the audit chain."""
        self.counts[op] += 1
        if self.audit is not None:
            self.audit.record(op, 0, 0, os.getpid(), path, path2, result, 0, detail)

    def _record(
        self, path: str, original: str, job: str, v: validation.Verdict, verdict: str, ino: int = 0
    ) -> None:
        """A file record for the catalog, written with the next batch: one
        SQLite transaction per file would cost more than the commit itself.
        Everything in these records can be rebuilt from data/."""
        self._rows.append((
            path, original, job, v.size, v.sha256, v.mime, verdict, "; ".join(v.reasons), time.time_ns(),
            ino, self.ingested.pop(ino, 0),
        ))
        if len(self._rows) >= 1000:
            self.write_rows()

    def write_rows(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        with self.catalog.conn:  # one transaction
            self.catalog.conn.execute("BEGIN")
            self.catalog.conn.executemany(
                "INSERT INTO files (path, original_name, job, size, sha256, mime, verdict, reason, committed_ns,"
                " ino, ingest_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    async def write_rows_every(self) -> None:
        while True:
            await trio.sleep(ROWS_FLUSH_S)
            self.write_rows()

    def close(self) -> None:
        self.write_rows()

    # ------------------------------------------------------------ quarantine

    def quarantine(self, rel: str, rule: FolderRule, reasons: list[str]) -> str:
        qdir = rule.quarantine or self.pol.quarantine
        name = posixpath.basename(rel)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
        reason = "; ".join(reasons)
        for n in range(1000):
            target = posixpath.join(qdir, f"{stamp}_{name}" if n == 0 else f"{stamp}_{n}_{name}")
            try:
                self._rename(rel, target, create_dirs=True)
                break
            except FileExistsError:
                continue
        else:
            raise OSError(errno.EEXIST, "no free quarantine name")
        self._setxattr(target, XATTR_REASON, reason.encode())
        self._setxattr(target, XATTR_ORIGIN, rel.encode())
        self.catalog.conn.execute(
            "INSERT INTO quarantine (path, origin, reason, at_ns) VALUES (?, ?, ?, ?)",
            (target, rel, reason, time.time_ns()),
        )
        log.info("quarantined %s as %s: %s", rel, target, reason)
        self._audit("quarantine", rel, target, reason)
        self._notify_moved(rel, target)
        return target

    def release(self, ino: int, force: bool, uid: int, pid: int) -> None:
        """`seldonfs quarantine release`: re-validate (unless forced) and
        move the file back to where it was written, committing it there."""
        rel = self.core.rel_path(ino)
        row = rel and self.catalog.conn.execute(
            "SELECT id, origin FROM quarantine WHERE path = ? AND released_ns IS NULL", (rel,)
        ).fetchone()
        if not row:
            raise OSError(errno.EINVAL, "not a quarantined file")
        qid, origin = row
        d, name = posixpath.split(origin)
        rule = self.rules.for_dir(d)
        if not force and rule is not None:
            v = self._check(ino, rel, rule)
            if v is None:
                raise OSError(errno.ENOENT, "file vanished")
            if not v.ok:
                reason = "; ".join(v.reasons)
                self._setxattr(rel, XATTR_REASON, reason.encode())
                self.catalog.conn.execute("UPDATE quarantine SET reason = ? WHERE id = ?", (reason, qid))
                raise OSError(errno.EACCES, reason)
        dest = self._place(rel, d, name, name, None, "", FolderRule(path=d))
        if dest is None:
            raise OSError(errno.EEXIST, "cannot move back")
        fd = self._open_rel(dest, os.O_RDONLY)
        try:
            for key in (XATTR_REASON, XATTR_ORIGIN):
                try:
                    os.removexattr(fd, key)
                except OSError:
                    pass
        finally:
            os.close(fd)
        self.catalog.conn.execute(
            "UPDATE quarantine SET released_ns = ?, released_to = ?, forced = ?, released_by = ? WHERE id = ?",
            (time.time_ns(), dest, int(force), uid, qid),
        )
        log.info("released %s to %s%s (uid %d)", rel, dest, " by force" if force else "", uid)
        self._audit("release", rel, dest, f"{'forced ' if force else ''}by uid {uid}")
        self._notify_moved(rel, dest)
        # forced: the checks are skipped, the managed name is still given
        self.commit(ino, pid, None, rel=dest, verdict=validation.Verdict() if force else None, defer=False)

    # ------------------------------------------------------------ versions

    @_scoped
    def save_version(self, rel: str, cause: str) -> None:
        """Keep the current content of file `rel` as its newest version."""
        rule = self.rules.for_dir(posixpath.dirname(rel))
        if rule is None or not rule.versions:
            return
        stored = secrets.token_hex(16)
        src = self._open_rel(rel, os.O_RDONLY)
        try:
            size = self.core.content.plain_size(os.fstat(src).st_size)
            if size == 0:
                return
            vdir = self._walk(VERSIONS_DIR)
            dst = os.open(stored, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=vdir)
            saved_ns = time.time_ns()
            try:
                _copy(src, dst)
                # what the catalog row says, kept with the copy: fsck rebuilds from it
                os.setxattr(dst, XATTR_VERSION_OF, json.dumps([rel, saved_ns, cause]).encode())
            finally:
                os.close(dst)
        finally:
            os.close(src)
        self.catalog.conn.execute(
            "INSERT INTO versions (path, stored, saved_ns, size, cause) VALUES (?, ?, ?, ?, ?)",
            (rel, stored, saved_ns, size, cause),
        )
        old = self.catalog.conn.execute(
            "SELECT id, stored FROM versions WHERE path = ? ORDER BY id DESC LIMIT -1 OFFSET ?",
            (rel, rule.versions),
        ).fetchall()
        self._audit("version", rel, detail=f"{cause}, {size} bytes kept")
        for vid, name in old:
            self._unlink_version(name)
            self.catalog.conn.execute("DELETE FROM versions WHERE id = ?", (vid,))

    def _unlink_version(self, stored: str) -> None:
        try:
            os.unlink(stored, dir_fd=self._walk(VERSIONS_DIR))
        except FileNotFoundError:
            pass

    def versions(self, rel: str) -> list[dict]:
        rows = self.catalog.conn.execute(
            "SELECT saved_ns, size, cause, stored FROM versions WHERE path = ? ORDER BY id DESC", (rel,)
        ).fetchall()
        return [
            {"n": i + 1, "saved_ns": ns, "size": size, "cause": cause}
            for i, (ns, size, cause, _) in enumerate(rows)
        ]

    def restore(self, ino: int, n: int) -> None:
        """Put version `n` (1 = newest) back; the current content becomes a version."""
        rel = self.core.rel_path(ino)
        rows = rel and self.catalog.conn.execute(
            "SELECT stored FROM versions WHERE path = ? ORDER BY id DESC", (rel,)
        ).fetchall()
        if not rows or not 1 <= n <= len(rows):
            raise OSError(errno.EINVAL, "no such version")
        stored = rows[n - 1][0]
        src = os.open(stored, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._walk(VERSIONS_DIR))
        # The copy becomes a new file that replaces the old one, as an
        # editor's save does: the kernel's cached pages belong to the old
        # inode, so no cache has to be dropped under anyone's feet.
        tmp = f"{PRIVATE_DIR}/restore-{secrets.token_hex(8)}"
        try:
            self.save_version(rel, "restore")
            st = os.fstat(self.core.node_fd(ino))
            dst = self._open_rel(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                _copy(src, dst)
                os.fchown(dst, st.st_uid, st.st_gid)
                os.fchmod(dst, stat_m.S_IMODE(st.st_mode))
            finally:
                os.close(dst)
            self._rename(tmp, rel, create_dirs=False, replace=True)
        finally:
            os.close(src)
        parent = self._dir_ino(posixpath.dirname(rel))
        if parent is not None:
            self.notify_gone(parent, os.fsencode(posixpath.basename(rel)))
        self._audit("restore", rel, detail=f"version {n}")

    # ------------------------------------------------------------ virtual xattrs

    @_scoped
    def getxattr(self, ino: int, name: bytes) -> bytes | None:
        if name == XATTR_VERSIONS:
            rel = self.core.rel_path(ino)
            return json.dumps(self.versions(rel) if rel else []).encode()
        return None

    @_scoped
    def setxattr(self, ino: int, name: bytes, value: bytes, uid: int, pid: int) -> bool:
        """Handle the filesystem's control attributes; False when `name`
        is not one of them."""
        if name == XATTR_RESTORE:
            try:
                n = int(value)
            except ValueError:
                raise OSError(errno.EINVAL, "want a version number") from None
            self.restore(ino, n)
            return True
        if name == XATTR_RELEASE:
            if uid != 0:
                raise OSError(errno.EPERM, "only root releases quarantined files")
            self.release(ino, value.strip() == b"force", uid, pid)
            return True
        if name == XATTR_JOB:
            rel = self.core.rel_path(ino)
            if rel is None:
                raise OSError(errno.ENOENT, "removed")
            self._setxattr(rel, XATTR_JOB, value)  # kept with the file, for the record
            self.job_attrs[ino] = value.decode("utf-8", "replace")
            return True
        return False

    # ------------------------------------------------------------ store access

    def _walk(self, d: str, create: bool = False) -> int:
        """An O_PATH descriptor of directory `d`, kept until the outermost
        `_scoped` call returns (a commit opens each directory once)."""
        assert self._depth > 0, "store access outside a policy scope"
        fd = self._dirfds.get(d)
        if fd is None:
            fd = self._dirfds[d] = walk(self.core.nodes[1].fd, d, create=create)
        return fd

    def _dir_ino(self, d: str) -> int | None:
        """The inode number the kernel knows directory `d` by, if it holds it."""
        try:
            ino = self.core.ino_of(os.fstat(self._walk(d)).st_ino)
        except OSError:
            return None
        return ino if ino in self.core.nodes else None

    def _open_rel(self, rel: str, flags: int) -> int:
        d, name = posixpath.split(rel)
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._walk(d))

    def _setxattr(self, rel: str, key: bytes, value: bytes) -> None:
        fd = self._open_rel(rel, os.O_RDONLY)
        try:
            os.setxattr(fd, key, value)
        finally:
            os.close(fd)

    def _rename(self, rel: str, target: str, create_dirs: bool, replace: bool = False) -> None:
        sd, sn = posixpath.split(rel)
        td, tn = posixpath.split(target)
        flags = 0 if replace else _libc.RENAME_NOREPLACE
        self.core.renames += 1
        _libc.renameat2(
            self._walk(sd), os.fsencode(sn), self._walk(td, create=create_dirs), os.fsencode(tn), flags
        )


class _Shadow:
    """A kept plaintext read like a file's content."""

    __slots__ = ("buf",)

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf

    def read(self, off: int, size: int) -> bytes:
        return bytes(memoryview(self.buf)[off:off + size])  # one copy, not a slice and then a copy


def _copy(src: int, dst: int) -> None:
    off = 0
    while True:
        n = os.copy_file_range(src, dst, 1 << 24, off, off)
        if n == 0:
            break
        off += n
