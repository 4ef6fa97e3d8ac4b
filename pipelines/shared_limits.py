"""Provider limits shared by every pool actor, in any process on any host, through Redis.

An in-process limiter lets N actors each spend the whole allowance, so the provider sees N times
the limit and answers 429. Here the state lives in Redis and changes only inside Lua scripts, which
run atomically and read the Redis server's clock, so host clocks never matter. All keys live under
the `key` prefix the caller passes (which includes the namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from pipelines.batching import Batcher

log = logging.getLogger("daygen.shared_limits")

# Milliseconds of the Redis clock, exact in a Lua double until the year 2286.
_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"

# The places the holders (KEYS[1]) hold, from the places hash (KEYS[4]), as `used`.
_USED = """local used = 0
for _, holder in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  used = used + tonumber(redis.call('HGET', KEYS[4], holder) or 0)
end"""

# KEYS: holders (zset token -> lease end), waiters (zset token -> arrival), waiter leases (zset token -> lease end),
# places (hash token -> places). ARGV: token, places, capacity, lease ms, doorbell channel.
# Reply: {1, 0} when granted, else {0, ms until the next lease runs out or -1}.
_ACQUIRE = f"""
local holders, waiters, leases, places = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, want, capacity, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
{_NOW_MS}
local freed = false
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', holders, '-inf', now)) do
  redis.call('ZREM', holders, gone)
  redis.call('HDEL', places, gone)
  freed = true
end
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
  redis.call('ZREM', leases, gone)
  redis.call('ZREM', waiters, gone)
  redis.call('HDEL', places, gone)
  freed = true
end
if freed then redis.call('PUBLISH', ARGV[5], 'expired') end
if redis.call('ZSCORE', holders, token) then return {{1, 0}} end
{_USED}
local reserved = 0
local head = redis.call('ZRANGE', waiters, 0, 0)[1]
if head and head ~= token then reserved = tonumber(redis.call('HGET', places, head) or 0) end
redis.call('HSET', places, token, want)
if used + reserved + want <= capacity then
  redis.call('ZREM', waiters, token)
  redis.call('ZREM', leases, token)
  redis.call('ZADD', holders, now + lease, token)
  return {{1, 0}}
end
redis.call('ZADD', waiters, 'NX', now, token)
redis.call('ZADD', leases, now + lease, token)
local next_end = -1
for _, zset in ipairs({{holders, leases}}) do
  local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')[2]
  if first and (next_end < 0 or tonumber(first) - now < next_end) then next_end = tonumber(first) - now end
end
return {{0, next_end}}
"""

# KEYS: holders. ARGV: token, lease ms. Reply: 1 when renewed, 0 when the lease was already gone.
# An expired entry nobody has swept yet is safe to renew: no one was granted its places meanwhile.
_RENEW = f"""
{_NOW_MS}
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""

# KEYS: holders, waiters, waiter leases, places. ARGV: token, doorbell channel, capacity, lease ms.
# When places came free or the head of the line left, grants the waiters what now fits, in line order
# and by the rule of _ACQUIRE (the head's places are kept for it), and rings with their tokens.
# Reply: the tokens granted.
_RELEASE = f"""
local holders, waiters, leases, places = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, capacity, lease = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local held = redis.call('ZREM', holders, token)
local rank = redis.call('ZRANK', waiters, token)
redis.call('ZREM', waiters, token)
redis.call('ZREM', leases, token)
redis.call('HDEL', places, token)
if held == 0 and rank ~= 0 then return {{}} end
{_NOW_MS}
{_USED}
local reserved = nil
local granted = {{}}
for _, waiter in ipairs(redis.call('ZRANGE', waiters, 0, -1)) do
  local want = tonumber(redis.call('HGET', places, waiter) or 0)
  if used + (reserved or 0) + want <= capacity then
    redis.call('ZREM', waiters, waiter)
    redis.call('ZREM', leases, waiter)
    redis.call('ZADD', holders, now + lease, waiter)
    used = used + want
    granted[#granted + 1] = waiter
  elseif not reserved then
    reserved = want
  end
end
if #granted > 0 then redis.call('PUBLISH', ARGV[2], 'granted ' .. table.concat(granted, ' ')) end
return granted
"""


class SharedInFlightLimiter:
    """A counting semaphore of `capacity` places (Ideogram counts images in flight) shared through Redis.

    Holders are leases renewed while held, so the places of a killed process come back when its lease
    runs out. Waiters stand in line; the first in line reserves its places, so a stream of small
    requests cannot starve a big one, and smaller ones may still fill the room left after that reservation.
    A release hands the places it frees to the waiters they fit, in line, inside its script, and rings
    a pub/sub doorbell with their tokens: only those wake, and they need no further call (when every
    waiter woke to try again, each release cost a script call per waiter and the hand-over took that
    long). Waiters also look again after a timeout, to notice expired leases and a missed ring.
    Every instance sharing a key must use the same capacity.
    """

    def __init__(self, redis: Redis, key: str, capacity: int = 10, lease_seconds: float = 30.0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.redis = redis
        self.capacity = capacity
        self.lease_seconds = lease_seconds
        self.holders_key = f"{key}:holders"
        self.waiters_key = f"{key}:waiters"
        self.waiter_leases_key = f"{key}:waiter-leases"
        self.places_key = f"{key}:places"
        self.doorbell_channel = f"{key}:doorbell"
        self._keys = [self.holders_key, self.waiters_key, self.waiter_leases_key, self.places_key]
        self._lease_ms = max(1, math.ceil(lease_seconds * 1000))
        self._acquire_script = redis.register_script(_ACQUIRE)
        self._renew_script = redis.register_script(_RENEW)
        self._release_script = redis.register_script(_RELEASE)
        # This instance's waiters by token: each is woken when its token is granted (`granted`), or
        # when all must look again (expired leases, a lost doorbell).
        self._waiting: dict[str, asyncio.Event] = {}
        self._granted: set[str] = set()
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribing = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def hold(self, places: int) -> AsyncIterator[None]:
        """Wait until `places` are free across all instances, hold them for the block, then give them back."""
        if not 1 <= places <= self.capacity:
            raise ValueError(f"places must be between 1 and the capacity {self.capacity}, not {places}")
        token = uuid.uuid4().hex
        try:
            await self._acquire(token, places)
        except BaseException:
            await asyncio.shield(self._release(token))
            raise
        renewal = asyncio.create_task(self._keep_leased(token))
        try:
            yield
        finally:
            renewal.cancel()
            await asyncio.shield(self._release(token))

    async def aclose(self) -> None:
        """Stop listening for the doorbell; holds already granted are unaffected."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener])
            self._listener = None
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None

    async def _acquire(self, token: str, places: int) -> None:
        await self._listen()
        patience = self.lease_seconds / 4
        woken = self._waiting[token] = asyncio.Event()
        try:
            while True:
                woken.clear()  # before trying: a ring that arrives during the try is kept
                got, next_expiry_ms = await self._acquire_script(
                    keys=self._keys, args=[token, places, self.capacity, self._lease_ms, self.doorbell_channel]
                )
                if got or token in self._granted:
                    return
                timeout = patience if next_expiry_ms < 0 else min(patience, next_expiry_ms / 1000 + 0.005)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await woken.wait()
                if token in self._granted:
                    return
        finally:
            del self._waiting[token]
            self._granted.discard(token)

    async def _release(self, token: str) -> None:
        try:
            granted = await self._release_script(
                keys=self._keys, args=[token, self.doorbell_channel, self.capacity, self._lease_ms]
            )
        except RedisError:
            log.warning("could not release in-flight places; their lease will free them", exc_info=True)
            self._wake_all()
            return
        self._grant([t.decode() for t in granted])  # ours, before the ring arrives

    async def _keep_leased(self, token: str) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                if not await self._renew_script(keys=[self.holders_key], args=[token, self._lease_ms]):
                    log.warning("an in-flight lease ran out while held; the limit may be exceeded")
                    return
            except RedisError:
                log.warning("could not renew an in-flight lease", exc_info=True)

    async def _listen(self) -> None:
        """Subscribe once per instance before the first try, so no ring after it is missed."""
        async with self._subscribing:
            if self._listener is not None:
                return
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(self.doorbell_channel)
            self._pubsub = pubsub
            self._listener = asyncio.create_task(self._forward_rings(pubsub))

    async def _forward_rings(self, pubsub: PubSub) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    kind, *tokens = message["data"].decode().split()
                    if kind == "granted":
                        self._grant(tokens)
                    else:  # leases ran out: places may be free for anyone
                        self._wake_all()
                return
            except RedisError:
                log.warning("lost the in-flight doorbell; waiters fall back to their timeout", exc_info=True)
                await asyncio.sleep(1.0)
                # Rings may have been missed while disconnected.
                self._wake_all()

    def _grant(self, tokens: list[str]) -> None:
        """Wake this instance's waiters among `tokens`: they hold their places now."""
        for token in tokens:
            woken = self._waiting.get(token)
            if woken is not None:
                self._granted.add(token)
                woken.set()

    def _wake_all(self) -> None:
        for woken in self._waiting.values():
            woken.set()


# KEYS: theoretical arrival time (TAT, µs), and optionally the pool's pause. ARGV: emission interval µs,
# burst tolerance µs, how many slots. While the pause is set, reserves nothing and replies
# {now, ms of pause left}; else reserves the next slots and replies {now, 0, the new TAT, start of
# each slot...}, in µs of the Redis clock.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if KEYS[2] then
  local paused = redis.call('PTTL', KEYS[2])
  if paused > 0 then return {now, paused} end
end
local interval, tolerance, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or 0), now)
local starts = {}
for i = 1, count do
  starts[i] = math.max(tat - tolerance, now)
  tat = tat + interval
end
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return {now, 0, tat, unpack(starts)}
"""

# KEYS: TAT. ARGV: the TAT a cancelled reservation set, the TAT before it. Only the latest
# reservation can be given back; an earlier one stays spent, which errs on the safe side.
_GIVE_BACK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') return 1 end
return 0
"""


class SharedRateLimiter:
    """At most `rate` requests per `period_seconds` across all instances (GCRA), plus `burst - 1` at once.

    Each call reserves the next free slot in one script call and sleeps until it, so waiters form a
    queue on the Redis clock without polling, and a saturated limiter runs at the full rate. The
    calls of one process that arrive while a script call is out reserve their slots together in the
    next one (group commit). Given the key of a `PoolPause`, the same call waits it out first.

    With `max_late_seconds`, a caller queued more than that ahead that wakes more than that after its
    slot (its process was stalled) takes a new slot instead of going out late: the requests that
    waited through one stall would otherwise all leave at its end, and the provider would count them
    in one second. Callers whose slot was nearer go anyway: no more of them than the rate fits in
    `max_late_seconds` can leave together. (Checking them too sent a busy process's callers, a µs
    from their slots at a high rate, back for new slots again and again: 30 script calls a request.)
    """

    def __init__(
        self,
        redis: Redis,
        key: str,
        rate: float,
        period_seconds: float = 1.0,
        burst: int = 1,
        pause_key: str | None = None,
        max_late_seconds: float | None = None,
    ) -> None:
        if rate <= 0 or period_seconds <= 0:
            raise ValueError("rate and period_seconds must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_late_seconds is not None and max_late_seconds <= 0:
            raise ValueError("max_late_seconds must be positive")
        self.redis = redis
        self.max_late_seconds = max_late_seconds
        self.key = f"{key}:tat"
        self._keys = [self.key] if pause_key is None else [self.key, pause_key]
        # Rounding the interval up keeps the limit a ceiling, never a floor.
        self._interval_us = math.ceil(period_seconds * 1_000_000 / rate)
        self._tolerance_us = (burst - 1) * self._interval_us
        self._reserve = redis.register_script(_RESERVE)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._reserving = Batcher(self._reserve_many, max_size=1000)

    async def _reserve_many(self, asks: list[None]) -> list[tuple[int, int, int]]:
        """(now, slot start, the TAT after the slot) for each ask, or (now, 0, -ms) of a pause."""
        now_us, paused_ms, *reserved = await self._reserve(
            keys=self._keys, args=[self._interval_us, self._tolerance_us, len(asks)]
        )
        if paused_ms > 0:
            return [(now_us, 0, -paused_ms)] * len(asks)
        tat_us, *starts = reserved
        later = len(starts) - 1  # slots after the first
        return [(now_us, start, tat_us - (later - i) * self._interval_us) for i, start in enumerate(starts)]

    async def acquire(self) -> float:
        """Wait for this request's slot; returns the slot's start in seconds of the Redis clock."""
        loop = asyncio.get_running_loop()
        while True:
            now_us, start_us, tat_us = await self._reserving(None)
            if tat_us < 0:  # the pool's pause
                await asyncio.sleep(-tat_us / 1000)
                continue
            if start_us <= now_us:  # open already: nothing to be late for
                return start_us / 1_000_000
            ahead = (start_us - now_us) / 1_000_000
            # The slot on this clock (a reply that sat unread makes it late too, and lateness under-counted).
            due = loop.time() + ahead
            try:
                await asyncio.sleep(ahead)
            except asyncio.CancelledError:
                await asyncio.shield(self._return_slot(tat_us))
                raise
            late = self.max_late_seconds
            if late is None or ahead <= late or loop.time() - due <= late:
                return start_us / 1_000_000
            log.info("woke too late for a rate slot; taking the next free one", extra={"key": self.key})

    async def _return_slot(self, tat_us: int) -> None:
        try:
            await self._give_back(keys=[self.key], args=[tat_us, tat_us - self._interval_us])
        except RedisError:
            log.warning("could not give back a cancelled rate-limit slot", exc_info=True)


# KEYS: pause. ARGV: ms. Extends the pause to at least ARGV[1] ms from now, never shortens it;
# replies with the ms left afterwards.
_EXTEND_PAUSE = """
local left = redis.call('PTTL', KEYS[1])
local want = tonumber(ARGV[1])
if left < want then
  redis.call('SET', KEYS[1], '1', 'PX', want)
  return want
end
return left
"""


class PoolPause:
    """A pause for the whole pool: one upstream 429 with Retry-After holds back every actor until it ends."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = f"{key}:pause"
        self._extend = redis.register_script(_EXTEND_PAUSE)

    async def set(self, seconds: float) -> float:
        """Pause for at least `seconds` from now (a longer pause already set stays); returns the seconds left."""
        ms = math.ceil(seconds * 1000)
        if ms <= 0:
            return await self.remaining()
        return await self._extend(keys=[self.key], args=[ms]) / 1000

    async def remaining(self) -> float:
        return max(await self.redis.pttl(self.key), 0) / 1000

    async def wait(self) -> None:
        """Return once no pause is set; a pause extended meanwhile is waited out too."""
        left_ms = await self.redis.pttl(self.key)
        while left_ms >= 0:
            await asyncio.sleep(max(left_ms, 1) / 1000)
            left_ms = await self.redis.pttl(self.key)


class ProviderOutage:
    """A provider marked down for a while (our key refused, its account out of funds): the pool's
    actors record it, every replica's submit reads it and refuses new jobs until it runs out."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = f"{key}:down"

    async def mark(self, code: str, seconds: float) -> None:
        await self.redis.set(self.key, code, px=max(1, math.ceil(seconds * 1000)))

    async def current(self) -> tuple[str, float] | None:
        """(the error code, seconds left), or None when the provider is not marked down.

        Every submit asks, so the usual answer (not down) is one plain command; the code is read only
        when there is a mark (a MULTI of both cost each submit about 0.3 ms of CPU more)."""
        left_ms = await self.redis.pttl(self.key)
        if left_ms < 0:
            return None
        code = await self.redis.get(self.key)
        if code is None:  # it ran out between the two
            return None
        return (code.decode() if isinstance(code, bytes) else code), left_ms / 1000


# Of a provider's request rate that we use. At DashScope's 20 a second, aiming at 95 % spaces the
# slots so that 20 fit one second exactly, and a single request reaching it a few ms late made 21
# (in about a third of the limits runs on a slow day). At 92.5 % a second holds 21 only if one
# arrives about 80 ms late.
RATE_HEADROOM = 0.925


def allowed_lateness(requests_per_minute: float) -> float:
    """Seconds a request may leave after its rate slot. Late requests land in the provider's next
    second with its own: as many as the headroom leaves room for, less one slot for where the second
    starts, and at least half an interval (at 20 a second that is all the room there is). A timer on
    a busy host wakes some ms late: at high rates the headroom absorbs that, and a stricter bound
    sent most requests back for a new slot."""
    interval = 60.0 / (requests_per_minute * RATE_HEADROOM)
    return max(interval / 2, (1.0 - RATE_HEADROOM) - interval)


class ProviderGate:
    """What every upstream call of one provider passes through, on every actor of its pool:
    a pool-wide pause after a 429, a request-rate slot, and places among the images in flight."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        *,
        max_inflight_images: int | None = None,
        requests_per_minute: float | None = None,
        lease_seconds: float = 30.0,
        outage_seconds: float = 60.0,
    ) -> None:
        self.pause = PoolPause(redis, key)
        self.outage = ProviderOutage(redis, key)
        self.outage_seconds = outage_seconds
        self.inflight = (
            SharedInFlightLimiter(redis, key, capacity=max_inflight_images, lease_seconds=lease_seconds)
            if max_inflight_images
            else None
        )
        # A per-minute limit is also a per-second one (DashScope: RPS = RPM / 60): no bursts. Slots
        # are exact on Redis's clock, but requests reach the provider a little late now and then,
        # and two that bunch count in one second of its sliding window: aim a little under.
        self.rate = (
            SharedRateLimiter(
                redis,
                key,
                rate=requests_per_minute * RATE_HEADROOM,
                period_seconds=60.0,
                pause_key=self.pause.key,
                max_late_seconds=allowed_lateness(requests_per_minute),
            )
            if requests_per_minute
            else None
        )

    @contextlib.asynccontextmanager
    async def call(self, places: int = 0) -> AsyncIterator[None]:
        """Wait out a pause, then hold `places` images in flight and take a rate slot for one request."""
        if self.rate is None or (self.inflight is not None and places):
            await self.pause.wait()  # else the rate slot's script waits it out
        async with contextlib.AsyncExitStack() as held:
            if self.inflight is not None and places:
                await held.enter_async_context(self.inflight.hold(places))
            if self.rate is not None:
                await self.rate.acquire()
            yield

    async def refused(self, code: str) -> None:
        """The upstream refused our key or our account: stop taking new jobs for it for a while."""
        await self.outage.mark(code, self.outage_seconds)

    async def rate_limited(self, retry_after: float | None) -> None:
        """The upstream said 429: hold back the whole pool for as long as it asked."""
        if retry_after:
            await self.pause.set(retry_after)

    async def aclose(self) -> None:
        if self.inflight is not None:
            await self.inflight.aclose()
