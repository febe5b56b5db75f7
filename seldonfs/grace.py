"""The grace period of pre-commit names.

After a commit renames a file, its old name still resolves for `grace`
seconds to where the file went, for processes of the user that wrote it
(uid), so a tool's follow-up chmod/utime/rename by path succeeds, also
when it is another process (`cp x dir/ && chmod 600 dir/x`; tar sets
times after close). Another user finds the name free and never learns
where the file went. A real entry of that name always wins (the lookup
asks here only when the name is missing). Each user has an entry of its
own for a name. Entries are kept in the order they were made, so expired
ones are dropped from the front. Times come from the caller (monotonic
seconds). Trio thread only.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

Key = tuple[int, bytes, int]  # (directory's inode, old name, uid)


@dataclass(slots=True)
class Grace:
    rel: str  # where the file went (a duplicate's: the file it duplicates)
    ino: int
    uid: int  # the user whose processes may follow the old name
    until: float
    parent: int | None = None  # the kernel's inode of its new directory, if it holds it
    name: bytes = b""  # its new name


class GraceTable:
    def __init__(self) -> None:
        self._by_name: OrderedDict[Key, Grace] = OrderedDict()
        self._names: Counter[tuple[int, bytes]] = Counter()  # (parent, name) -> entries, any user
        self._of_ino: dict[int, Key] = {}  # its newest entry

    def __contains__(self, key: tuple[int, bytes]) -> bool:
        return key in self._names

    def target(self, parent: int, name: bytes, uid: int, now: float) -> Grace | None:
        """Where the file once called `name` in `parent` went, for a
        process of user `uid`; None when expired or for another user."""
        key = (parent, name, uid)
        g = self._by_name.get(key)
        if g is None:
            return None
        if g.until < now:
            self._drop(key)
            return None
        return g

    def take_reopened(self, ino: int, uid: int) -> bool:
        """The writer opens its pre-commit name again (O_TRUNC): end that
        name's grace; True when there was one."""
        key = self._of_ino.get(ino)
        g = self._by_name.get(key) if key is not None else None
        if g is None or g.uid != uid or g.ino != ino:
            return False
        self._drop(key)  # type: ignore[arg-type]
        return True

    def add(self, parent: int, name: bytes, g: Grace, now: float) -> None:
        while self._by_name:
            key, first = next(iter(self._by_name.items()))
            if first.until >= now:
                break
            self._drop(key)
        key = (parent, name, g.uid)
        if key in self._by_name:
            self._drop(key)
        self._by_name[key] = g
        self._names[(parent, name)] += 1
        self._of_ino[g.ino] = key

    def _drop(self, key: Key) -> None:
        g = self._by_name.pop(key)
        pn = key[:2]
        self._names[pn] -= 1  # type: ignore[index]
        if self._names[pn] <= 0:  # type: ignore[index]
            del self._names[pn]  # type: ignore[arg-type]
        if self._of_ino.get(g.ino) == key:
            del self._of_ino[g.ino]
