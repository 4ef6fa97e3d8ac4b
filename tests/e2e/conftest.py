"""End-to-end fixtures shared by every story."""

from __future__ import annotations

import pytest

from storage.redis import make_redis
from tests.e2e.helpers import make_admin, make_user


@pytest.fixture
async def admin(client, sessions) -> dict:
    """A new admin account: headers, id, email."""
    return await make_admin(client, sessions)


@pytest.fixture
async def user(client) -> dict:
    """A new account: headers, id, email (stories with users of another shape define their own)."""
    return await make_user(client)


@pytest.fixture(autouse=True)
async def no_provider_left_marked_down(settings):
    """A story that makes a provider refuse our key marks it down for a while: not for the next story."""
    yield
    redis = make_redis(settings.redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{settings.redis_namespace}:pool:*:down")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
