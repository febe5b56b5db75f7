"""FUSE over io_uring: the mount's requests served on the CPU they come from.

Over /dev/fuse every request wakes the daemon's one thread, wherever it
sleeps; on a VM a wake-up across vCPUs costs more than a small request's
own work (docs/design.md). Over io_uring (Linux 6.14+) the kernel keeps a
queue per CPU and `_uring.c` serves each from a thread pinned to that CPU:
the request is decoded and run by pyfuse3 on that thread, with the GIL,
and answered in the same system call that fetches the next one.

The mount uses it when `[mount] io_uring` allows (auto: whenever it can)
and `unavailable()` finds nothing missing; otherwise it serves over
/dev/fuse as always. What still arrives on /dev/fuse (INIT, FORGET,
INTERRUPT) goes to pyfuse3's loop on the trio thread.

Concurrency: Core and all under it rely on one request at a time (core.py).
Here they run on the queue threads and on the trio thread (FORGET, the
background tasks, the control API), so they take turns under one lock: the
trio thread holds it except while it waits for I/O (`_Hold`, a trio
instrument), a queue thread takes it for one request. A handler may thus
run outside the trio thread and must not call trio; a task it starts goes
through the trio token (`start_soon`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from . import faults
from .errors import UsageError

log = logging.getLogger(__name__)

PARAM = Path("/sys/module/fuse/parameters/enable_uring")
DISABLED = Path("/proc/sys/kernel/io_uring_disabled")  # 2: for every process
DEPTH = 8  # ring entries a queue: requests of one CPU in flight at once
FORGET_SETTLE_S = 0.01  # how long /dev/fuse's FORGETs gather into one batch (fuseloop.py)


def unavailable() -> str | None:
    """Why this mount cannot serve over io_uring; None when it can."""
    try:
        from . import _uring  # noqa: F401
    except ImportError:
        return "seldonfs was built without its io_uring part (liburing-dev missing when it was installed)"
    if not hasattr(pyfuse3, "_process_raw"):
        return "pyfuse3 lacks contrib/pyfuse3/io-uring-hooks.patch (scripts/setup.sh applies it)"
    try:
        value = PARAM.read_text().strip()
    except OSError:
        return "this kernel has no FUSE over io_uring (Linux 6.14 or later with CONFIG_FUSE_IO_URING)"
    if value != "Y":
        return f"the kernel has FUSE over io_uring switched off ({PARAM} is {value}; root can write Y)"
    try:
        if DISABLED.read_text().strip() == "2":
            return f"io_uring is switched off for every process ({DISABLED} is 2)"
    except OSError:
        pass
    return None


def choose(setting: bool | None) -> tuple[Ring | None, str]:
    """The ring for `[mount] io_uring` (None: "auto"), or None for
    /dev/fuse and why. True and not possible here: UsageError, before
    mounting."""
    if setting is False:
        return None, "[mount] io_uring = false"
    why = unavailable()
    if why is None:
        return Ring(), ""
    if setting:
        raise UsageError(f"[mount] io_uring = true, but {why}")
    log.debug("requests over /dev/fuse: %s", why)
    return None, why


def over_dev_fuse(why: str) -> dict[str, Any]:
    """stats.json's `transport` of a mount without the rings."""
    return {"kind": "dev_fuse", "why": why}


class Ring:
    """The queues of one mount: `install` after pyfuse3.init, `instruments`
    for trio.run, `stop` once trio.run has returned."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.suspended = 0  # handlers that awaited trio: answered EIO
        self._process = pyfuse3._process_raw  # type: ignore[attr-defined]

    def install(self) -> None:
        from . import _uring

        _uring.install(pyfuse3._session_ptr(), self._dispatch, DEPTH,  # type: ignore[attr-defined]
                       *(faults.planned("ring") or ()))

    def answer_absent(self, names: tuple[bytes, ...]) -> Callable[[int, int], None]:
        """Have the queue threads answer a GETXATTR of `names` (bit i:
        names[i]) ENODATA themselves, without the GIL, for an inode whose
        bits say it lacks that one; returns what tells them the bits
        (InodeTable.share_absent). The answers are counted (`absent_answers`)
        but not seen by the handlers: no debug line, no handler time."""
        from . import _uring

        _uring.probed(names)
        return _uring.absent  # type: ignore[no-any-return]

    def absent_answers(self) -> int:
        """GETXATTRs the queue threads answered themselves so far."""
        from . import _uring

        return int(_uring.stats()["absent_answers"])

    def settle(self) -> float:
        """How long /dev/fuse's reader waits before each read (fuseloop.py):
        FORGET_SETTLE_S while only FORGETs come that way."""
        from . import _uring

        return 0.0 if _uring.degraded() else FORGET_SETTLE_S

    def instruments(self) -> list[trio.abc.Instrument]:
        return [_Hold(self.lock)]

    def describe(self, s: dict[str, Any] | None = None) -> dict[str, Any]:
        """stats.json's `transport`: the queues and what came which way
        (`degraded`: requests come over /dev/fuse, or a queue ended;
        `ended`: the queues that ended, whose CPUs' requests wait; `error`:
        a queue's first unexpected error; `requests`: how many came each
        way, and of the rings' how many were GETXATTRs a queue thread
        answered itself, `answer_absent`), from `s`, one reading of
        `_uring.stats()` (None: read now)."""
        from . import _uring

        s = s if s is not None else _uring.stats()
        if not s["accepted"]:
            return over_dev_fuse("the kernel did not offer io_uring" if not s["offered"] else "the INIT reply failed")
        return {"kind": "io_uring", "queues": s["queues"], "sched_idle": bool(s["idle_wait"]),
                "degraded": _uring.degraded(), "ended": s["ended"],
                "error": os.strerror(s["error"]) if s["error"] else None,
                "requests": {"io_uring": s["ring_requests"], "dev_fuse": s["dev_requests"],
                             "absent_xattrs": s["absent_answers"]}}

    def stop(self) -> None:
        from . import _uring

        _uring.stop()
        s = _uring.stats()  # one reading: the log line and the warning tell of the same moment
        d = self.describe(s)
        if d["kind"] != "io_uring":
            log.info("requests over /dev/fuse: %s", d["why"])
            return
        log.info("io_uring: %d requests over %d queues (%s), %d over /dev/fuse", d["requests"]["io_uring"],
                 d["queues"], "waiting as SCHED_IDLE" if d["sched_idle"] else "no SCHED_IDLE: no CAP_SYS_NICE",
                 d["requests"]["dev_fuse"])
        if s["unanswered"] or s["error"] or self.suspended:
            log.warning("io_uring: %d requests answered EIO for want of an answer (%d waited on trio), "
                        "first queue error %d", s["unanswered"], self.suspended, s["error"])

    def _dispatch(self, addr: int, size: int) -> None:
        """One request from a queue thread (_uring.c), with the GIL."""
        with self.lock:
            coro = self._process(addr, size)
            if coro is None:
                return
            try:
                coro.send(None)
            except StopIteration:
                return
            except BaseException:
                log.exception("a request failed outside its handler")
                return
            # It waits on trio, which a queue thread cannot serve. None of
            # SeldonFS's handlers does; the request gets EIO (_uring.c).
            coro.close()
            self.suspended += 1


class _Hold(trio.abc.Instrument):
    """The trio thread holds the lock except while it waits for I/O, and
    lets go when the run ends however it ends (trio calls after_run from a
    `finally`), so that `Ring.stop` can wait for the queue threads."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.held = False

    def before_run(self) -> None:
        self.lock.acquire()
        self.held = True

    def after_io_wait(self, timeout: float) -> None:
        self.before_run()

    def after_run(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()

    def before_io_wait(self, timeout: float) -> None:
        self.after_run()


def start_soon(token: trio.lowlevel.TrioToken, nursery: trio.Nursery, fn: Callable[..., Awaitable[Any]],
               *args: Any) -> None:
    """`nursery.start_soon(fn, *args)` from any thread, for a handler: on
    the trio thread once it runs next. Nothing when the mount is ending."""

    def start() -> None:
        try:
            nursery.start_soon(fn, *args)
        except RuntimeError:  # the nursery has closed
            pass

    try:
        token.run_sync_soon(start)
    except trio.RunFinishedError:
        pass
