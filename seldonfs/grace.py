"""The grace period of pre-commit names.

After a commit renames a file, its old name still resolves for `grace`
seconds, for the process that wrote it only, so the tool's follow-up
chmod/utime/rename by path succeeds (tar sets times after close). Entries
are kept in the order they were made, so expired ones are dropped from the
front. Times come from the caller (monotonic seconds). Trio thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class Grace:
    rel: str  # where the file went
    ino: int
    pid: int
    until: float
    parent: int | None = None  # the kernel's inode of its new directory, if it holds it
    name: bytes = b""  # its new name


class GraceTable:
    def __init__(self) -> None:
        self._by_name: OrderedDict[tuple[int, bytes], Grace] = OrderedDict()
        self._of_ino: dict[int, tuple[int, bytes]] = {}  # its newest entry

    def __contains__(self, key: tuple[int, bytes]) -> bool:
        return key in self._by_name

    def target(self, parent: int, name: bytes, pid: int, now: float) -> Grace | None:
        """Where the file once called `name` in `parent` went, for the
        process that wrote it; None when expired or for another process."""
        g = self._by_name.get((parent, name))
        if g is None:
            return None
        if g.until < now:
            del self._by_name[(parent, name)]
            return None
        return g if g.pid == pid else None

    def take_reopened(self, ino: int, pid: int) -> bool:
        """The writer opens its pre-commit name again (O_TRUNC): end that
        name's grace; True when there was one."""
        key = self._of_ino.get(ino)
        g = self._by_name.get(key) if key is not None else None
        if g is None or g.pid != pid or g.ino != ino:
            return False
        del self._by_name[key]  # type: ignore[arg-type]
        return True

    def add(self, parent: int, name: bytes, g: Grace, now: float) -> None:
        while self._by_name:
            first = next(iter(self._by_name.values()))
            if first.until >= now:
                break
            _, old = self._by_name.popitem(last=False)
            self._of_ino.pop(old.ino, None)
        self._by_name[(parent, name)] = g
        self._by_name.move_to_end((parent, name))
        self._of_ino[g.ino] = (parent, name)
