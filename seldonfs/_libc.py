"""The few Linux calls the os module lacks: renameat2, fallocate with
FALLOC_FL_KEEP_SIZE, sync_file_range, syncfs, fstatfs's filesystem type,
and the AT_EMPTY_PATH forms of fchownat and utimensat that act on an
O_PATH descriptor itself (needed for symlinks, which cannot be opened any
other way); and glibc's mallopt.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
EXT4_SUPER_MAGIC = 0xEF53
XFS_SUPER_MAGIC = 0x58465342
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_libc.syncfs.argtypes = [ctypes.c_int]
_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]


def _check(res: int) -> None:
    if res != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def reserve(fd: int, off: int, length: int) -> None:
    """Allocate the backing blocks of [off, off + length) without changing
    the file's size, so a write there cannot then fail for space: ENOSPC or
    EDQUOT here, before anything is overwritten. A filesystem that cannot
    (EOPNOTSUPP) is left to fail at the write."""
    if _libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, off, length) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(e, os.strerror(e))


def punch_hole(fd: int, off: int, length: int) -> None:
    """Make [off, off + length) a hole again (the size stays)."""
    _check(_libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, length))


def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int = 0) -> None:
    _check(_libc.renameat2(olddirfd, old, newdirfd, new, flags))


def fchown_path_fd(fd: int, uid: int, gid: int) -> None:
    """chown the object an O_PATH fd refers to (-1 leaves a field as is)."""
    _check(_libc.fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))


def utimens_path_fd(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """Set times of the object an O_PATH fd refers to; None leaves a time as is."""

    def ts(ns: int | None) -> _Timespec:
        return _Timespec(0, UTIME_OMIT) if ns is None else _Timespec(*divmod(ns, 10**9))

    times = (_Timespec * 2)(ts(atime_ns), ts(mtime_ns))
    _check(_libc.utimensat(fd, b"", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))


def write_behind(fd: int) -> None:
    """Start writing the file's dirty pages to disk, without waiting for
    them (a hint: its errors come back at fsync, as any writeback's)."""
    _libc.sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def write_out(fd: int, off: int, length: int) -> None:
    """Write [off, off + length) of the file to the disk and wait for it,
    without flushing the disk's cache (sync_file_range: the file's size
    and allocation are not written either)."""
    flags = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
    _check(_libc.sync_file_range(fd, off, length, flags))


def fs_type(fd: int) -> int:
    """The magic number of the filesystem that holds `fd` (statfs(2)'s f_type)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86-64; f_type comes first
    _check(_libc.fstatfs(fd, buf))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def syncfs(fd: int) -> None:
    """Write back the dirty data of the filesystem that holds `fd`, and wait."""
    _check(_libc.syncfs(fd))


def keep_freed_memory(mmap_threshold: int, trim_threshold: int) -> bool:
    """glibc's malloc: blocks up to `mmap_threshold` bytes from the heap, and
    up to `trim_threshold` free bytes kept at its top, not given back to
    the kernel at each free. False where the C library has no mallopt
    (not glibc)."""
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
