"""Why the filesystem said no: a policy's refusal and a mount's last ones.

A hook that refuses an operation by the folder rules (an extension not
allowed, a size limit, the free-space floor) raises `Refused`: an OSError
with the errno the caller sees and the rule's reason as its text. The FUSE
glue puts that reason in the audit record's detail and in the mount's
`Refusals`, the last `LAST` refusals kept in memory, which a quarantine at
commit joins too. `seldonfs why PATH` reads them from
MOUNT/.seldonfs-refusals.json: everyone may open it and sees the
refusals of their own uid; root and the mount's owner see all of them
(as they may read the audit chain). stats.json carries all of them.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from .records import text as _text  # names that are not UTF-8: \xNN, as the chain writes them

LAST = 100  # refusals kept per mount


class Refused(OSError):
    """A refusal by the folder rules: `Refused(errno.EACCES, reason)`."""

    @property
    def reason(self) -> str:
        return str(self.strerror or "")


@dataclass(frozen=True, slots=True)
class Refusal:
    time: float  # seconds since the epoch
    uid: int  # who was refused (a quarantine: the file's owner)
    pid: int
    op: str  # create, mkdir, rename, link, write, setattr, ..., commit
    path: str  # relative to the mount, as the audit chain writes it (\xNN for bytes that are not UTF-8)
    result: str  # the errno's name the caller saw (OK: a quarantine the writer was not told of)
    reason: str
    path2: str = ""  # a rename's target, the quarantined file's new place


class Refusals:
    """The last LAST refusals of a mount: added on the request loop, read
    by the threads that produce stats.json and refusals.json."""

    def __init__(self, last: int = LAST) -> None:
        self._items: deque[Refusal] = deque(maxlen=last)
        self._lock = threading.Lock()

    def add(self, op: str, uid: int, pid: int, path: str, result: int | str, reason: str, path2: str = "") -> None:
        name = result if isinstance(result, str) else errno.errorcode.get(result, "EIO")
        item = Refusal(time.time(), uid, pid, op, _text(path), name, _text(reason), _text(path2))
        with self._lock:
            self._items.append(item)

    def listing(self, uid: int | None = None) -> list[dict[str, Any]]:
        """Oldest first; `uid`: only that user's."""
        with self._lock:
            items = list(self._items)
        return [asdict(r) for r in items if uid is None or r.uid == uid]

    def document(self, uid: int | None) -> Iterator[bytes]:
        """refusals.json for a reader (`uid` None: all of them)."""
        yield json.dumps({"refusals": self.listing(uid)}, indent=2).encode() + b"\n"
