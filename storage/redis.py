"""The Redis client, one per process."""

from __future__ import annotations

from redis.asyncio import Redis

# Longer than any blocking read we make (XREAD waits at most 30 s), so only a dead server times out.
SOCKET_TIMEOUT_SECONDS = 60


def make_redis(url: str) -> Redis:
    return Redis.from_url(
        url, health_check_interval=30, socket_connect_timeout=5, socket_timeout=SOCKET_TIMEOUT_SECONDS
    )
