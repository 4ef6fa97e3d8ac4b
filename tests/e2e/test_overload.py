"""A replica whose database connections are all busy answers 503 with Retry-After, not a 500."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from storage.db import make_sessionmaker
from tests.e2e.helpers import api_without_actors, assert_v1_error, bearer, signup


async def test_a_replica_out_of_database_connections_is_503_try_again(settings):
    tiny = create_async_engine(settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with api_without_actors(settings) as (client, services):
            headers = bearer((await signup(client))["accessToken"])
            services.sessions = make_sessionmaker(tiny)
            async with tiny.connect() as held:  # the replica's only connection, busy
                await held.execute(text("SELECT 1"))
                response = await client.get("/v1/jobs", headers=headers)
                assert_v1_error(response, 503, "overloaded")
                assert response.headers["retry-after"] == "1"
            assert (await client.get("/v1/jobs", headers=headers)).status_code == 200, "fine once one is free"
    finally:
        await tiny.dispose()
