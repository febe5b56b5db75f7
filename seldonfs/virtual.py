"""Read-only files the filesystem makes up: MOUNT/.seldonfs-stats.json (every
mount), and system/logs/audit.jsonl and system/monitoring/stats.json where
the tree has those folders.

A virtual file has a fixed inode number far above any the backing
filesystem hands out here, size 0, mode 0400 and the daemon's owner (they
name files of every user, so they are the store owner's and root's to read);
it is opened with direct
I/O, so readers (cat, tail, grep, jq) read until the end of what a
producer yields, generated at open and streamed in order. Writing,
truncating, renaming, removing it fail with EACCES.
"""

from __future__ import annotations

import stat as stat_m
from collections.abc import Callable, Iterator
from dataclasses import dataclass

VIRTUAL_BASE = 1 << 62
#: A mount's numbers at its root, whatever its profile's tree (`seldonfs stats`, `top`, `status` read it).
STATS_NAME = b".seldonfs-stats.json"
MODE = stat_m.S_IFREG | 0o400  # the daemon's user (the store's owner) reads them; no one else
CHUNK = 64 << 10

Producer = Callable[[], Iterator[bytes]]


@dataclass(frozen=True)
class VirtualFile:
    ino: int
    dir: str  # relative to the mount root ("" is the root)
    name: bytes
    produce: Producer
    listed: bool = True  # False: found by its name only, as .zfs is (readdir leaves it out)


class Stream:
    """The content of one open: produced once, in order; memory is what
    the current read needs (a read before the kept part starts over)."""

    def __init__(self, produce: Producer) -> None:
        self.produce = produce
        self.gen: Iterator[bytes] = _chunked(produce())
        self.start = 0
        self.buf = bytearray()

    def read(self, off: int, size: int) -> bytes:
        if off < self.start:
            self.close()
            self.gen, self.start, self.buf = _chunked(self.produce()), 0, bytearray()
        while self.start + len(self.buf) < off + size:
            chunk = next(self.gen, None)
            if chunk is None:
                break
            self.buf += chunk
        if off > self.start:
            del self.buf[: off - self.start]
            self.start = off
        return bytes(self.buf[:size])

    def close(self) -> None:
        close = getattr(self.gen, "close", None)
        if close is not None:
            close()


def _chunked(parts: Iterator[bytes]) -> Iterator[bytes]:
    out = bytearray()
    try:
        for p in parts:
            out += p
            if len(out) >= CHUNK:
                yield bytes(out)
                out.clear()
        if out:
            yield bytes(out)
    finally:
        close = getattr(parts, "close", None)
        if close is not None:
            close()


class Virtual:
    def __init__(self, files: list[VirtualFile]) -> None:
        self.by_ino = {f.ino: f for f in files}
        self.by_dir: dict[str, dict[bytes, VirtualFile]] = {}
        for f in files:
            self.by_dir.setdefault(f.dir, {})[f.name] = f
        self.names = {f.name for f in files}
        self.listing: dict[str, list[bytes]] = {}
        for f in files:
            if f.listed:
                self.listing.setdefault(f.dir, []).append(f.name)

    def find(self, dir_rel: str | None, name: bytes) -> VirtualFile | None:
        if name not in self.names or dir_rel is None:
            return None
        return self.by_dir.get(dir_rel, {}).get(name)

