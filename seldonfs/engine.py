"""The policy engine: carries the folder rules' decisions out on the store.

`Engine` is the `Hooks` of a mount with rules (core.py calls it; it never
calls the FUSE glue). What to do is decided by policy.py; this module
does it: refuses entries, follows the handles that write under a rule
(size limits, the space floor, versions: versions.py), says when a file
commits and hands it to commit.py, and answers the control attributes
(versions, restore, release, job). Every decision goes into the audit
chain and the counts of stats.json.

Commit: a file commits when the last handle that wrote it is flushed
(close(2), so the writer sees a rejection and `ls` after close sees the
final name) or when it is renamed into a folder with a commit rule. A
mount that did not end cleanly (killed, crashed, or stopped with files
open for writing) leaves files whose close never came: the next mount
commits them before it answers its first request (`recover`).

Concurrency: every hook runs inside a request (core.py) and none awaits.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import posixpath
import stat as stat_m
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import trio

from . import _libc, xattrs
from .alerts import Failures
from .audit import AuditLog
from .catalog import Catalog
from .checks import INLINE_CHECK_BYTES, Checks
from .commit import Committer
from .config import FolderRule
from .content import FileContent
from .core import ROOT_INODE, Core
from .distributions import Tracker
from .hooks import Absent, Hooks, Moved, Track
from .host import job_from_environ
from .leftovers import Leftovers
from .naming import shown
from .policy import (
    Policy, commits, held, moves_unchecked, version_at_open, version_at_replace, version_at_truncate, write_once_area,
)
from .refusals import Refusals, Refused
from .store import PRIVATE_DIR, VERSIONS_DIR, Dirs, tree
from .validation import checksum_of
from .versions import Versions

log = logging.getLogger(__name__)

CLOSE_TRIES = 3  # the last batch of file records, at unmount

JOB_CACHE_S = 2.0
STATVFS_TTL = 0.1


UNSEALED_REASON = "cut off before its close by the end of the mount: not sealed in its write-once folder"


def _has_xattr(path: str, name: bytes) -> bool:
    try:
        os.getxattr(path, name, follow_symlinks=False)
        return True
    except OSError:  # ENODATA: the usual
        return False


def _size_limit(rule: FolderRule | None) -> str:
    return f"file size limit of the folder: {rule.max_size if rule else '?'} bytes"


@dataclass(slots=True)
class Tracked(Track):
    """The engine's state of one open handle under a rule."""

    rule: FolderRule | None = None
    commits: bool = False  # a commit rule applies to the folder it was opened in
    uid: int = -1  # the user that opened it: its processes' follow-ups get the grace period
    job: str | None = None  # from the writer's environment at create
    created: bool = False
    emptied: bool = False  # opened with O_TRUNC (`: > f`): committed at its last release, written or not
    done: bool = False  # committed at an earlier flush
    version_on_write: bool = False  # keep the old content before the first write
    floor: bool = False  # the space floor applies
    parent: int = 0  # the kernel's inode of the directory it was created in
    left_at: str | None = None  # created under a temporary name here, in a folder that commits


class Engine(Hooks):
    """Made by the mount for a store with rules; attaches itself to `core`
    (its hooks, its control attributes, the hidden private folder)."""

    def __init__(
        self, core: Core, policy: Policy, catalog: Catalog, writeback: bool, audit: AuditLog | None = None,
        failed: Callable[[str, BaseException], None] | None = None, checksum_key: bytes | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        self.core, self.policy, self.catalog, self.writeback, self.audit = core, policy, catalog, writeback, audit
        self.refusals = refusals  # the mount's last refusals (a quarantine is one)
        self.counts: Counter[str] = Counter()  # decisions, for stats.json
        self.dirs = Dirs(core.root_fd, core.moved)
        self.checks = Checks(core.content, policy.extra_patterns, checksum_of(checksum_key))
        self.versions = Versions(self.dirs, catalog, core.content.plain_size, self._note)
        self.committer = Committer(core, policy, self.dirs, self.checks, catalog, self._note, failed or Failures())
        self.writers: dict[int, int] = {}  # ino -> open tracked handles
        self.fresh: set[int] = set()  # made in a write-once folder, its handles still open: not sealed yet
        self.leftovers = Leftovers(policy.pol.temp_max_age)
        self.recover_from: str | None = None  # data/, when the last mount did not end cleanly (mount.py)
        self._recover_large: list[tuple[int, str, int]] = []  # what `recover` left to `run`: (ino, rel, uid)
        self._jobs: dict[int, tuple[str | None, float]] = {}  # pid -> (job, until)
        self._statvfs: tuple[float, float] = (0.0, 100.0)  # (when, free percent)
        with self.dirs:
            self.dirs.get(VERSIONS_DIR, create=True)
        os.chmod(PRIVATE_DIR, 0o700, dir_fd=core.root_fd)
        core.hooks = self
        core.hidden = frozenset({PRIVATE_DIR.encode()})
        core.attrs.serve(xattrs.VERSIONS, get=self._versions_attr)
        core.attrs.serve(xattrs.RESTORE, set=self._restore_attr)
        core.attrs.serve(xattrs.RELEASE, set=self._release_attr)
        core.attrs.serve(xattrs.JOB, set=self._job_attr)
        self.dist = Tracker(core, catalog, policy.for_dir, checksum_of(checksum_key), audit)
        core.attrs.serve(xattrs.RECIPIENT, set=self.dist.add)
        core.attrs.serve(xattrs.DISTRIBUTION, set=self._distribution_attr)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The background part (large files' checks, catalog batches,
        left-over temporary names), in the mount's nursery."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.committer.run)
            nursery.start_soon(self._commit_leftovers)
            self._commit_large()
            task_status.started()

    def recover(self) -> int:
        """When the last mount did not end cleanly (`recover_from` is its
        data/): commit what it left uncommitted (policy.left_uncommitted:
        files whose writers it cut off before their close), follow its
        temporary names (leftovers.py), and quarantine what it left half
        written in write-once folders (xattrs.UNSEALED). mount.py calls it
        on the trio thread before anything there waits, so before the first
        request is answered: no one sees such a file unchecked. Returns how
        many files it committed; one that fails (a full disk) is logged and
        left for the next mount. A file above INLINE_CHECK_BYTES would hold the
        mount's first answer for as long as its check reads it: it is
        checked in the background once `run` starts, and is seen unchecked
        until then, as a large file is after its close (`_commit_large`)."""
        if self.recover_from is None:
            return 0
        try:
            n = self._recover(self.recover_from)
        except Exception as e:
            self.committer.failed("commits left by the last mount", e)
            return 0
        self.recover_from = None
        return n

    def _recover(self, data: str) -> int:
        todo, unsealed = [], []
        for rel, _, st in tree(data, skip=PRIVATE_DIR):  # listed first: the commits move files
            d, name = posixpath.split(rel)
            rule = self.policy.for_dir(d)
            if not (stat_m.S_ISREG(st.st_mode) and rule is not None):
                continue
            path = posixpath.join(data, rel)
            if rule.write_once and _has_xattr(path, xattrs.UNSEALED):
                unsealed.append((rel, rule))
            elif commits(rule):
                ino = self.core.ino_of(st.st_ino)
                rewriting = _has_xattr(path, xattrs.REWRITING)
                what = self.policy.left_uncommitted(rule, d, name, self.catalog.newest_commit(rel), ino,
                                                    st.st_mtime_ns, rewriting)
                if rewriting:  # the commit below or in the background settles it
                    os.removexattr(path, xattrs.REWRITING, follow_symlinks=False)
                if what == "leftover":
                    self.leftovers.seen(ino, rel, st.st_uid)
                elif what == "commit" and st.st_size > INLINE_CHECK_BYTES:
                    self._recover_large.append((ino, rel, st.st_uid))
                elif what == "commit":
                    todo.append((ino, rel, st.st_uid))
        with self.dirs:
            for ino, rel, uid in todo:
                log.warning("%s: its writer was cut off by the end of the last mount before its close: committed now",
                            shown(rel))
                self.committer.commit(ino, uid, None, rel=rel, defer=False)
            for rel, rule in unsealed:
                log.warning("%s: its writer was cut off by the end of the last mount before its close: "
                            "quarantined, not sealed", shown(rel))
                moved = self.committer.quarantine.move_in(rel, self.policy.quarantine_dir(rule), [UNSEALED_REASON])
                # in quarantine it is no write-once file; a release seals it
                os.removexattr(posixpath.join(data, moved), xattrs.UNSEALED, follow_symlinks=False)
        for _, rel, _ in self._recover_large:
            log.warning("%s: its writer was cut off by the end of the last mount before its close: "
                        "checked in the background, then committed", shown(rel))
        if todo or unsealed:
            log.warning("%d files the last mount left uncommitted were committed or quarantined",
                        len(todo) + len(unsealed))
        return len(todo) + len(unsealed)

    def _commit_large(self) -> None:
        """The large files `recover` left: each to a background check, as
        a close hands it (one opened for writing since commits at its
        close instead)."""
        try:
            with self.dirs:
                while self._recover_large:
                    ino, rel, uid = self._recover_large[-1]
                    if ino in self.writers:
                        self.committer.dirty.add(ino)
                    else:
                        self.committer.commit(ino, uid, None, rel=rel)
                    self._recover_large.pop()
        except Exception as e:  # kept for the next mount: `ended_clean` is False while any is left
            self.committer.failed("commits left by the last mount", e)

    def ended_clean(self) -> bool:
        """Nothing is left for the next mount's `recover`: this one's ran,
        no file is open for writing or being checked, every file record
        reached the catalog."""
        return self.recover_from is None and not (
            self._recover_large or self.writers or self.committer.deferred or self.committer._rows)

    async def _commit_leftovers(self) -> None:
        every = min(60.0, max(0.5, self.policy.pol.temp_max_age / 4))
        while True:
            await trio.sleep(every)
            if not self.leftovers:
                continue
            try:
                with self.dirs:
                    for ino, rel, uid in self.leftovers.due(time.time(), self._where, self.writers.__contains__):
                        log.info("%s: a temporary name left unchanged for %.0f s: committed like any file", rel,
                                 self.policy.pol.temp_max_age)
                        self.committer.commit(ino, uid, None, rel=rel, left_over=True)
            except Exception as e:
                self.committer.failed("left-over temporary names", e)

    def _where(self, ino: int, rel: str) -> tuple[str, float] | None:
        """Where file `ino` is now (and its mtime), while it keeps a temporary name in a folder that commits."""
        now = self.core.rel_path(ino) if self.core.known(ino) else rel
        if now is None:
            return None
        d, name = posixpath.split(now)
        if not (self.policy.temporary(name) and commits(self.policy.for_dir(d))):
            return None
        try:
            st = self.dirs.lstat(now)
        except OSError:
            return None
        return (now, st.st_mtime) if self.core.ino_of(st.st_ino) == ino else None

    def close(self) -> None:
        try:  # the unused sequence numbers: a remount goes on where this mount stopped
            self.committer.seq.give_back()
        except Exception as e:  # at worst a gap of one block in the numbers
            log.error("sequence numbers not given back: %s", e)
        for attempt in range(1, CLOSE_TRIES + 1):  # the last batch; a failed one is kept and tried again
            try:
                self.committer.write_rows()
                return
            except Exception as e:
                if attempt == CLOSE_TRIES:  # at unmount: fsck reports them, fsck --rebuild restores them
                    log.error("%d file records could not be written: %s", len(self.committer._rows), e)
                else:
                    time.sleep(0.2 * attempt)

    # ------------------------------------------------------------ new entries

    def _refuse(self, parent: int, name: bytes, kind: int) -> str | None:
        """Refuse a new entry where the rules forbid it; returns the
        directory's path (None: beyond any rule)."""
        d = self.core.rel_path(parent)
        if d is None:
            return None
        why = self.policy.refusal(d, name, kind)
        if why:
            log.info("refused %s/%s: %s", d, os.fsdecode(name), why)
            raise Refused(errno.EACCES, why)
        return d

    def new_entry(self, parent: int, name: bytes, kind: int) -> None:
        self._refuse(parent, name, kind)

    def _track(self, d: str, uid: int) -> Tracked | None:
        rule = self.policy.for_dir(d)
        floor = self.policy.floor_applies(d)
        if not self.policy.tracks(rule, floor):
            return None
        limited = rule is not None and rule.max_size is not None
        return Tracked(direct_io=limited and self.writeback, rule=rule, commits=commits(rule), uid=uid, floor=floor)

    def creating(self, parent: int, name: bytes, pid: int, uid: int) -> Tracked | None:
        d = self._refuse(parent, name, stat_m.S_IFREG)
        if d is not None:
            self._refuse_held_name(parent, d, name, "open for writing")
        t = None if d is None else self._track(d, uid)
        if t is not None:
            if t.floor:
                self._check_floor()
            t.created = True
            t.volatile = t.commits
            t.parent = parent
            if t.commits and self.policy.temporary(os.fsdecode(name)):
                t.left_at = posixpath.join(d, os.fsdecode(name))
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

    # ------------------------------------------------------------ open / write

    def opening(self, ino: int, flags: int, uid: int, pid: int) -> Tracked | None:
        if flags & (os.O_ACCMODE | os.O_TRUNC) != os.O_RDONLY:
            self._refuse_held(ino, "open for writing")
        if flags & os.O_TRUNC and self.committer.grace.take_reopened(ino, uid):
            # The writer opens its pre-commit name again to write it anew
            # (a loop writing data.json 200 times): that is a new file, not
            # the committed one. ESTALE makes the kernel look the name up
            # again (do_filp_open retries with LOOKUP_REVAL); the grace entry
            # is gone, so the lookup fails and the open creates a new file.
            raise OSError(errno.ESTALE, "pre-commit name opened anew")
        if self.dist.inos and ino in self.dist.inos:  # one set lookup for any other file
            self.dist.opening(ino, flags, pid)
        if flags & os.O_ACCMODE == os.O_RDONLY:
            return None
        self.checks.drop_written(ino)  # another writer: its bytes would not be seen
        rel = self.core.rel_path(ino)
        if rel is None:
            return None
        t = self._track(posixpath.dirname(rel), uid)
        if t is not None and t.rule is not None and t.rule.versions:
            cause = version_at_open(t.rule, self._size(ino), bool(flags & os.O_TRUNC))
            if cause == "truncate":
                self._save_version(rel, cause)
            elif cause is not None:
                t.version_on_write = True
        if t is not None and t.commits and flags & os.O_TRUNC:
            t.emptied = True
            self.committer.changed(ino, dirty=False)  # its last release commits it (`flushed`)
        return t

    def _size(self, ino: int) -> int:
        return self.core.content.plain_size(os.fstat(self.core.node_fd(ino)).st_size)

    def opened(self, ino: int, track: Track, created: bool) -> None:
        t: Tracked = track  # type: ignore[assignment]
        t.created = t.created and created
        self.writers[ino] = self.writers.get(ino, 0) + 1
        if t.created and t.rule is not None and t.rule.write_once:
            self.fresh.add(ino)  # its writer may finish it; sealed when the last handle goes
            self.core.mark(ino, xattrs.UNSEALED, True)  # quarantined by `recover` if left
        if t.created and t.commits:
            self.committer.ingested[ino] = time.time_ns()
            self.checks.keep_written(ino)
            if t.left_at is not None:
                self.leftovers.seen(ino, t.left_at, t.uid)

    def writing(self, ino: int, track: Track, off: int, size: int, content: FileContent) -> None:
        t: Tracked = track  # type: ignore[assignment]
        end = off + size
        if self.policy.too_big(t.rule, end):
            raise Refused(errno.EFBIG, _size_limit(t.rule))
        if t.floor and end > content.size():
            self._check_floor()
        if t.version_on_write:
            t.version_on_write = False
            rel = self.core.rel_path(ino)
            if rel is not None:
                self._save_version(rel, "overwrite")
        if t.commits:
            self.committer.changed(ino, fresh=t.created)
        else:
            self.committer.dirty.add(ino)

    def wrote(self, ino: int, off: int, data: bytes) -> None:
        self.checks.wrote(ino, off, data)

    def write_failed(self, ino: int) -> None:
        self.checks.drop_written(ino)

    def truncating(self, ino: int, size: int, cur_size: int) -> None:
        self._refuse_held(ino, "truncate")
        if self.dist.inos and ino in self.dist.inos:
            self.dist.truncating(ino)
        rel = self.core.rel_path(ino)
        if rel is None:
            return
        d = posixpath.dirname(rel)
        rule = self.policy.for_dir(d)
        if self.policy.too_big(rule, size):
            raise Refused(errno.EFBIG, _size_limit(rule))
        if size > cur_size and self.policy.floor_applies(d):
            self._check_floor()
        self.checks.truncated(ino, size)
        if version_at_truncate(rule, cur_size, size):
            self._save_version(rel, "truncate")
        if commits(rule):
            self.committer.changed(ino)

    def truncated(self, ino: int, uid: int) -> None:
        """A file truncated while nothing writes it (truncate(2) by path)
        commits now: no close will follow. Through a handle, or while a
        writer has the file open, the writer's last close commits it."""
        if ino not in self.committer.dirty or self.writers.get(ino):
            return
        with self.dirs:
            err = self.committer.commit(ino, uid, None)
        if err:
            raise OSError(err, os.strerror(err))

    def released(self, ino: int, track: Track) -> None:
        n = self.writers.get(ino, 0) - 1
        if n > 0:
            self.writers[ino] = n
        else:
            self.writers.pop(ino, None)
            if ino in self.fresh:
                self.fresh.discard(ino)
                self.core.mark(ino, xattrs.UNSEALED, False)
            self.committer.ingested.pop(ino, None)  # committed by now, or never will be
            self.checks.drop_written(ino)

    def forgot(self, ino: int) -> None:
        self.fresh.discard(ino)
        self.checks.forget(ino)
        self.committer.forget(ino)

    def _check_floor(self) -> None:
        now = time.monotonic()
        when, free = self._statvfs
        if now - when > STATVFS_TTL:
            v = self.core.statfs()
            free = 100.0 * v.f_bavail / v.f_blocks if v.f_blocks else 100.0
            self._statvfs = (now, free)
        if self.policy.below_floor(free):
            raise Refused(errno.ENOSPC, "store below its free-space floor")

    # ------------------------------------------------------------ names

    def moved(self, parent: int, name: bytes, uid: int) -> Moved | None:
        grace = self.committer.grace
        if (parent, name) not in grace:
            return None
        g = grace.target(parent, name, uid, time.monotonic())
        if g is None:
            raise Absent(errno.ENOENT, "committed under another name")  # not for this user
        known = g.parent is not None and self.core.known(g.parent)
        return Moved(g.rel, g.parent if known else None, g.name)

    def renaming(self, new_parent: int, new: bytes, src: os.stat_result, flags: int) -> None:
        d = self._refuse(new_parent, new, stat_m.S_IFMT(src.st_mode))
        if self.dist.inos:
            self.dist.renaming(new_parent, new, src)
        rule = None if d is None else self.policy.for_dir(d)
        if rule is None or not rule.versions or flags & _libc.RENAME_NOREPLACE:
            return
        try:
            target = os.stat(new, dir_fd=self.core.node_fd(new_parent), follow_symlinks=False)
        except FileNotFoundError:
            return
        if version_at_replace(rule, stat_m.S_ISREG(target.st_mode), target.st_ino == src.st_ino):
            # an editor's save (a new file renamed over the old): the history goes on with the new file
            rel = posixpath.join(d, os.fsdecode(new))
            self.versions.save(rel, rule.versions, "replace")
            self.catalog.move_versions(rel, target.st_ino, src.st_ino)

    def removing(self, parent: int, name: bytes) -> None:
        """The last name of a file in a folder with versions goes: its
        versions stay (for the janitor) but belong to no file, so a new
        file at the path never sees them. A held file stays (write-once)."""
        d = self.core.rel_path(parent)
        if d is not None:
            self._refuse_held_name(parent, d, name, "delete")
        if self.dist.inos:
            self.dist.removing(parent, name)
        rule = None if d is None else self.policy.for_dir(d)
        if rule is None or not rule.versions:
            return
        try:
            st = os.stat(name, dir_fd=self.core.node_fd(parent), follow_symlinks=False)
        except OSError:
            return
        if stat_m.S_ISREG(st.st_mode) and st.st_nlink == 1:
            self.catalog.move_versions(posixpath.join(d, os.fsdecode(name)), st.st_ino, 0)

    # ------------------------------------------------------------ write-once

    def moving(self, old_parent: int, old: bytes, src: os.stat_result, new_parent: int, new: bytes,
               flags: int) -> None:
        """Write-once: a held file is not renamed away and nothing is renamed
        over it. RENAME_EXCHANGE moves the target the other way, so it
        is asked of both (`_may_move`)."""
        od, nd = self.core.rel_path(old_parent), self.core.rel_path(new_parent)
        if od is None or nd is None:
            return
        self._refuse_held_name(old_parent, od, old, "rename")
        if not flags & _libc.RENAME_NOREPLACE:
            self._refuse_held_name(new_parent, nd, new, "replace")
        self._may_move(od, old, src, nd, new)
        if flags & _libc.RENAME_EXCHANGE:
            dst = os.stat(new, dir_fd=self.core.node_fd(new_parent), follow_symlinks=False)
            self._may_move(nd, new, dst, od, old)

    def _may_move(self, od: str, old: bytes, src: os.stat_result, nd: str, new: bytes) -> None:
        """`src`, at `old` in `od`, may go to `new` in `nd`: a folder in,
        around or into a write-once area is not renamed (its files would
        change rule), nor one whose files a commit rule would cover
        unchecked (EXDEV: `moves_unchecked`); a file arrives in a write-once
        folder only with one name and no handle writing it (else the other
        name or the handle could change the record)."""
        rules = self.policy.rules
        into = self.policy.for_dir(nd)
        into_wo = into is not None and into.write_once
        if stat_m.S_ISDIR(src.st_mode):
            was = posixpath.join(od, os.fsdecode(old))
            if into_wo or write_once_area(rules, was):
                self._refused(was, "rename a folder in or around a write-once folder")
            if moves_unchecked(rules, was, posixpath.join(nd, os.fsdecode(new))):
                raise Refused(errno.EXDEV, "a folder moved under a commit rule that has not checked its files (copy it: mv does)")
            return
        if into_wo and stat_m.S_ISREG(src.st_mode):
            ino = self.core.ino_of(src.st_ino)
            if src.st_nlink > 1:
                self._refused(posixpath.join(nd, os.fsdecode(new)), "arrive with another name (hard link)")
            if ino not in self.fresh and self.core.writing_handles(ino):
                self._refused(posixpath.join(nd, os.fsdecode(new)), "arrive while open for writing")

    def linking(self, ino: int, new_parent: int, new: bytes) -> None:
        """No second name for a held file, and no link into a write-once
        folder: the other name could change the record."""
        self._refuse_held(ino, "link")
        d = self.core.rel_path(new_parent)
        rule = None if d is None else self.policy.for_dir(d)
        if rule is not None and rule.write_once:
            self._refused(posixpath.join(d, os.fsdecode(new)), "link into a write-once folder")

    def changing(self, ino: int, what: str) -> None:
        self._refuse_held(ino, f"change its {what}")

    def _refuse_held(self, ino: int, what: str) -> None:
        if not self.policy.any_write_once:
            return
        rel = self.core.rel_path(ino) if ino in self.core.nodes else None
        if rel is None or ino in self.fresh:
            return
        d, name = posixpath.split(rel)
        rule = self.policy.for_dir(d)
        if rule is None or not rule.write_once:
            return
        st = os.fstat(self.core.node_fd(ino))
        if not stat_m.S_ISDIR(st.st_mode) and held(rule, name, st.st_mtime, st.st_ctime, time.time(),
                                                   self.policy.pol.temp_patterns):
            self._refused(rel, what)

    def _refuse_held_name(self, parent: int, d: str, name: bytes, what: str) -> None:
        if not self.policy.any_write_once:
            return
        rule = self.policy.for_dir(d)
        if rule is None or not rule.write_once:
            return
        try:
            st = os.stat(name, dir_fd=self.core.node_fd(parent), follow_symlinks=False)
        except FileNotFoundError:
            return
        n = os.fsdecode(name)
        if (not stat_m.S_ISDIR(st.st_mode) and self.core.ino_of(st.st_ino) not in self.fresh
                and held(rule, n, st.st_mtime, st.st_ctime, time.time(), self.policy.pol.temp_patterns)):
            self._refused(posixpath.join(d, n), what)

    def _refused(self, rel: str, what: str) -> None:
        """EPERM: the caller's record (fuse_ops) says which call it was."""
        self.counts["write-once refused"] += 1
        log.info("write-once: refused to %s %s", what, rel)
        raise Refused(errno.EPERM, f"write-once until its retention has passed: cannot {what}")

    def arrived(self, new_parent: int, new: bytes, uid: int) -> None:
        """A file renamed, hard-linked or made by mknod(2) in a folder with
        a commit rule commits there (a link is checked like a copy)."""
        if self.dist.inos:
            self.dist.arrived(new_parent, new)
        d = self.core.rel_path(new_parent)
        if d is None or not commits(self.policy.for_dir(d)):
            return
        try:
            st = os.stat(new, dir_fd=self.core.node_fd(new_parent), follow_symlinks=False)
        except OSError:
            return
        ino = self.core.ino_of(st.st_ino)
        if not stat_m.S_ISREG(st.st_mode):
            return
        if self._follow_writers(ino, d):  # its writers' last close commits it, by this name
            self.core.note_path(ino, posixpath.join(d, os.fsdecode(new)))
            self.committer.changed(ino)
            return
        if self.policy.temporary(os.fsdecode(new)):
            self.leftovers.seen(ino, posixpath.join(d, os.fsdecode(new)), uid)
            return
        with self.dirs:
            self.committer.commit(ino, uid, None, rel=posixpath.join(d, os.fsdecode(new)))

    def _follow_writers(self, ino: int, d: str) -> bool:
        """Whether handles write file `ino`, which arrived in folder `d`
        (that commits). One opened where no rule followed it is followed
        from now on, so its later bytes are checked too: its close commits
        the file like any writer's."""
        for h in self.core.writing_handles(ino):
            if h.track is None and (t := self._track(d, -1 if h.opener is None else h.opener.uid)) is not None:
                t.readable = fcntl.fcntl(h.fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY
                h.track = t
                self.opened(ino, t, False)
        return bool(self.writers.get(ino))

    # ------------------------------------------------------------ commit

    def flushed(self, ino: int, track: Track, fd: int, content: FileContent, last: bool) -> int | None:
        """At close(2) (FLUSH) of the last handle that writes the file:
        commit when it was written since its last commit. Returns an errno
        for the writer (EACCES: rejected).

        A FLUSH comes for every close of a descriptor, dup()s included: a
        shell's `cmd > file` opens, dup2()s and closes the original before
        anything is written. So a FLUSH without new data commits nothing;
        RELEASE (`last`, when the final descriptor is gone) commits a file
        that was created or emptied (O_TRUNC) but never written, such as
        touch and `: > f` leave. The check
        reads through the handle (the last block written is likely still
        decrypted)."""
        t: Tracked = track  # type: ignore[assignment]
        if not t.commits or self.writers.get(ino, 0) > 1:
            return None
        if ino not in self.committer.dirty and not (last and (t.created or t.emptied) and not t.done):
            return None
        t.done = True
        with self.dirs:
            return self.committer.commit(
                ino, t.uid, t.job, notify_old=not t.created, source=(fd, content) if t.readable else None,
                parent=t.parent,
            )

    # ------------------------------------------------------------ control attributes

    def _versions_attr(self, ino: int) -> bytes:
        rel = self.core.rel_path(ino)
        listing = self.versions.listing(rel, os.fstat(self.core.node_fd(ino)).st_ino) if rel else []
        return json.dumps(listing).encode()

    def _restore_attr(self, ino: int, value: bytes, uid: int, pid: int) -> None:
        try:
            n = int(value)
        except ValueError:
            raise OSError(errno.EINVAL, "want a version number") from None
        rel = self.core.rel_path(ino)
        if rel is None:
            raise OSError(errno.EINVAL, "no such version")
        rule = self.policy.for_dir(posixpath.dirname(rel))
        self.versions.restore(rel, n, rule.versions if rule else 0, os.fstat(self.core.node_fd(ino)))
        self.core.invalidate(rel)

    def _release_attr(self, ino: int, value: bytes, uid: int, pid: int) -> None:
        self.committer.release(ino, value.strip() == b"force", uid, pid)

    def _distribution_attr(self, ino: int, value: bytes, uid: int, pid: int) -> None:
        if ino != ROOT_INODE:
            raise OSError(errno.EPERM, "reserved attribute prefix")
        self.dist.set_status(value, uid, pid)

    def _job_attr(self, ino: int, value: bytes, uid: int, pid: int) -> None:
        rel = self.core.rel_path(ino)
        if rel is None:
            raise OSError(errno.ENOENT, "removed")
        with self.dirs:
            self.dirs.setxattr(rel, xattrs.JOB, value)  # kept with the file, for the record
        self.committer.job_attrs[ino] = value.decode("utf-8", "replace")

    # ------------------------------------------------------------ records

    def _save_version(self, rel: str, cause: str) -> None:
        rule = self.policy.for_dir(posixpath.dirname(rel))
        if rule is not None and rule.versions:
            self.versions.save(rel, rule.versions, cause)

    def _note(self, op: str, path: str, path2: str = "", detail: str = "", result: str = "OK") -> None:
        """A decision of the filesystem's own, in the audit chain."""
        self.counts[op] += 1
        if self.audit is not None:
            self.audit.record(op, 0, 0, os.getpid(), path, path2, result, 0, detail)
        if op == "quarantine" and self.refusals is not None:  # the writer's close failed only where the rule rejects
            rule = self.policy.for_dir(posixpath.dirname(path))
            told = "EACCES" if rule is not None and rule.on_invalid == "reject" else "OK"
            self.refusals.add("commit", self._owner_of(path2), 0, path, told, f"quarantined: {detail}", path2)

    def _owner_of(self, rel: str) -> int:
        """The owner of the file at `rel` (-1: gone): who wrote a quarantined file."""
        try:
            with self.dirs:
                return self.dirs.lstat(rel).st_uid
        except OSError:
            return -1

