"""Shared limits refuse impossible settings before they ever reach Redis."""

import pytest
from redis.asyncio import Redis

from pipelines.shared_limits import SharedInFlightLimiter, SharedRateLimiter

# Nothing listens here: constructing the client and the limiters must not connect.
UNREACHABLE = "redis://127.0.0.1:9/0"


@pytest.mark.parametrize("places", [0, 4])
async def test_a_hold_outside_one_to_capacity_places_is_a_value_error(places):
    limiter = SharedInFlightLimiter(Redis.from_url(UNREACHABLE), "k", capacity=3)
    with pytest.raises(ValueError):
        async with limiter.hold(places):
            pass


@pytest.mark.parametrize("capacity, lease_seconds", [(0, 30.0), (3, 0.0)])
def test_an_in_flight_limiter_needs_a_capacity_and_a_lease(capacity, lease_seconds):
    with pytest.raises(ValueError):
        SharedInFlightLimiter(Redis.from_url(UNREACHABLE), "k", capacity=capacity, lease_seconds=lease_seconds)


@pytest.mark.parametrize("rate, period, burst", [(0, 1.0, 1), (5, 0.0, 1), (5, 1.0, 0)])
def test_a_rate_limiter_needs_a_positive_rate_period_and_burst(rate, period, burst):
    with pytest.raises(ValueError):
        SharedRateLimiter(Redis.from_url(UNREACHABLE), "k", rate=rate, period_seconds=period, burst=burst)


@pytest.mark.parametrize("late", [0.0, -0.05])
def test_a_rate_limiters_allowed_lateness_must_be_positive(late):
    with pytest.raises(ValueError):
        SharedRateLimiter(Redis.from_url(UNREACHABLE), "k", rate=5, max_late_seconds=late)
