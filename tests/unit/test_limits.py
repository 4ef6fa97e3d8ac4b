"""The in-flight limiter: images, not requests, hold places."""

import asyncio

import pytest

from pipelines.limits import InFlightLimiter


async def test_a_request_waits_until_its_images_fit():
    limiter = InFlightLimiter(5)
    release_big = asyncio.Event()
    entered: list[str] = []

    async def request(name: str, places: int, release: asyncio.Event | None = None) -> None:
        async with limiter.hold(places):
            entered.append(name)
            if release is not None:
                await release.wait()

    big = asyncio.create_task(request("four", 4, release_big))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(request("two", 2))
    await asyncio.sleep(0)
    assert entered == ["four"] and limiter.in_flight == 4

    release_big.set()
    await asyncio.gather(big, waiting)
    assert entered == ["four", "two"]
    assert (limiter.in_flight, limiter.peak) == (0, 4)


async def test_many_concurrent_requests_never_pass_the_capacity():
    limiter = InFlightLimiter(3)
    gate = asyncio.Event()

    async def request() -> None:
        async with limiter.hold(1):
            await gate.wait()

    tasks = [asyncio.create_task(request()) for _ in range(10)]
    await asyncio.sleep(0)
    assert limiter.in_flight == 3
    gate.set()
    await asyncio.gather(*tasks)
    assert limiter.peak == 3


async def test_a_request_bigger_than_the_capacity_still_runs_alone():
    limiter = InFlightLimiter(2)
    async with limiter.hold(8):
        assert limiter.in_flight == 2


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        InFlightLimiter(0)
