"""Temporary names left behind in checked folders.

A temporary name (`[policy] temp_patterns`: rsync's `.name.XXXX`, an
editor's `name~`, a download's `name.part`) never commits, so that tools
which write under one and rename to the final name work. Left in place, it
would be a way around the checks: a file created or moved under such a name
into a folder with a commit rule is remembered here, and once nothing has
changed it for `[policy] temp_max_age` (and no handle writes it) it commits
like any other file: checked, named, or quarantined. Only files that came
through this mount are known; fsck reports the others.

`due()` is pure bookkeeping over the caller's clock and stat; the engine
commits what it returns. Trio thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

MAX_KNOWN = 100_000  # names remembered at most (the oldest are forgotten first)


class Leftovers:
    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._known: dict[int, tuple[str, int]] = {}  # ino -> (path when seen, uid of the writer)

    def __len__(self) -> int:
        return len(self._known)

    def seen(self, ino: int, rel: str, uid: int) -> None:
        """File `ino` sits under a temporary name at `rel`, written by user `uid`."""
        if len(self._known) >= MAX_KNOWN:
            del self._known[next(iter(self._known))]
        self._known[ino] = (rel, uid)

    def due(self, now: float, where: Callable[[int, str], tuple[str, float] | None],
            busy: Callable[[int], bool]) -> Iterator[tuple[int, str, int]]:
        """(ino, path, uid) of the remembered files whose last change
        (`where(ino, rel)` -> (path now, mtime), None when gone) is
        `max_age` old and that no handle writes. Gone ones are dropped;
        the caller commits (or leaves) the rest, which are dropped too."""
        for ino, (rel, uid) in list(self._known.items()):
            found = where(ino, rel)
            if found is None:
                del self._known[ino]
                continue
            path, mtime = found
            if now - mtime >= self.max_age and not busy(ino):
                del self._known[ino]
                yield ino, path, uid
