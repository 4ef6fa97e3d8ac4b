"""Group commit: what arrives during a flush goes out together in the next one."""

from __future__ import annotations

import asyncio

import pytest

from pipelines.batching import Batcher


class Recorder:
    """A flush that records its batches and holds each one until told to go on."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.go_on = asyncio.Event()
        self.started = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.started.set()
        await self.go_on.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [item * 10 for item in items]


async def test_a_lone_call_is_flushed_at_once_and_answered():
    flush = Recorder()
    flush.go_on.set()
    assert await Batcher(flush)(1) == 10
    assert flush.batches == [[1]]


async def test_calls_made_during_a_flush_go_out_together_each_with_its_own_answer():
    flush = Recorder()
    batcher = Batcher(flush)
    first = asyncio.create_task(batcher(1))
    await flush.started.wait()
    later = [asyncio.create_task(batcher(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    flush.go_on.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40]
    assert flush.batches == [[1], [2, 3, 4]]


async def test_a_batch_is_never_larger_than_its_limit():
    flush = Recorder()
    batcher = Batcher(flush, max_size=2)
    first = asyncio.create_task(batcher(0))
    await flush.started.wait()
    later = [asyncio.create_task(batcher(n)) for n in range(1, 6)]
    await asyncio.sleep(0)
    flush.go_on.set()
    await asyncio.gather(first, *later)
    assert flush.batches == [[0], [1, 2], [3, 4], [5]]


async def test_a_failed_flush_fails_its_own_callers_only():
    flush = Recorder()
    flush.fail_with = ValueError("the database went away")
    flush.go_on.set()
    batcher = Batcher(flush)
    with pytest.raises(ValueError, match="went away"):
        await batcher(1)
    flush.fail_with = None
    assert await batcher(2) == 20


async def test_a_caller_that_gives_up_does_not_stop_the_others():
    flush = Recorder()
    batcher = Batcher(flush)
    first = asyncio.create_task(batcher(1))
    await flush.started.wait()
    impatient, patient = asyncio.create_task(batcher(2)), asyncio.create_task(batcher(3))
    await asyncio.sleep(0)
    impatient.cancel()
    flush.go_on.set()
    assert (await first, await patient) == (10, 30)
    assert impatient.cancelled()


async def test_many_items_of_one_caller_are_answered_in_order_sharing_flushes_with_others():
    flush = Recorder()
    batcher = Batcher(flush, max_size=3)
    first = asyncio.create_task(batcher(0))
    await flush.started.wait()
    several = asyncio.create_task(batcher.many([1, 2, 3, 4]))
    single = asyncio.create_task(batcher(5))
    await asyncio.sleep(0)
    flush.go_on.set()
    assert await several == [10, 20, 30, 40]
    assert (await first, await single) == (0, 50)
    assert flush.batches == [[0], [1, 2, 3], [4, 5]]


async def test_many_of_nothing_is_answered_without_a_flush():
    flush = Recorder()
    assert await Batcher(flush).many([]) == []
    assert flush.batches == []


async def test_a_failed_flush_fails_a_caller_of_many():
    flush = Recorder()
    flush.fail_with = ValueError("the database went away")
    flush.go_on.set()
    batcher = Batcher(flush)
    with pytest.raises(ValueError, match="went away"):
        await batcher.many([1, 2])
    flush.fail_with = None
    assert await batcher.many([3]) == [30]
