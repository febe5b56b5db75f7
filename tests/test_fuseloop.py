"""The daemon's request loop: its shortcuts through trio (seldonfs/fuseloop.py),
and the memory it keeps between requests (_libc.keep_freed_memory)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import trio
import trio.testing

from seldonfs.fuseloop import _FastLock


@pytest.mark.trio
async def test_the_fast_lock_lets_one_task_in_at_a_time() -> None:
    lock = _FastLock()
    inside: list[int] = []
    order: list[int] = []

    async def worker(n: int) -> None:
        for _ in range(3):
            async with lock:
                inside.append(n)
                assert len(inside) == 1, inside
                await trio.sleep(0.001)  # switches to the others while holding it
                inside.remove(n)
                order.append(n)

    with trio.fail_after(10):  # a waiter never woken fails, not hangs
        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(worker, n)
    assert sorted(order) == [n for n in range(4) for _ in range(3)]
    assert not lock.held


@pytest.mark.trio
async def test_a_free_fast_lock_is_taken_without_a_checkpoint() -> None:
    lock = _FastLock()
    with trio.testing.assert_no_checkpoints():
        async with lock:
            assert lock.held
    assert not lock.held


@pytest.mark.trio
async def test_the_fast_lock_is_let_go_when_its_holder_fails() -> None:
    lock = _FastLock()
    try:
        async with lock:
            raise ValueError("in the handler")
    except ValueError:
        pass
    assert not lock.held


FAULTS = """
import resource
from seldonfs import _libc
from seldonfs.mount import MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD
assert _libc.keep_freed_memory(MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):  # a write request's data and its sealed blocks, freed after the reply
    a = bytes(1 << 20)
    b = bytearray((1 << 20) + 64 * 28)
    del a, b
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_megabyte_buffers_are_not_given_back_to_the_kernel_between_requests() -> None:
    """Without `keep_freed_memory` glibc gave these pages back at each free
    and faulted them in again: about 52,000 faults for the 200 rounds
    (one per page of a buffer), against under 1,000 with it."""
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 5_000, out.stdout
