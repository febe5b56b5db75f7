"""Kept versions of files: the copies in data/.seldon/versions and their rows.

A version is a copy of the file's backing bytes (same block format, so
verify, decrypt and rekey cover it) under a random name, with the catalog
row's facts also in its `user.seldon.version` attribute, from which fsck
rebuilds the row. `keep` copies are kept per path, the oldest go first.
Runs inside the engine's store scope (`store.Dirs`); the request loop only
(core.py).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat as stat_m
import time
from collections.abc import Callable

from . import xattrs
from .catalog import Catalog
from .store import PRIVATE_DIR, VERSIONS_DIR, Dirs, copy_sparse

Note = Callable[..., None]  # (op, path, path2="", detail="") into the audit chain


class Versions:
    def __init__(self, dirs: Dirs, catalog: Catalog, plain_size: Callable[[int], int], note: Note) -> None:
        self.dirs, self.catalog, self.plain_size, self.note = dirs, catalog, plain_size, note

    def save(self, rel: str, keep: int, cause: str) -> None:
        """Keep the current content of file `rel` as its newest version."""
        with self.dirs:
            stored = secrets.token_hex(16)
            src = self.dirs.open(rel, os.O_RDONLY)
            try:
                st = os.fstat(src)
                size = self.plain_size(st.st_size)
                if size == 0:
                    return
                dst = os.open(stored, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                              dir_fd=self.dirs.get(VERSIONS_DIR))
                saved_ns = time.time_ns()
                try:
                    copy_sparse(src, dst)
                    # what the catalog row says, kept with the copy: fsck rebuilds from it
                    os.setxattr(dst, xattrs.VERSION_OF, json.dumps([rel, saved_ns, cause, st.st_ino]).encode())
                finally:
                    os.close(dst)
            finally:
                os.close(src)
            self.catalog.add_version(rel, stored, saved_ns, size, cause, st.st_ino)
            self.note("version", rel, detail=f"{cause}, {size} bytes kept")
            for vid, name, *_ in self.catalog.versions(rel, st.st_ino)[keep:]:
                self._unlink(name)
                self.catalog.delete_version(vid)

    def _unlink(self, stored: str) -> None:
        try:
            os.unlink(stored, dir_fd=self.dirs.get(VERSIONS_DIR))
        except FileNotFoundError:
            pass

    def listing(self, rel: str, ino: int) -> list[dict]:
        """What `user.seldon.versions` shows of file `ino` (its backing
        inode) at `rel`: n (1 = newest), saved_ns, size, cause."""
        return [
            {"n": i + 1, "saved_ns": ns, "size": size, "cause": cause}
            for i, (_, _, ns, size, cause) in enumerate(self.catalog.versions(rel, ino))
        ]

    def restore(self, rel: str, n: int, keep: int, owner: os.stat_result) -> None:
        """Put version `n` (1 = newest) of the file `owner` (its stat) at
        `rel` back, with its owner and mode; the current content becomes a
        version. The restored file is a new inode: the versions follow it."""
        rows = self.catalog.versions(rel, owner.st_ino)
        if not 1 <= n <= len(rows):
            raise OSError(errno.EINVAL, "no such version")
        stored = rows[n - 1][1]
        with self.dirs:
            src = os.open(stored, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dirs.get(VERSIONS_DIR))
            # The copy becomes a new file that replaces the old one, as an
            # editor's save does: the kernel's cached pages belong to the old
            # inode, so no cache has to be dropped under anyone's feet.
            tmp = f"{PRIVATE_DIR}/restore-{secrets.token_hex(8)}"
            try:
                if keep:
                    self.save(rel, keep, "restore")
                dst = self.dirs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                try:
                    copy_sparse(src, dst)
                    os.fchown(dst, owner.st_uid, owner.st_gid)
                    os.fchmod(dst, stat_m.S_IMODE(owner.st_mode))
                    new_ino = os.fstat(dst).st_ino
                finally:
                    os.close(dst)
                self.dirs.rename(tmp, rel, create_dirs=False, replace=True)
                self.catalog.move_versions(rel, owner.st_ino, new_ino)
            finally:
                os.close(src)
        self.note("restore", rel, detail=f"version {n}")
