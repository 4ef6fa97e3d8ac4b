"""The retry policy, with the sleeping recorded instead of done."""

import random

import pytest

from daygen.errors import ContentRejected, ProviderRateLimited, ProviderUnavailable
from pipelines.retry import RetryPolicy, call_with_retries


class Upstream:
    """Answers with the scripted errors in order, then with "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class Clock:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def test_rate_limits_wait_as_told_and_never_fail_the_call():
    upstream, clock = Upstream(*[ProviderRateLimited("429", retry_after=2.0)] * 6), Clock()
    assert await call_with_retries(upstream, RetryPolicy(max_attempts=2), sleep=clock.sleep) == "ok"
    assert clock.slept == [2.0] * 6


async def test_rate_limits_past_the_waiting_budget_give_up_as_unavailable():
    upstream, clock = Upstream(*[ProviderRateLimited("429", retry_after=30.0)] * 5), Clock()
    with pytest.raises(ProviderUnavailable):
        await call_with_retries(upstream, RetryPolicy(rate_limit_budget_seconds=60), sleep=clock.sleep)
    assert clock.slept == [30.0, 30.0]


async def test_outages_back_off_with_jitter_then_fail_after_the_attempt_limit():
    upstream, clock = Upstream(*[ProviderUnavailable("502")] * 10), Clock()
    policy = RetryPolicy(max_attempts=4, base_seconds=1.0, cap_seconds=3.0)
    with pytest.raises(ProviderUnavailable):
        await call_with_retries(upstream, policy, sleep=clock.sleep, rng=random.Random(7))
    assert upstream.calls == 4
    assert len(clock.slept) == 3
    assert all(0 <= wait <= bound for wait, bound in zip(clock.slept, (1.0, 2.0, 3.0), strict=True))


async def test_an_outage_then_success_returns_the_answer():
    upstream, clock = Upstream(ProviderUnavailable("timeout")), Clock()
    assert await call_with_retries(upstream, RetryPolicy(), sleep=clock.sleep) == "ok"
    assert upstream.calls == 2


async def test_other_provider_errors_are_final_at_once():
    upstream, clock = Upstream(ContentRejected("unsafe")), Clock()
    with pytest.raises(ContentRejected):
        await call_with_retries(upstream, RetryPolicy(), sleep=clock.sleep)
    assert (upstream.calls, clock.slept) == (1, [])
