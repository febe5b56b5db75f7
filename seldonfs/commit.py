"""Commits: a written file checked, then named, routed or quarantined.

The commit of a file (engine.py says when) reads its plaintext for the
folder's checks (checks.py; a large file's in a worker thread, in a task
of its own), asks policy.py where it goes, and moves it there under a
name no other file has (sequence numbers come from the catalog in
blocks, the unused rest given back at unmount, and wrap within the
template's width: `Sequences`), or to quarantine (quarantine.py). In a
folder with `dedupe`, a file whose name and content are those of a file
committed there before is removed instead (`_duplicate_of`; the catalog
says which files to compare). The old name gets its grace period
(grace.py) and the kernel is told which names changed. File records
reach the catalog in batches. Releasing a quarantined file is a commit
at its origin.

Concurrency: one request at a time (core.py); every method runs inside the
engine's `store.Dirs` scope. `_check_later` awaits the worker thread and re-reads
the file's key and path afterwards, since the tree may have changed.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat as stat_m
import time
from collections.abc import Callable
from datetime import datetime, timezone

import trio

from . import faults, uring, validation, xattrs
from .catalog import Catalog
from .checks import INLINE_CHECK_BYTES, Checks
from .config import FolderRule
from .content import FileContent
from .core import Core
from .grace import Grace, GraceTable
from .naming import clean_job
from .policy import NAME_TRIES, Place, Policy, candidates
from .policy import Quarantine as ToQuarantine
from .quarantine import Quarantine
from .store import Dirs
from .versions import Note

log = logging.getLogger(__name__)

SEQ_BLOCK = 100  # sequence numbers reserved per catalog write (at most this many lost by a crash)
DEDUPE_CANDIDATES = 20  # earlier files of the same name and checksum looked at, newest first
ROWS_FLUSH_S = 0.5  # file records wait at most this long for their catalog batch
MAX_ROWS = 100_000  # file records kept while the catalog cannot take them (fsck --rebuild restores the rest)

Source = tuple[int, FileContent]  # an open handle's descriptor and content
After = tuple[int, "str | None", bool]  # a background check's commit: (uid, job, left_over)


def name_time(rule: FolderRule) -> datetime:
    """Now, in the zone the folder's names show: UTC, or the mount's local
    time (its TZ) where `naming_time = "local"`."""
    if rule.naming_time == "local":
        return datetime.now().astimezone()
    return datetime.now(timezone.utc)


class Committer:
    def __init__(
        self, core: Core, policy: Policy, dirs: Dirs, checks: Checks, catalog: Catalog, note: Note,
        failed: Callable[[str, BaseException], None],
    ) -> None:
        self.core, self.policy, self.dirs, self.checks, self.catalog = core, policy, dirs, checks, catalog
        self.note, self.failed = note, failed
        self.quarantine = Quarantine(dirs, catalog, note)
        self.grace = GraceTable()
        self.dirty: set[int] = set()  # inodes written since their last commit
        self.rewriting: set[int] = set()  # those of them marked xattrs.REWRITING
        self.deferred: set[tuple[int, tuple[int, int]]] = set()  # checks running in the background
        self.nursery: trio.Nursery | None = None  # for those; set by `run`
        self.token: trio.lowlevel.TrioToken | None = None  # how a request thread reaches it (uring.py)
        self.job_attrs: dict[int, str] = {}  # ino -> user.seldon.job set through the mount
        self.ingested: dict[int, int] = {}  # ino -> when created, until its commit record
        self._rows: list[tuple] = []  # file records waiting for their batch
        self.seq = Sequences(catalog)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """In the mount's nursery: large files' checks start here; file
        records reach the catalog at least every ROWS_FLUSH_S."""
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as self.nursery:
            task_status.started()
            while True:
                await trio.sleep(ROWS_FLUSH_S)
                try:
                    self.write_rows()
                except Exception as e:  # e.g. the disk is full: the rows wait for the next batch
                    self.failed("catalog batch", e)

    def forget(self, ino: int) -> None:
        self.dirty.discard(ino)
        self.rewriting.discard(ino)  # its mark stays: the next mount after a crash commits it
        self.job_attrs.pop(ino, None)

    def changed(self, ino: int, fresh: bool = False, dirty: bool = True) -> None:
        """File `ino` of a folder that commits was changed: its next close
        commits it (`dirty`). A file this mount did not just create may have
        been committed before: it carries xattrs.REWRITING until then, so a
        mount cut off meanwhile leaves a mark the next one cannot miss
        (mtimes can be set back: policy.left_uncommitted)."""
        if not fresh and ino not in self.rewriting:
            self.rewriting.add(ino)
            self.core.mark(ino, xattrs.REWRITING, True)
        if dirty:
            self.dirty.add(ino)

    def commit(
        self, ino: int, uid: int, job: str | None, rel: str | None = None,
        verdict: validation.Verdict | None = None, defer: bool = True, notify_old: bool = True,
        source: Source | None = None, parent: int = 0, left_over: bool = False,
    ) -> int | None:
        """Check, name, route or quarantine file `ino` (at `rel`), inside a
        `self.dirs` scope. Returns an errno for the writer (EACCES:
        rejected), None otherwise. `uid`: the user that wrote it (its
        processes get the grace period of the old name).

        A large file in a folder that does not reject is checked by a task
        of its own (`_check_later`): its writer's close returns at once and
        the file commits when the check is done. In a folder that rejects,
        close(2) has to wait for the verdict anyway.

        `notify_old` False: the kernel does not cache the old name (a file
        created under a commit rule is answered with entry_timeout 0).
        `parent`: the kernel's inode of the directory the file was created
        in; while the file is still there, the commit works through its
        descriptor instead of walking the store from the root. `left_over`:
        a temporary name left too long (leftovers.py) commits too."""
        rel = rel or self.core.rel_path(ino)
        if rel is None:
            return None  # unlinked while open
        d, name = posixpath.split(rel)
        rule = self.policy.for_dir(d)
        if not self.policy.commit_applies(rule, d, name, left_over):
            return None
        assert rule is not None
        if parent and self.core.known(parent) and self.core.rel_path(parent) == d:
            self.dirs.lend(d, self.core.node_fd(parent))
        else:
            parent = 0
        if verdict is None:
            defer = defer and rule.on_invalid != "reject" and self.nursery is not None
            verdict = self._check(ino, rel, rule, defer, (uid, job, left_over), source)
            if verdict is None:
                return None  # vanished, or checked in the background
        self.dirty.discard(ino)
        if ino in self.rewriting:
            self.rewriting.discard(ino)
            self.core.mark(ino, xattrs.REWRITING, False)
        reject = errno.EACCES if rule.on_invalid == "reject" else None
        where = self.policy.destination(rule, d, name, verdict)
        if isinstance(where, ToQuarantine):
            self.core.note_path(ino, self._quarantine(rel, rule, where.reasons))
            if where.checked:
                self._record(rel, name, "", verdict, "quarantined", ino)
            return reject
        if rule.dedupe:
            kept = self._duplicate_of(rel, where.dir, name, verdict)
            if kept is not None:
                self._drop_duplicate(ino, uid, rel, kept, parent, notify_old)
                return None
        job_id = clean_job(job or self.job_attrs.pop(ino, None), rule.job) if where.name is None else ""
        dest = self._place(rel, where, name, job_id, rule)
        if dest is None:
            return reject
        original = name
        if where.name is not None:  # a managed name kept (a rewrite, a rename): its record names what it holds
            job_id, original = self.policy.managed_fields(rule, name) or (job_id, name)
        self._record(dest, original, job_id, verdict, "ok", ino)
        self.core.note_path(ino, dest)
        self.note("commit", rel, dest, f"sha256={verdict.sha256} mime={verdict.mime} job={job_id}".strip())
        if dest != rel:
            self._after_move(ino, uid, rel, dest, parent, notify_old)
        return None

    # ------------------------------------------------------------ duplicates

    def _duplicate_of(self, rel: str, folder: str, name: str, v: validation.Verdict) -> tuple[str, int] | None:
        """(path, inode) of the file this one duplicates: committed to
        `folder` under the same original name, with the same checksum and
        owner, its content unchanged since (the newest record of its path
        has that checksum; its size is the same; not modified after its
        commit), and not this file at this path. None: not a duplicate.
        Looks only at catalog records (and the batch not yet written), never
        at the folder."""
        try:
            own = self.dirs.lstat(rel)
        except OSError:
            return None
        sha = v.sha256 or self._checksum(rel)
        if not sha:
            return None
        size = self.core.content.plain_size(own.st_size)
        pending = [(r[0], r[8]) for r in reversed(self._rows) if r[1] == name and r[4] == sha and r[6] == "ok"]
        seen: set[str] = set()
        for path, committed_ns in pending + self.catalog.same_content(name, sha, DEDUPE_CANDIDATES):
            if path in seen or path == rel or posixpath.dirname(path) != folder:
                continue
            seen.add(path)
            newest = next((r[4] for r in reversed(self._rows) if r[0] == path), None)
            if (newest if newest is not None else self.catalog.newest_checksum(path)) != sha:
                continue  # changed since, or another file at that path now
            try:
                st = self.dirs.lstat(path)
            except OSError:
                continue
            if (stat_m.S_ISREG(st.st_mode) and st.st_uid == own.st_uid and st.st_mtime_ns <= committed_ns
                    and self.core.content.plain_size(st.st_size) == size):
                return path, self.core.ino_of(st.st_ino)
        return None

    def _checksum(self, rel: str) -> str:
        """The recorded kind of checksum of file `rel` (a commit that skipped
        its checks, a forced release, has none)."""
        try:
            fd = self.dirs.open(rel, os.O_RDONLY)
        except OSError:
            return ""
        try:
            return self.checks.checksum_file(fd)
        except OSError:
            return ""
        finally:
            os.close(fd)

    def _drop_duplicate(self, ino: int, uid: int, rel: str, kept: tuple[str, int], parent: int,
                        notify_old: bool) -> None:
        """Remove the duplicate at `rel`; its old name leads to the file
        it duplicates for the grace period."""
        d, n = posixpath.split(rel)
        os.unlink(n, dir_fd=self.dirs.get(d))
        self.dirs.moved()
        self.ingested.pop(ino, None)
        self.note("duplicate", rel, kept[0], f"duplicate of {kept[0]}: same name, same content; removed")
        log.debug("%s: duplicate of %s, removed", rel, kept[0])
        self._after_move(kept[1], uid, rel, kept[0], parent, notify_old)

    def _after_move(self, ino: int, uid: int, rel: str, dest: str, parent: int, notify_old: bool) -> None:
        """Give the old name its grace; tell the kernel what it may cache wrongly."""
        d, name = posixpath.split(rel)
        parent = parent or self._dir_ino(d)  # type: ignore[assignment]
        new_dir = posixpath.dirname(dest)
        new_parent = parent if new_dir == d else self._dir_ino(new_dir)
        if parent:
            self.grace.add(
                parent, os.fsencode(name),
                Grace(dest, ino, uid, time.monotonic() + self.policy.pol.grace, new_parent,
                      os.fsencode(posixpath.basename(dest))),
                time.monotonic(),
            )
            if notify_old:
                self.core.notify(parent, os.fsencode(name))
        if new_dir != d and new_parent is not None:  # routed: the kernel may think the name free
            self.core.notify(new_parent, os.fsencode(posixpath.basename(dest)))
        log.debug("committed %s as %s", rel, dest)

    def _place(self, rel: str, place: Place, name: str, job: str, rule: FolderRule) -> str | None:
        """Move `rel` where `place` says, never over an existing file.
        Returns where it is now (None: it went to quarantine instead).
        A name taken gives way to the next candidate (-1, -2..., or a new
        managed name); only a move that fails uses up `place.tries`, and
        is tried again under the same name."""
        template = self.policy.template(rule)
        cut = False  # the template shortened the written name to fit NAME_MAX

        def fresh() -> str:
            nonlocal cut
            assert template is not None
            seq = self.seq.next(job, template.seq_max) if template.uses_seq else 0
            made, cut = template.render_fitted(name_time(rule), job, seq, name)
            return made

        failed = 0
        why = f"could not be moved to {place.dir}/: every name taken"
        for target, shortened in candidates(place, fresh):
            if target == rel:
                return rel
            while failed < place.tries:
                try:
                    self.dirs.rename(rel, target, create_dirs=place.dir != posixpath.dirname(rel))
                except FileExistsError:
                    break  # taken: the next name
                except OSError as e:  # e.g. a full disk: the file must not stay unnamed where names are managed
                    log.warning("cannot move %s to %s: %s", rel, target, e)
                    failed += 1
                    why = f"could not be moved to {place.dir}/ after {failed} attempts: {e.strerror}"
                    if not rule.route:
                        why = f"could not be named: {e.strerror}"
                        failed = place.tries
                    continue
                if shortened or cut:  # the whole name, beside the catalog's record of it
                    try:
                        self.dirs.setxattr(target, xattrs.ORIGINAL, os.fsencode(name))
                    except OSError as e:  # e.g. no user xattrs on the backing filesystem: the catalog keeps it
                        log.warning("%s: cannot keep its whole name in %s: %s", target, xattrs.ORIGINAL.decode(), e)
                return target
            if failed >= place.tries:
                break
        self._quarantine(rel, rule, [why])
        return None

    def _quarantine(self, rel: str, rule: FolderRule, reasons: list[str] | tuple[str, ...]) -> str:
        target = self.quarantine.move_in(rel, self.policy.quarantine_dir(rule), reasons)
        self._notify_moved(rel, target)
        return target

    # ------------------------------------------------------------ checks

    def _check(
        self, ino: int, rel: str, rule: FolderRule, defer: bool = False, then: After = (0, None, False),
        source: Source | None = None,
    ) -> validation.Verdict | None:
        """Read the file's plaintext for the folder's content checks (and
        its checksum); None when the file vanished, or when the check went
        to the background (`defer`, large files; it commits `then`)."""
        if source is None:
            try:
                fd = self.dirs.open(rel, os.O_RDONLY)
            except OSError:
                return None
            content = None
        else:
            fd, content = source
        try:
            key = self.checks.key(fd)
            passed = self.checks.unchanged(ino, key)
            if passed is not None:
                return passed  # unchanged since it passed: its checksum and type go on record again
            content = self.checks.source(ino, key, content)
            if defer and key[1] > INLINE_CHECK_BYTES:
                if (ino, key) not in self.deferred:
                    self.deferred.add((ino, key))
                    assert self.nursery is not None and self.token is not None
                    uring.start_soon(self.token, self.nursery, self._check_later, ino, rel, rule, key, then)
                return None
            v = self.checks.run(fd, rel, rule, key, content)
            self.checks.passed_now(ino, key, v)
            return v
        finally:
            if source is None:
                os.close(fd)

    async def _check_later(self, ino: int, rel: str, rule: FolderRule, key: tuple[int, int], then: After) -> None:
        try:
            await self._check_and_commit(ino, rel, rule, key, then)
        except Exception as e:  # a task of the mount's nursery: it must not end the mount
            self.failed("background check", e)

    async def _check_and_commit(self, ino: int, rel: str, rule: FolderRule, key: tuple[int, int], then: After) -> None:
        try:
            with self.dirs:
                fd = self.dirs.open(rel, os.O_RDONLY)
        except OSError:
            return
        try:
            v = await trio.to_thread.run_sync(self.checks.run, fd, rel, rule, key)
            still = self.checks.key(fd) == key and self._still_at(ino, rel, fd)
        finally:
            os.close(fd)
            self.deferred.discard((ino, key))
        if not still:
            return  # changed meanwhile: its next close checks it again
        self.checks.passed_now(ino, key, v)
        try:
            with self.dirs:
                self.commit(ino, then[0], then[1], rel=rel, verdict=v, left_over=then[2])
        except OSError as e:
            log.error("commit of %s after its check failed: %s", rel, e)

    def _still_at(self, ino: int, rel: str, fd: int) -> bool:
        """File `ino` (open as `fd`) is still at `rel`. One the kernel does
        not hold (a file `recover` left) is asked for by its name."""
        if self.core.known(ino):
            return self.core.rel_path(ino) == rel
        try:
            with self.dirs:
                st = self.dirs.lstat(rel)
        except OSError:
            return False
        return st.st_ino == os.fstat(fd).st_ino

    def release(self, ino: int, force: bool, uid: int, pid: int) -> None:
        """`seldonfs quarantine release`: re-validate (unless forced) and
        move the file back to where it was written, committing it there."""
        with self.dirs:
            rel = self.core.rel_path(ino)
            qid, origin = self.quarantine.origin(rel)
            assert rel is not None
            d, name = posixpath.split(origin)
            rule = self.policy.for_dir(d)
            if not force and rule is not None:
                v = self._check(ino, rel, rule)
                if v is None:
                    raise OSError(errno.ENOENT, "file vanished")
                if not v.ok:
                    raise self.quarantine.still_invalid(rel, qid, v.reasons)
            dest = self._place(rel, Place(d, name, NAME_TRIES), name, "", FolderRule(path=d))
            if dest is None:
                raise OSError(errno.EEXIST, "cannot move back")
            self.quarantine.released(rel, dest, qid, force, uid)
            self._notify_moved(rel, dest)
            # forced: the checks are skipped, the managed name is still given
            self.commit(ino, uid, None, rel=dest, verdict=validation.Verdict() if force else None, defer=False)

    # ------------------------------------------------------------ records

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
        """The waiting file records, in one transaction; when that fails
        they wait for the next batch (at most MAX_ROWS are kept)."""
        if self._rows:
            rows, self._rows = self._rows, []
            try:
                faults.hit("catalog")
                self.catalog.add_files(rows)
            except BaseException:
                self._rows = (rows + self._rows)[-MAX_ROWS:]
                raise

    def _dir_ino(self, d: str) -> int | None:
        """The inode number the kernel knows directory `d` by, if it holds it."""
        try:
            ino = self.core.ino_of(os.fstat(self.dirs.get(d)).st_ino)
        except OSError:
            return None
        return ino if self.core.known(ino) else None

    def _notify_moved(self, rel: str, dest: str) -> None:
        """Tell the kernel both names changed behind its back."""
        for path in (rel, dest):
            parent = self._dir_ino(posixpath.dirname(path))
            if parent is not None:
                self.core.notify(parent, os.fsencode(posixpath.basename(path)))


class Sequences:
    """The sequence numbers of managed names, per job id.

    The catalog's `sequences.next` is past every number handed out: numbers
    are reserved SEQ_BLOCK at a time (one catalog write per block, not per
    file), and `give_back` (at unmount) returns the unused rest, so a
    remount goes on with the next number; a crash loses at most the rest
    of one block per job. The counter itself only grows; a template whose
    `{seq}` has a width (`{seq:03d}`: 999 at most) gets it wrapped into
    1..max, so a name keeps its width (it stays unique by its timestamp,
    and a rename never replaces: the next number is tried)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._blocks: dict[str, tuple[int, int]] = {}  # job -> (next, end of reserved block)

    def next(self, job: str, top: int | None = None) -> int:
        nxt, end = self._blocks.get(job, (0, 0))
        if nxt >= end:
            nxt = self.catalog.reserve_sequence(job, SEQ_BLOCK)
            end = nxt + SEQ_BLOCK
        self._blocks[job] = (nxt + 1, end)
        return wrap(nxt, top)

    def give_back(self) -> None:
        """The unused numbers of every block go back to the catalog (at a clean unmount)."""
        for job, (nxt, end) in self._blocks.items():
            if nxt < end:
                self.catalog.give_back_sequence(job, nxt, end)
        self._blocks.clear()


def wrap(n: int, top: int | None) -> int:
    """Counter value `n` (from 1) as a sequence number of at most `top`:
    1..top, then 1 again."""
    return n if top is None or n <= top else (n - 1) % top + 1
