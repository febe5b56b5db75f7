"""What the host tells about disks, mounts, locks and processes.

Readers of statvfs, /proc/self/mounts, /proc/self/mountinfo, /proc/locks and
/proc/PID/{stat,environ}, below every module that asks (the janitor, its
runner, metrics, the mount and the CLI). Each is one read, no state; safe
from any thread.
"""

from __future__ import annotations

import os
from pathlib import Path

FSTYPE = "fuse.seldonfs"


def disk_usage(path: Path | str) -> tuple[float, int, int]:
    """(percent used as df shows it, bytes used, bytes used + available)."""
    v = os.statvfs(path)
    used = (v.f_blocks - v.f_bfree) * v.f_frsize
    total = used + v.f_bavail * v.f_frsize
    return (100.0 * used / total if total else 0.0), used, total


def bytes_over(path: Path | str, percent: int) -> int:
    """How many bytes must go for usage to drop to `percent`."""
    _, used, total = disk_usage(path)
    return max(0, used - total * percent // 100)


def _unescape(field: str) -> str:
    """A path field of /proc/self/mounts or mountinfo (octal escapes)."""
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def find_mount(mountpoint: Path) -> tuple[str, str] | None:
    """(source, fstype) of the mount at `mountpoint`, from /proc/self/mounts."""
    target = os.path.abspath(mountpoint)
    found = None
    with open("/proc/self/mounts") as f:
        for line in f:
            src, mnt, fstype = line.split()[:3]
            if _unescape(mnt) == target:
                found = (_unescape(src), fstype)  # the last one is on top
    return found


def seldonfs_mounts() -> list[tuple[str, str]]:
    """(store, mount point) of every SeldonFS mount, from /proc/self/mounts."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            src, mnt, fstype = line.split()[:3]
            if fstype == FSTYPE:
                out.append((_unescape(src), _unescape(mnt)))
    return out


def mount_device(mountpoint: str) -> str | None:
    """"MAJOR:MINOR" of the mount at `mountpoint`, from /proc/self/mountinfo.
    (Not os.stat: the daemon must never make a syscall on its own mount.)"""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    dev = None
    for line in lines:
        fields = line.split()
        if _unescape(fields[4]) == mountpoint:
            dev = fields[2]  # the last one is on top
    return dev


def locked_inodes(device: str | None) -> set[int]:
    """Inodes of the mount with a flock or fcntl lock, from /proc/locks
    (the kernel keeps the locks of a FUSE mount that does not handle them)."""
    if device is None:
        return set()
    major, minor = (int(x) for x in device.split(":"))
    dev = f"{major:02x}:{minor:02x}:"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    out = set()
    for line in lines:
        for field_ in line.split():
            if field_.startswith(dev):
                out.add(int(field_[len(dev):]))
    return out


def proc_stat(pid: int) -> tuple[str, list[bytes]] | None:
    """A process's name and the fields of /proc/PID/stat after it (field 4,
    the parent's pid, first); None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    comm = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode("utf-8", "replace")
    return comm, stat[stat.rindex(b")") + 2:].split()


def start_time(pid: int) -> int | None:
    """A process's start time in clock ticks after boot (/proc/PID/stat
    field 22); None when there is no such process."""
    ps = proc_stat(pid)
    return None if ps is None else int(ps[1][19])


def job_from_environ(pid: int) -> str | None:
    """SELDON_JOB_ID from the environment process `pid` started with."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    for item in env.split(b"\0"):
        if item.startswith(b"SELDON_JOB_ID="):
            return item[len(b"SELDON_JOB_ID="):].decode("utf-8", "replace")
    return None


def proc_uid(pid: int) -> int | None:
    """The real uid of process `pid` (None: gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
