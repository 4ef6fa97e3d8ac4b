"""The Redis client, one per process."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

# Longer than any blocking read we make (XREAD waits at most 30 s), so only a dead server times out.
SOCKET_TIMEOUT_SECONDS = 60
# A burst of callers (two thousand jobs ending at once) waits for a connection, up to this long,
# instead of failing with "Too many connections".
MAX_CONNECTIONS = 256
CONNECTION_WAIT_SECONDS = 20


def make_redis(url: str) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=CONNECTION_WAIT_SECONDS,
        health_check_interval=30,
        socket_connect_timeout=5,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
    )
    return Redis.from_pool(pool)  # the client owns its pool: aclose() closes it
