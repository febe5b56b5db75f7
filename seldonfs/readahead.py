"""Read-ahead of a sequential reader's backing file, from a thread of its own.

A cold sequential read waits for the backing file's pages. The kernel's
own read-ahead of the backing file fetches them, but from the request
that reads, on the reader's CPU: over io_uring that CPU also decrypts and
answers (uring.py). On this VM a cold read now and then runs at half
speed, gocryptfs's too, while the guest kernel spends two to four times
its usual CPU time on the same reads (docs/design.md, "Reading the
backing file further ahead"). `ReadAhead` asks for the backing file's
next stretch (POSIX_FADV_WILLNEED) from a thread of its own, which the
scheduler runs on another CPU: that work is done there while the reading
CPU decrypts.

Only a reader that has read AFTER bytes and goes on where it stopped is
followed, so small files and random reads cost nothing: one hand-over to
the thread per STEP bytes read, and none while WAITING stretches wait for it.
The thread gets a duplicate of the backing descriptor and closes it, so
a handle closed meanwhile changes nothing; what it is asked for is a
hint, and its errors are dropped.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

AFTER = 1 << 20  # a reader is followed once it has read this much (the kernel's read-ahead covers the start)
LEAD = 8 << 20  # how far ahead of the reader the backing file is asked for
STEP = 4 << 20  # in stretches of this many bytes, one hand-over to the thread each
WAITING = 16  # stretches handed over and not yet asked for, at most (each holds a descriptor)


class Reader:
    """Where one handle's reader is: the end of its last read, and how
    far ahead (plain bytes) has been asked for."""

    __slots__ = ("next", "asked")

    def __init__(self, at: int) -> None:
        self.next = at
        self.asked = at


class ReadAhead:
    def __init__(self, backing_offset: Callable[[int], int]) -> None:
        self.backing_offset = backing_offset  # plain offset -> backing offset (the content layer's)
        self._asks: queue.SimpleQueue[tuple[int, int, int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.asked = 0  # stretches handed to the thread

    def read(self, reader: Reader, fd: int, off: int, n: int) -> None:
        """A read of `n` bytes at `off` through backing descriptor `fd`."""
        if off != reader.next:  # a jump: follow from here once it goes on
            reader.next = reader.asked = off + n
            return
        reader.next = off + n
        if reader.next + LEAD <= reader.asked:
            return
        start = max(reader.asked, reader.next)
        reader.asked = start + STEP
        if self._asks.qsize() >= WAITING:
            return  # the thread is behind (a slow disk): this stretch is left to the kernel
        lo = self.backing_offset(start)
        try:
            fd = os.dup(fd)
        except OSError:
            return  # out of descriptors: no hint this time
        if self._thread is None:  # started here, in the daemon (not before it forks)
            thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: the kernel's read-ahead alone
                os.close(fd)
                return
            self._thread = thread
        self._asks.put((fd, lo, self.backing_offset(start + STEP) - lo))
        self.asked += 1

    def _run(self) -> None:
        while True:
            fd, off, length = self._asks.get()
            try:
                os.posix_fadvise(fd, off, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)
