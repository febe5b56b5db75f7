"""Fault injection for tests: fail the Nth system call of one kind.

Off in production. Unless `SELDONFS_FAULTS` is set when this module is
first imported, each name below *is* the plain function (`os.pwrite`,
`_libc.reserve`, ...): no check, no cost. The test suite sets it in the
environment of a mount it starts (tests/test_faults.py) and nothing else
reads it; it is documented in docs/design.md ("Faults").

    SELDONFS_FAULTS="KIND:N:ERRNO[,KIND:N:ERRNO...]"   e.g. "pwrite:3:ENOSPC"
    SELDONFS_FAULTS="KIND:N:KILL"   the process kills itself (SIGKILL) there
    SELDONFS_FAULTS="KIND:*:ERRNO"  every call of that kind fails
    SELDONFS_FAULTS="count:FILE"    count the calls of each kind into FILE (JSON)

KIND is one of KINDS. The Nth call of that kind (counting from 1 in this
process) fails with OSError(ERRNO), or ends the process as kill -9 would,
before it does anything; the calls before and after it run as usual.
"catalog" is the engine's batch of file records (commit.py), which fails
as a full database would. "walsync" is the audit writer's fdatasync of the
catalog's WAL; the writer is a process of its own and counts its calls
itself ("count:FILE" counts the daemon's). "synclog" is the daemon's
write-out of audit.synclog at an fsync (synclog.py). "ring" counts the
requests of CPU 0's io_uring queue (_uring.c): its thread ends with ERRNO
after answering the Nth, as on an unexpected error of its ring (no KILL
or "*").

Who calls these names instead of the plain functions: the content layer
(plain and sealed files), fsync of files the mount writes, the store's
renames (a commit, the janitor), and the offline writers of the store's
own files (store.json, audit.key, rekey's copy and journal).
"""

from __future__ import annotations

import errno
import json
import os
import signal
from collections import Counter

from . import _libc

KINDS = ("pwrite", "reserve", "ftruncate", "fsync", "rename", "catalog", "walsync", "synclog", "ring")

_spec = os.environ.get("SELDONFS_FAULTS", "")
_count_file: str | None = None
_plan: dict[str, tuple[int, int]] = {}
for item in filter(None, _spec.split(",")):
    kind, _, rest = item.partition(":")
    if kind == "count":
        _count_file = rest
        continue
    n, _, err = rest.partition(":")
    if kind not in KINDS:
        raise ValueError(f"SELDONFS_FAULTS: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    _plan[kind] = (0 if n == "*" else int(n), -1 if err == "KILL" else getattr(errno, err))
    if kind == "ring" and _plan[kind][0] * _plan[kind][1] <= 0:
        raise ValueError("SELDONFS_FAULTS: ring takes a request number and an errno, not * or KILL")
_calls: Counter[str] = Counter()


def planned(kind: str) -> tuple[int, int] | None:
    """(N, errno) of the fault planned for `kind`, for a part that counts
    its own calls (ring: _uring.c); None when there is none."""
    return _plan.get(kind)


def hit(kind: str) -> None:
    """Count a call of `kind`; raise the planned error if it is the one."""
    _calls[kind] += 1
    if _count_file is not None and kind != "walsync":  # the audit writer's process: the file is the daemon's
        with open(_count_file, "w") as f:
            json.dump(_calls, f)
    planned = _plan.get(kind)
    if planned is not None and planned[0] in (0, _calls[kind]):
        if planned[1] == -1:
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(planned[1], f"{os.strerror(planned[1])} (injected: {kind} call {planned[0]})")


if not _spec:
    pwrite = os.pwrite
    copy_file_range = os.copy_file_range
    ftruncate = os.ftruncate
    fsync = os.fsync
    fdatasync = os.fdatasync
    walsync = os.fdatasync
    write_out = _libc.write_out
    reserve = _libc.reserve
    renameat2 = _libc.renameat2
    replace = os.replace
else:

    def pwrite(fd: int, data, off: int) -> int:
        hit("pwrite")
        return os.pwrite(fd, data, off)

    def copy_file_range(src: int, dst: int, count: int, offset_src: int, offset_dst: int) -> int:
        hit("pwrite")  # a write, as far as the disk is concerned
        return os.copy_file_range(src, dst, count, offset_src, offset_dst)

    def ftruncate(fd: int, size: int) -> None:
        hit("ftruncate")
        os.ftruncate(fd, size)

    def fsync(fd: int) -> None:
        hit("fsync")
        os.fsync(fd)

    def fdatasync(fd: int) -> None:
        hit("fsync")
        os.fdatasync(fd)

    def walsync(fd: int) -> None:
        hit("walsync")
        os.fdatasync(fd)

    def write_out(fd: int, off: int, length: int) -> None:
        hit("synclog")
        _libc.write_out(fd, off, length)

    def reserve(fd: int, off: int, length: int) -> None:
        hit("reserve")
        _libc.reserve(fd, off, length)

    def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int = 0) -> None:
        hit("rename")
        _libc.renameat2(olddirfd, old, newdirfd, new, flags)

    def replace(src, dst) -> None:
        hit("rename")
        os.replace(src, dst)
