"""The request loop's shortcuts through trio (seldonfs/fuseloop.py)."""

from __future__ import annotations

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
