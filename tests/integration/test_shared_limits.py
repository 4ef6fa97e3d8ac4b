"""Provider limits shared through the real Redis by several actors, each with its own connection."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from pipelines.shared_limits import PoolPause, ProviderGate, SharedInFlightLimiter, SharedRateLimiter
from storage.redis import make_redis

ROOT = Path(__file__).resolve().parents[2]
CAPACITY = 10


@pytest.fixture
async def prefix(settings) -> AsyncIterator[str]:
    """Keys of one test, removed afterwards."""
    prefix = f"{settings.redis_namespace}:limits:{uuid.uuid4().hex}"
    yield prefix
    redis = make_redis(settings.redis_url)
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


@pytest.fixture
async def connect(settings) -> AsyncIterator[Callable[[], Redis]]:
    """A new Redis client per simulated actor, closed after the test."""
    clients: list[Redis] = []

    def new_client() -> Redis:
        clients.append(make_redis(settings.redis_url))
        return clients[-1]

    yield new_client
    for client in clients:
        await client.aclose()


@pytest.fixture
async def limiters(prefix, connect) -> AsyncIterator[Callable[..., SharedInFlightLimiter]]:
    """In-flight limiters on one key, one per simulated actor."""
    made: list[SharedInFlightLimiter] = []

    def new_limiter(capacity: int = CAPACITY, lease_seconds: float = 30.0) -> SharedInFlightLimiter:
        made.append(SharedInFlightLimiter(connect(), prefix, capacity=capacity, lease_seconds=lease_seconds))
        return made[-1]

    yield new_limiter
    for limiter in made:
        await limiter.aclose()


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """For states nothing announces (in Redis, in Postgres): look every 10 ms, for 5 s at most."""
    async with asyncio.timeout(5):
        while True:
            if await check():
                return
            await asyncio.sleep(0.01)


async def nothing_left(limiter: SharedInFlightLimiter) -> bool:
    keys = (limiter.holders_key, limiter.waiters_key, limiter.waiter_leases_key, limiter.places_key)
    return await limiter.redis.exists(*keys) == 0


# Children for the tests across real processes; they run `python -c` in the repository root.


def child_holds_at_random(redis_url: str, prefix: str, counter_key: str, seed: str, requests: str) -> None:
    """Print "ready", wait for a line on stdin, run the requests, print the most places seen in flight."""
    print("ready", flush=True)
    sys.stdin.readline()

    async def run() -> int:
        redis = make_redis(redis_url)
        limiter = SharedInFlightLimiter(redis, prefix, capacity=CAPACITY)
        rng = random.Random(int(seed))
        peak = 0

        async def request(places: int, seconds: float) -> None:
            nonlocal peak
            async with limiter.hold(places):
                peak = max(peak, await redis.incrby(counter_key, places))
                await asyncio.sleep(seconds)
                await redis.decrby(counter_key, places)

        await asyncio.gather(*(request(rng.randint(1, 4), rng.uniform(0.05, 0.15)) for _ in range(int(requests))))
        await limiter.aclose()
        await redis.aclose()
        return peak

    print(asyncio.run(run()), flush=True)


def child_holds_until_killed(redis_url: str, prefix: str, lease_seconds: str) -> None:
    """Take every place, print "held", then hold them (renewing the lease) until killed."""

    async def run() -> None:
        limiter = SharedInFlightLimiter(
            make_redis(redis_url), prefix, capacity=CAPACITY, lease_seconds=float(lease_seconds)
        )
        async with limiter.hold(CAPACITY):
            print("held", flush=True)
            await asyncio.Event().wait()

    asyncio.run(run())


async def start_child(function: str, *args: str) -> asyncio.subprocess.Process:
    code = f"import sys; from tests.integration.test_shared_limits import {function}; {function}(*sys.argv[1:])"
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )


@contextlib.asynccontextmanager
async def children(*started: Awaitable[asyncio.subprocess.Process]) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    processes = list(await asyncio.gather(*started))
    try:
        yield processes
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(30):
        return (await process.stdout.readline()).decode().strip()


# In-flight places


async def test_thirty_requests_over_three_actors_fill_the_capacity_and_never_pass_it(limiters):
    actors = [limiters() for _ in range(3)]
    rng = random.Random(20240611)
    inside = peak = 0

    async def request(limiter: SharedInFlightLimiter, places: int, seconds: float) -> None:
        nonlocal inside, peak
        async with limiter.hold(places):
            inside += places
            peak = max(peak, inside)
            await asyncio.sleep(seconds)
            inside -= places

    async with asyncio.timeout(30):
        await asyncio.gather(*(request(actors[i % 3], rng.randint(1, 4), rng.uniform(0.05, 0.15)) for i in range(30)))
    assert peak <= CAPACITY
    assert peak == CAPACITY
    assert await nothing_left(actors[0])


async def test_requests_from_three_processes_never_pass_the_capacity(settings, prefix, limiters):
    counter_key = f"{prefix}:in-flight-counter"
    started = (
        start_child("child_holds_at_random", settings.redis_url, prefix, counter_key, str(seed), "10")
        for seed in (1, 2, 3)
    )
    async with children(*started) as processes:
        assert [await line(p) for p in processes] == ["ready"] * 3
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        peaks = [int(await line(p)) for p in processes]
        assert [await p.wait() for p in processes] == [0, 0, 0]
    assert max(peaks) <= CAPACITY
    assert max(peaks) >= CAPACITY - 3
    assert await nothing_left(limiters())


async def hold_until(limiter: SharedInFlightLimiter, places: int, entered: asyncio.Event, leave: asyncio.Event) -> None:
    async with limiter.hold(places):
        entered.set()
        await leave.wait()


def is_waiting(limiter: SharedInFlightLimiter) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await limiter.redis.exists(limiter.waiters_key))

    return check


async def test_a_live_holder_keeps_its_places_past_its_lease(limiters):
    holder, waiter = limiters(lease_seconds=0.3), limiters()
    entered = asyncio.Event()
    released = False

    async def hold_for_several_leases() -> None:
        nonlocal released
        async with holder.hold(CAPACITY):
            entered.set()
            await asyncio.sleep(1.0)
            released = True

    holding = asyncio.create_task(hold_for_several_leases())
    await entered.wait()
    async with asyncio.timeout(10):
        async with waiter.hold(1):
            assert released
    await holding


async def test_a_killed_holder_gives_its_places_back_when_its_lease_runs_out(settings, prefix, limiters):
    waiter = limiters()
    entered, leave = asyncio.Event(), asyncio.Event()
    async with children(start_child("child_holds_until_killed", settings.redis_url, prefix, "1.0")) as [holder]:
        assert await line(holder) == "held"
        waiting = asyncio.create_task(hold_until(waiter, 3, entered, leave))
        await eventually(is_waiting(waiter))
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        killed = time.monotonic()
        assert not entered.is_set()
        async with asyncio.timeout(10):
            await entered.wait()
    # The child renewed its lease at most a third of a lease before it was killed.
    assert time.monotonic() - killed > 0.3
    leave.set()
    await waiting
    assert await nothing_left(waiter)


async def test_a_release_wakes_a_waiter_in_another_actor_at_once(limiters):
    holder, waiter = limiters(), limiters()
    held, release, entered, leave = (asyncio.Event() for _ in range(4))
    holding = asyncio.create_task(hold_until(holder, CAPACITY, held, release))
    await held.wait()
    waiting = asyncio.create_task(hold_until(waiter, 1, entered, leave))
    await eventually(is_waiting(waiter))
    released = time.monotonic()
    release.set()
    await holding
    # Without the doorbell the waiter would sleep a quarter lease (7.5 s) before looking again.
    async with asyncio.timeout(10):
        await entered.wait()
    assert time.monotonic() - released < 2.0
    leave.set()
    await waiting


async def test_a_release_hands_its_places_to_the_waiters_in_line_without_each_asking_again(limiters):
    """Ten waiters in two actors behind a full limiter: each release grants the next in line inside its
    own script and wakes only that one. When a release woke every waiter to try again, a hand-over
    cost a script call per waiter still in line: 55 more tries here."""
    actors = [limiters(capacity=1), limiters(capacity=1)]
    tries = 0
    for limiter in actors:
        script = limiter._acquire_script

        async def counted(*args, script=script, **kwargs):
            nonlocal tries
            tries += 1
            return await script(*args, **kwargs)

        limiter._acquire_script = counted
    held, release = asyncio.Event(), asyncio.Event()
    holding = asyncio.create_task(hold_until(actors[0], 1, held, release))
    await held.wait()
    order: list[int] = []

    async def wait_in_line(n: int) -> None:
        async with actors[n % 2].hold(1):
            order.append(n)
            await asyncio.sleep(0.01)

    waiting = []
    for n in range(10):
        waiting.append(asyncio.create_task(wait_in_line(n)))
        await eventually(lambda n=n: in_line(actors[0], n + 1))
    tries_before = tries
    release.set()
    await holding
    async with asyncio.timeout(10):
        await asyncio.gather(*waiting)
    assert order == list(range(10))
    assert tries == tries_before  # the waiters got their places without asking again
    assert await nothing_left(actors[0])


async def in_line(limiter: SharedInFlightLimiter, count: int) -> bool:
    return await limiter.redis.zcard(limiter.waiters_key) == count


async def test_a_big_request_is_not_starved_by_a_stream_of_small_ones(limiters):
    small_actors, big_actor = [limiters(capacity=4) for _ in range(3)], limiters(capacity=4)
    churning, stop = asyncio.Event(), asyncio.Event()
    rounds = inside = peak = 0

    async def churn(limiter: SharedInFlightLimiter) -> None:
        nonlocal rounds, inside, peak
        while not stop.is_set():
            async with limiter.hold(1):
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0.02)
                inside -= 1
            rounds += 1
            if rounds >= 10:
                churning.set()

    churners = [asyncio.create_task(churn(limiter)) for limiter in small_actors]
    await churning.wait()
    async with asyncio.timeout(10):
        async with big_actor.hold(4):
            inside += 4
            peak = max(peak, inside)
            inside -= 4
    stop.set()
    await asyncio.gather(*churners)
    assert peak <= 4
    assert await nothing_left(big_actor)


async def test_cancelling_a_waiter_leaves_no_places_taken(limiters):
    holder, waiter = limiters(), limiters()
    held, release, entered, leave = (asyncio.Event() for _ in range(4))
    holding = asyncio.create_task(hold_until(holder, CAPACITY, held, release))
    await held.wait()
    waiting = asyncio.create_task(hold_until(waiter, 3, entered, leave))
    await eventually(is_waiting(waiter))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not entered.is_set()
    assert await waiter.redis.exists(waiter.waiters_key, waiter.waiter_leases_key) == 0
    assert await waiter.redis.hlen(waiter.places_key) == 1

    release.set()
    await holding
    assert await nothing_left(waiter)
    async with asyncio.timeout(5):
        async with waiter.hold(CAPACITY):
            pass


async def test_cancelling_a_holder_gives_its_places_back(limiters):
    holder, other = limiters(), limiters()
    held = asyncio.Event()
    holding = asyncio.create_task(hold_until(holder, CAPACITY, held, asyncio.Event()))
    await held.wait()
    holding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holding
    assert await nothing_left(holder)
    async with asyncio.timeout(5):
        async with other.hold(CAPACITY):
            pass


async def test_more_places_than_the_capacity_is_refused_before_touching_redis(limiters):
    limiter = limiters()
    with pytest.raises(ValueError):
        async with limiter.hold(CAPACITY + 1):
            pass
    assert await nothing_left(limiter)


# Request rate (GCRA)


async def test_sixty_requests_from_three_actors_keep_to_twenty_per_second_and_use_it(prefix, connect):
    rate, burst = 20, 1
    actors = [SharedRateLimiter(connect(), prefix, rate=rate, period_seconds=1.0, burst=burst) for _ in range(3)]
    started = time.monotonic()
    async with asyncio.timeout(30):
        slots = sorted(await asyncio.gather(*(actors[i % 3].acquire() for i in range(60))))
    elapsed = time.monotonic() - started

    for i, first in enumerate(slots):
        assert bisect.bisect_right(slots, first + 1.0) - i <= rate + burst
    span = slots[-1] - slots[0]
    assert (len(slots) - burst) / span >= 0.9 * rate
    # The callers really waited for their slots (how closely they follow them under load: bench/).
    assert elapsed >= span - 0.005


async def test_requests_held_up_by_a_stalled_process_take_new_slots_instead_of_leaving_together(prefix, connect):
    rate = 20
    limiter = SharedRateLimiter(connect(), prefix, rate=rate, period_seconds=1.0, max_late_seconds=0.025)
    let_out: list[float] = []

    async def request() -> None:
        await limiter.acquire()
        let_out.append(time.monotonic())

    async def stall() -> None:
        await asyncio.sleep(0.2)
        time.sleep(0.3)  # noqa: ASYNC251 -- blocking on purpose: a starved process, no task runs meanwhile

    async with asyncio.timeout(30):
        await asyncio.gather(stall(), *(request() for _ in range(40)))

    assert len(let_out) == 40, "a late request is sent later, not dropped"
    let_out.sort()
    # What the provider would count: never more than its rate in any second, stall or not.
    busiest = max(bisect.bisect_right(let_out, first + 1.0) - i for i, first in enumerate(let_out))
    assert busiest <= rate + 1, busiest  # +1: a closed window holds both ends
    assert let_out[-1] - let_out[0] >= 1.95 + 0.25, "the slots missed in the stall were taken again at the end"


async def test_at_a_high_rate_a_busy_process_does_not_send_requests_back_for_new_slots(prefix, connect):
    gate = ProviderGate(connect(), prefix, requests_per_minute=60_000_000)
    script = gate.rate._reserve
    reserved = []

    async def counted(**kwargs):
        reserved.append(kwargs["args"][2])
        return await script(**kwargs)

    gate.rate._reserve = counted

    async def request() -> None:
        async with gate.call():
            # Building and sending the request: the 2,000 take the process 0.2 s or more in all, so
            # most wake well after their slots.
            time.sleep(0.0001)  # noqa: ASYNC251 -- blocking on purpose

    async with asyncio.timeout(30):
        await asyncio.gather(*(request() for _ in range(2000)))
    # Their slots were µs apart and µs ahead: leaving late, they are still no more than the rate.
    assert sum(reserved) == 2000, "one slot each"


async def test_a_burst_goes_at_once_and_the_next_request_waits_its_turn(prefix, connect):
    limiter = SharedRateLimiter(connect(), prefix, rate=2, period_seconds=1.0, burst=3)
    started = time.monotonic()
    slots = [await limiter.acquire() for _ in range(3)]
    assert time.monotonic() - started < 0.5
    slots.append(await limiter.acquire())
    assert slots[3] - slots[0] >= 0.5


async def test_requests_of_one_process_reserve_their_slots_together_each_its_own(prefix, connect):
    limiter = SharedRateLimiter(connect(), prefix, rate=100, period_seconds=1.0, burst=3)
    script = limiter._reserve
    calls = []
    reserved = asyncio.Event()

    async def counted(**kwargs):
        calls.append(kwargs["args"][2])
        answer = await script(**kwargs)
        reserved.set()
        return answer

    limiter._reserve = counted
    ten = asyncio.gather(*(limiter.acquire() for _ in range(10)))
    await reserved.wait()
    # Asked as soon as the ten are reserved, while the limiter's key (it lives until the next free
    # slot, 80 ms ahead) is surely there: after the ten have waited for their slots, 10 ms are left.
    eleventh = await limiter.acquire()
    slots = sorted(await ten)
    assert calls == [10, 1], "ten asked at once: one round trip"
    gaps = [round((b - a) * 1000, 3) for a, b in zip(slots, slots[1:], strict=False)]
    # A burst of three at once, then one every 10 ms; the next request queues after the last.
    assert gaps[:2] == [0, 0] and all(g == 10 for g in gaps[2:]), gaps
    assert eleventh - slots[-1] == pytest.approx(0.01, abs=1e-6)


async def test_a_cancelled_wait_gives_its_slot_back(prefix, connect):
    limiter = SharedRateLimiter(connect(), prefix, rate=2, period_seconds=1.0)
    first = await limiter.acquire()
    waiting = asyncio.create_task(limiter.acquire())

    async def reserved_twice() -> bool:
        return int(await limiter.redis.get(limiter.key) or 0) >= round(first * 1_000_000) + 1_000_000

    await eventually(reserved_twice)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # Had the slot stayed spent, the next one would start a whole second after the first.
    assert await limiter.acquire() - first < 1.0


# Pool pause


async def test_a_pause_holds_every_actor_until_it_ends(prefix, connect):
    setter, waiter = PoolPause(connect(), prefix), PoolPause(connect(), prefix)
    started = time.monotonic()
    assert await setter.set(0.3) == pytest.approx(0.3)
    assert 0 < await waiter.remaining() <= 0.3
    async with asyncio.timeout(5):
        await waiter.wait()
    assert time.monotonic() - started >= 0.295
    assert await waiter.remaining() == 0


async def test_a_shorter_pause_does_not_shorten_a_longer_one(prefix, connect):
    pause = PoolPause(connect(), prefix)
    await pause.set(30)
    assert await pause.set(0.1) > 29
    assert await pause.remaining() > 29
    assert await pause.set(60) == 60
    assert await pause.remaining() > 59


async def test_waiting_without_a_pause_returns_at_once(prefix, connect):
    pause = PoolPause(connect(), prefix)
    assert await pause.remaining() == 0
    async with asyncio.timeout(1):
        await pause.wait()


async def test_a_rate_slot_is_not_given_out_during_the_pools_pause(prefix, connect):
    pause = PoolPause(connect(), prefix)
    # One slot a second: the limiter's key lives until its next slot, long enough to read it back
    # (at 1,000 a second it lived 2 ms, less than the reads below take on a loaded machine).
    limiter = SharedRateLimiter(connect(), prefix, rate=1, period_seconds=1.0, pause_key=pause.key)
    await pause.set(0.3)
    async with asyncio.timeout(5):
        slot = await limiter.acquire()
    next_slot = await limiter.redis.get(limiter.key)
    redis_now = await limiter.redis.time()
    # The slot was reserved once the pause had ended, on the Redis clock (no earlier slot was taken).
    assert await pause.remaining() == 0
    assert redis_now[0] + redis_now[1] / 1e6 - slot < 0.1
    assert int(next_slot) == pytest.approx(slot * 1_000_000 + 1_000_000, abs=1)
