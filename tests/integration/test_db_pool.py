"""The connection pool against a real Postgres: connections the server closed are not handed out."""

from __future__ import annotations

import asyncpg
from sqlalchemy import text

from storage.db import make_engine, make_sessionmaker
from tests.integration.test_shared_limits import eventually


async def test_a_pooled_connection_the_server_closed_is_replaced_not_handed_out(quiet_database_url):
    url = quiet_database_url.replace("postgresql://", "postgresql+asyncpg://")
    engine = make_engine(url, pool_size=1)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session:
            first = await session.scalar(text("SELECT pg_backend_pid()"))
            pooled = (await (await session.connection()).get_raw_connection()).driver_connection
        # A restart or an operator's pg_terminate_backend closes the connection while it is idle in the pool.
        admin = await asyncpg.connect(quiet_database_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()

        async def noticed() -> bool:
            return pooled.is_closed()

        await eventually(noticed)
        async with sessions() as session:
            second = await session.scalar(text("SELECT pg_backend_pid()"))
        assert second != first, "the next transaction ran on a new connection, without an error"
    finally:
        await engine.dispose()
