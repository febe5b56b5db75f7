"""Quarantine: moving an invalid file aside with its reason, and back.

A quarantined file keeps its bytes; its reason and origin go into its
`user.seldon.reason` / `user.seldon.origin` attributes and a catalog row,
so `quarantine list` and fsck find them. Release (the checks are the
engine's) clears both and marks the row. Runs inside the engine's store
scope (`store.Dirs`); the request loop only (core.py).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from datetime import datetime, timezone

from . import xattrs
from .catalog import Catalog, NoSuchRowError
from .policy import quarantine_names
from .store import Dirs
from .versions import Note

log = logging.getLogger(__name__)


class Quarantine:
    def __init__(self, dirs: Dirs, catalog: Catalog, note: Note) -> None:
        self.dirs, self.catalog, self.note = dirs, catalog, note

    def move_in(self, rel: str, qdir: str, reasons: list[str] | tuple[str, ...]) -> str:
        """Move `rel` into `qdir` under a stamped name; returns where it went."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
        reason = "; ".join(reasons)
        with self.dirs:
            for target in quarantine_names(qdir, stamp, os.path.basename(rel)):
                try:
                    self.dirs.rename(rel, target, create_dirs=True)
                    break
                except FileExistsError:
                    continue
            else:
                raise OSError(errno.EEXIST, "no free quarantine name")
            self.dirs.setxattr(target, xattrs.REASON, os.fsencode(reason))
            self.dirs.setxattr(target, xattrs.ORIGIN, os.fsencode(rel))
        self.catalog.add_quarantined(target, rel, reason, time.time_ns())
        log.info("quarantined %s as %s: %s", rel, target, reason)
        self.note("quarantine", rel, target, reason)
        return target

    def origin(self, rel: str | None) -> tuple[int, str]:
        """(row id, origin) of the quarantined file at `rel`; EINVAL if it is not one."""
        try:
            if rel is None:
                raise NoSuchRowError(rel)
            return self.catalog.quarantined(rel)
        except NoSuchRowError:
            raise OSError(errno.EINVAL, "not a quarantined file") from None

    def still_invalid(self, rel: str, qid: int, reasons: list[str]) -> OSError:
        """A release whose checks failed again: the new reason is kept."""
        reason = "; ".join(reasons)
        with self.dirs:
            self.dirs.setxattr(rel, xattrs.REASON, os.fsencode(reason))
        self.catalog.set_quarantine_reason(qid, reason)
        return OSError(errno.EACCES, reason)

    def released(self, rel: str, dest: str, qid: int, force: bool, uid: int) -> None:
        """The file at `rel` was moved back to `dest`: clear its marks."""
        with self.dirs:
            fd = self.dirs.open(dest, os.O_RDONLY)
            try:
                for key in (xattrs.REASON, xattrs.ORIGIN):
                    try:
                        os.removexattr(fd, key)
                    except OSError:
                        pass
            finally:
                os.close(fd)
        self.catalog.mark_released(qid, dest, force, uid)
        log.info("released %s to %s%s (uid %d)", rel, dest, " by force" if force else "", uid)
        self.note("release", rel, dest, f"{'forced ' if force else ''}by uid {uid}")
