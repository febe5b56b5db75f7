"""STORE/audit.reserve: disk space held back so the audit chain can still
be stored when the disk fills up.

The mount's audit writer makes the file (`SIZE` bytes, allocated, not
sparse) when it starts, deletes it when SQLite reports the disk full and
stores the batch in the room it frees, and makes it again once the disk
has `4 * SIZE` free: the same idea as the blocks ext4 keeps for root. One
writer process owns it; nothing else touches it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

NAME = "audit.reserve"
SIZE = 4 << 20  # a few thousand batches of records, with SQLite's WAL and checkpoints


class Reserve:
    def __init__(self, root: Path) -> None:
        self.path = root / NAME

    def ensure(self) -> None:
        """Make the reserve if it is missing and the disk has room for it
        and more (a failure leaves it missing: tried again later)."""
        if self.path.exists():
            return
        st = os.statvfs(self.path.parent)
        if st.f_bavail * st.f_frsize < 4 * SIZE:
            return
        tmp = self.path.with_name(NAME + ".part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, SIZE)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def release(self) -> bool:
        """Give the space back to the disk; False when there was none held."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True
