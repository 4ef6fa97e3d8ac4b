"""How a pool retries one upstream call: rate limits wait as told, outages back off with jitter.

A 429 is never a failure by itself: the call waits for Retry-After (or the backoff) and tries
again, bounded only by a total wait budget. 5xx, timeouts and broken connections count
against a small attempt limit. Every other provider error is final at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from daygen.errors import ProviderRateLimited, ProviderUnavailable

log = logging.getLogger("daygen.retry")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_seconds: float = 0.5
    cap_seconds: float = 20.0
    rate_limit_budget_seconds: float = 600.0

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(failures-1))]."""
        return rng.uniform(0, min(self.cap_seconds, self.base_seconds * 2 ** (failures - 1)))


_JITTER = random.Random()  # seeding one per call cost more than a provider call's own Python


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    rng = rng or _JITTER
    failures = 0
    waited_for_limits = 0.0
    while True:
        try:
            return await call()
        except ProviderRateLimited as exc:
            delay = exc.retry_after if exc.retry_after is not None else policy.backoff(failures + 1, rng)
            if waited_for_limits + delay > policy.rate_limit_budget_seconds:
                raise ProviderUnavailable("the provider kept rate limiting us past our waiting budget") from exc
            waited_for_limits += delay
            log.info("provider rate limited; waiting", extra={"wait_s": delay})
            await sleep(delay)
        except ProviderUnavailable:
            failures += 1
            if failures >= policy.max_attempts:
                raise
            delay = policy.backoff(failures, rng)
            log.info("provider unavailable; backing off", extra={"attempt": failures, "wait_s": delay})
            await sleep(delay)
