"""A faster way for pyfuse3's request loop to wait on /dev/fuse, under trio.

pyfuse3 reaches trio only through its module attribute ``pyfuse3.trio`` (its
asyncio support swaps that attribute the same way, see pyfuse3/asyncio.py).
Its worker loop, per request, takes a `trio.Lock` and awaits
`trio.lowlevel.wait_readable(fd)`. Both always pass through trio's scheduler,
even when the lock is free and a request is already queued: two scheduler
rounds (two epoll_wait calls, an epoll_ctl and a task switch) per request,
around 40 % of the daemon's time for a metadata-heavy load such as untar.

`install()` puts a namespace in that attribute that is trio, except:

- ``Lock``: takes and releases a free lock without a scheduler round and
  without trio.Lock's bookkeeping of its owner;
- ``lowlevel.wait_readable``: if the FUSE device already has a request, or
  gets one within `spin_us` microseconds of polling, returns without a
  scheduler round; otherwise waits through trio as before.

The Go runtime behind gocryptfs spins in the same way before it parks an idle
thread. To keep other trio tasks (signal handling, background work) running
under a steady stream of requests, the fast path yields to the scheduler at
least every `YIELD_EVERY` requests and every `YIELD_AFTER_S` seconds.

Over io_uring (uring.py) the device carries little but FORGETs, and the
opposite pays: waiting `settle()` seconds once the device is readable, before
the read, lets the kernel gather the forgets of a burst (an `rm -rf`,
evicted inodes) into one BATCH_FORGET, which wakes the trio thread and
takes the request loop's lock once instead of once per file. `settle` says
0 once requests come this way again (the ring was refused, or a queue
ended).

Thread safety: like trio itself, for the trio thread only.
"""

from __future__ import annotations

import select
import time
import types
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

YIELD_EVERY = 64
YIELD_AFTER_S = 0.002


class _FastLock:
    """A mutex for trio tasks at the cost of a flag when it is free.

    pyfuse3 takes its read lock once per request; `trio.Lock` records and
    checks the owning task at each take and release (1.4 us a request
    against 0.3). Mutual exclusion needs no more than the flag: trio tasks
    switch only at an await, and there is none between the test and the
    set. A task that finds it taken parks until the holder lets go (the
    mount runs one worker, so none does; mount.py)."""

    __slots__ = ("held", "_waiting")

    def __init__(self) -> None:
        self.held = False
        self._waiting = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        while self.held:
            await self._waiting.park()
        self.held = True

    async def __aexit__(self, *exc: Any) -> None:
        self.held = False
        if self._waiting:
            self._waiting.unpark()


class _Waiter:
    def __init__(self, spin_us: int, settle: Callable[[], float] | None) -> None:
        self.spin_s = spin_us / 1e6
        self.settle = settle
        self.fast_count = 0
        self.last_yield = time.perf_counter()
        self.poller: select.poll | None = None
        self.fd = -1

    def _ready(self, fd: int) -> bool:
        if fd != self.fd:
            self.poller = select.poll()
            self.poller.register(fd, select.POLLIN)
            self.fd = fd
        assert self.poller is not None
        if self.poller.poll(0):
            return True
        if self.spin_s:
            deadline = time.perf_counter() + self.spin_s
            while time.perf_counter() < deadline:
                if self.poller.poll(0):
                    return True
        return False

    async def wait_readable(self, fd: int) -> None:
        if self.settle is not None and (delay := self.settle()):
            # in this order: terminate() (notify_closing) reaches a task
            # in wait_readable, not one asleep
            await trio.lowlevel.wait_readable(fd)
            await trio.sleep(delay)
            return
        now = time.perf_counter()
        if (
            self.fast_count < YIELD_EVERY
            and now - self.last_yield < YIELD_AFTER_S
            and self._ready(fd)
        ):
            self.fast_count += 1
            return
        self.fast_count = 0
        await trio.lowlevel.wait_readable(fd)
        self.last_yield = time.perf_counter()


def install(spin_us: int, settle: Callable[[], float] | None = None) -> None:
    waiter = _Waiter(spin_us, settle)
    lowlevel = types.SimpleNamespace(**vars(trio.lowlevel))
    lowlevel.wait_readable = waiter.wait_readable
    shim = types.SimpleNamespace(**{k: getattr(trio, k) for k in dir(trio) if not k.startswith("__")})
    shim.lowlevel = lowlevel
    shim.Lock = _FastLock
    pyfuse3.trio = shim  # type: ignore[attr-defined]


def uninstall() -> None:
    pyfuse3.trio = trio  # type: ignore[attr-defined]
