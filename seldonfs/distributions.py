"""Distribution tracking (seed 000 §5.3): who a file was given to, and how
often it has been read since.

A file in a folder with `distribution = true` gets a record in the
catalog's `distributions` table for each recipient set on it through the
mount (`setfattr -n user.seldon.recipient -v 'Name <name@example.org>'`,
by the file's owner, the store's owner or root). Every open for reading of
such a file through the mount, by any process, counts as a download on
each of its open records (status sent or delivered) and is an audit
record; the mount cannot tell which recipient reads. The janitor marks a
record expired at `distribution_expiry` after it was set and, once a file
has no open record left, archives, deletes or keeps it
(`distribution_action`). Sending the file anywhere is not the
filesystem's business. docs/distribution.md has the decisions.

`parse_recipient` and `expiry_plan` are pure. `Tracker` is the mount's
part, made by the engine: an in-memory map of the tracked inodes, so an
open of any other file costs one set lookup and no catalog query.
Trio thread only.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import stat as stat_m
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .catalog import Catalog
from .config import Config
from .content import reader
from .host import proc_uid
from .janitor import Action
from .rules import Rules

log = logging.getLogger(__name__)

#: What `distributions status ID STATUS` may set; the janitor sets "expired".
STATUSES = ("sent", "delivered", "failed", "revoked")
#: Records that still count downloads and keep their file from expiring.
OPEN = ("sent", "delivered")
MAX_RECIPIENT = 512  # bytes of a recipient attribute value
CHUNK = 1 << 20

_ADDRESS = re.compile(r"^[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+\.[^\s@<>()\[\],;:\"\\]+$")
_NAMED = re.compile(r"^(?P<name>[^<>]*?)\s*<(?P<addr>[^<>]*)>$")


def parse_recipient(value: bytes) -> tuple[str, str]:
    """(name, address) of `Name <name@example.org>` or a bare address;
    ValueError with a one-line reason for anything else (not UTF-8, too
    long, control characters, no address)."""
    if len(value) > MAX_RECIPIENT:
        raise ValueError(f"recipient longer than {MAX_RECIPIENT} bytes")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("recipient is not UTF-8") from None
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text):
        raise ValueError("recipient holds a control character")
    text = text.strip()
    m = _NAMED.match(text)
    name, addr = (m["name"].strip().strip('"').strip(), m["addr"].strip()) if m else ("", text)
    if not _ADDRESS.match(addr):
        raise ValueError("want 'Name <name@example.org>' or an address")
    return name, addr


@dataclass(frozen=True)
class Expiry:
    """What a janitor run does with the files whose records expired."""

    actions: list[Action]  # archive or delete, for the janitor to carry out
    ids: dict[str, list[int]]  # action rel -> the records it settles
    inos: dict[str, int]  # action rel -> the backing inode it is for
    settled: list[tuple[list[int], str]]  # records settled without an action: (ids, 'kept' | 'gone')


def expiry_plan(cfg: Config, files: Iterable[tuple[str, int, list[int]]],
                stat: Callable[[str], tuple[int, int] | None]) -> Expiry:
    """For each (path, backing inode, record ids) of `Catalog.expired_files`:
    the folder's `distribution_action` on the file, if it is still that
    file (`stat(path)` -> (inode, plaintext size) or None) in a folder with
    a distribution rule; else the records are settled as 'gone' (another
    file, or none, at the path) or 'kept' (moved out of distribution, or
    `distribution_action = "keep"`)."""
    rules = Rules(cfg)
    actions: list[Action] = []
    ids: dict[str, list[int]] = {}
    inos: dict[str, int] = {}
    settled: list[tuple[list[int], str]] = []
    for path, ino, rids in files:
        st = stat(path)
        if st is None or st[0] != ino:
            settled.append((rids, "gone"))
            continue
        rule = rules.for_dir(posixpath.dirname(path))
        if rule is None or not rule.distribution or rule.distribution_action == "keep" or path in ids:
            settled.append((rids, "kept"))
            continue
        kind = rule.distribution_action
        dest = rule.archive_to or "" if kind == "archive" else ""
        reason = f"distribution expired (record {', '.join(map(str, rids))})"
        if kind == "archive" and not dest:
            kind, reason = "delete", reason + " (archive has no destination: deleted)"
        actions.append(Action(kind, path, reason, rule.path, st[1], dest))
        ids[path], inos[path] = rids, ino
    return Expiry(actions, ids, inos, settled)


def settle(catalog: Catalog, exp: Expiry, stat: Callable[[str], tuple[int, int] | None]) -> None:
    """After the janitor acted: the records of each file it archived or
    deleted get that outcome (a file still there, skipped because it was
    open or locked, is tried again next run), and the settled ones theirs."""
    for ids, outcome in exp.settled:
        catalog.distribution_outcome(ids, outcome)
    for a in exp.actions:
        st = stat(a.rel)
        if st is None or st[0] != exp.inos[a.rel]:
            catalog.distribution_outcome(exp.ids[a.rel], "archived" if a.kind == "archive" else "deleted")


def backing_stat(data, plain_size: Callable[[int], int] = lambda n: n) -> Callable[[str], tuple[int, int] | None]:
    """`stat` for expiry_plan and settle over a store's data/: (backing
    inode, plaintext size) of a regular file, None for anything else."""
    def stat(rel: str) -> tuple[int, int] | None:
        try:
            st = os.stat(os.path.join(data, rel), follow_symlinks=False)
        except (OSError, ValueError):
            return None
        return (st.st_ino, plain_size(st.st_size)) if stat_m.S_ISREG(st.st_mode) else None
    return stat


class Tracker:
    """The distribution records of a mount: made by the engine, which
    calls it from its hooks for the inodes in `inos` only."""

    def __init__(self, core, catalog: Catalog, for_dir, checksum, audit=None) -> None:
        self.core, self.catalog, self.for_dir, self.checksum, self.audit = core, catalog, for_dir, checksum, audit
        self.inos: dict[int, int] = {}  # the kernel's inode -> backing inode, of files with an open record
        self._renaming: tuple[int, str] | None = None  # (backing inode, old path) of a rename under way
        self.load()

    def load(self) -> None:
        """The files with open records, each where the record says it is
        (a path now holding another inode is left out)."""
        self.inos.clear()
        for ino, path in self.catalog.distributed_files():
            try:
                st = os.stat(os.path.join(self.core.data_root, path), follow_symlinks=False)
            except (OSError, ValueError):
                continue
            if st.st_ino == ino:
                self.inos[self.core.ino_of(ino)] = ino

    def _record(self, op: str, uid: int, pid: int, path: str, detail: str, result: str = "OK") -> None:
        if self.audit is not None:
            self.audit.record(op, uid, 0, pid, path, "", result, 0, detail)

    # --------------------------------------------------------- recipients

    def add(self, ino: int, value: bytes, uid: int, pid: int) -> None:
        """user.seldon.recipient set on file `ino`: a record (none when an
        open record of that address and content exists already)."""
        rel = self.core.rel_path(ino)
        if rel is None:
            raise OSError(errno.ENOENT, "the file has no name")
        rule = self.for_dir(posixpath.dirname(rel))
        if rule is None or not rule.distribution:
            self._refused(rel, uid, pid, "not in a folder with a distribution rule")
        fd = self.core.node_fd(ino)
        st = os.fstat(fd)
        if not stat_m.S_ISREG(st.st_mode):
            self._refused(rel, uid, pid, "not a regular file")
        if uid not in (0, st.st_uid, os.geteuid()):
            log.info("%s: recipient refused: uid %d is not the file's owner", rel, uid)
            raise OSError(errno.EPERM, "only the file's owner, the store's owner or root may set a recipient")
        try:
            name, address = parse_recipient(value)
        except ValueError as e:
            self._refused(rel, uid, pid, str(e))
        digest, size = self._checksum(ino)
        rid = self.catalog.open_distribution(st.st_ino, address, digest)
        if rid is None:
            now = time.time_ns()
            rid = self.catalog.add_distribution({
                "path": rel, "ino": st.st_ino, "sha256": digest, "size": size, "name": name, "address": address,
                "sent_ns": now, "set_by": uid, "status": "sent", "status_ns": now, "downloads": 0,
                "expires_ns": now + int(rule.distribution_expiry * 1e9), "outcome": "",
            })
        self.inos[ino] = st.st_ino
        self._record("distribute", uid, pid, rel, f"record {rid}")  # the address stays in the catalog only

    def _refused(self, rel: str, uid: int, pid: int, why: str) -> None:
        log.info("%s: recipient refused: %s", rel, why)
        raise OSError(errno.EINVAL, why)

    def _checksum(self, ino: int) -> tuple[str, int]:
        """The file's checksum as the catalog keeps them, read through the
        content layer (on the request thread: a large file holds it up)."""
        h = self.checksum()
        fd = self.core.open_ino(ino, os.O_RDONLY)
        try:
            content = self.core.content.attach(fd)
            read = reader(content)  # damaged content: an OSError (EIO), not a crash of the request
            size = content.size()
            off = 0
            while off < size:
                chunk = read(off, min(CHUNK, size - off))
                if not chunk:
                    break
                h.update(chunk)
                off += len(chunk)
        finally:
            os.close(fd)
        return h.hexdigest(), size

    # --------------------------------------------------------- opens

    def opening(self, ino: int, flags: int, pid: int) -> None:
        """An open of a tracked file: a download when it can read; a
        change of the file when it can write or truncates."""
        backing = self.inos[ino]
        mode = flags & os.O_ACCMODE
        now = time.time_ns()
        if mode != os.O_RDONLY or flags & os.O_TRUNC:
            self.catalog.distribution_modified(backing, now)
        if mode == os.O_WRONLY:
            return
        ids = self.catalog.count_download(backing, now)
        if not ids:  # its records expired or were closed since
            del self.inos[ino]
            return
        uid = proc_uid(pid)
        self._record("download", -1 if uid is None else uid, pid, self.core.rel_path(ino) or "?",
                     "record " + ", ".join(map(str, ids)))

    def truncating(self, ino: int) -> None:
        self.catalog.distribution_modified(self.inos[ino], time.time_ns())

    # --------------------------------------------------------- names

    def removing(self, parent: int, name: bytes) -> None:
        """`name` goes; if it is the last name of a tracked file, its
        records belong to no file any more."""
        try:
            st = os.stat(name, dir_fd=self.core.node_fd(parent), follow_symlinks=False)
        except OSError:
            return
        self._gone(st)

    def _gone(self, st: os.stat_result) -> None:
        ino = self.core.ino_of(st.st_ino)
        if ino in self.inos and st.st_nlink == 1:
            del self.inos[ino]
            self.catalog.distribution_removed(st.st_ino)

    def renaming(self, new_parent: int, new: bytes, src: os.stat_result) -> None:
        try:
            target = os.stat(new, dir_fd=self.core.node_fd(new_parent), follow_symlinks=False)
        except OSError:
            target = None
        if target is not None and target.st_ino != src.st_ino:
            self._gone(target)  # replaced
        old = self.core.rel_path(self.core.ino_of(src.st_ino))
        self._renaming = None if old is None else (src.st_ino, old)

    def arrived(self, new_parent: int, new: bytes) -> None:
        """After a rename: the records follow their files (a file, or the
        files under a folder)."""
        pending, self._renaming = self._renaming, None
        d = self.core.rel_path(new_parent)
        if pending is None or d is None:
            return
        try:
            st = os.stat(new, dir_fd=self.core.node_fd(new_parent), follow_symlinks=False)
        except OSError:
            return
        src, old = pending
        if st.st_ino != src:
            return
        now = posixpath.join(d, os.fsdecode(new))
        if self.core.ino_of(src) in self.inos:
            self.catalog.distribution_moved(src, now)
            return
        if stat_m.S_ISDIR(st.st_mode):
            for backing, path in self.catalog.distributed_files():
                if path.startswith(old + "/"):
                    self.catalog.distribution_moved(backing, now + path[len(old):])

    # --------------------------------------------------------- status

    def set_status(self, value: bytes, uid: int, pid: int) -> None:
        """`ID STATUS` written to user.seldon.distribution on the mount root."""
        if uid not in (0, os.geteuid()):
            raise OSError(errno.EPERM, "only the store's owner or root may change a distribution")
        parts = value.decode("ascii", "replace").split()
        if len(parts) != 2 or not parts[0].isdigit() or parts[1] not in STATUSES:
            raise OSError(errno.EINVAL, "want 'ID STATUS'")
        rid, status = int(parts[0]), parts[1]
        if not self.catalog.set_distribution_status(rid, status, time.time_ns()):
            raise OSError(errno.ENOENT, f"no record {rid} that is not expired")
        self._record("distribution", uid, pid, "", f"record {rid}: {status}")
        self.load()  # a record opened again counts again
