"""The connection pool against a real Postgres: connections the server closed are not handed out, and
read sessions share it without leaving their autocommit behind."""

from __future__ import annotations

import asyncpg
from sqlalchemy import text

from storage.db import make_engine, make_read_sessionmaker, make_sessionmaker
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


async def test_a_read_session_runs_each_statement_alone_and_leaves_its_connection_transactional(quiet_database_url):
    url = quiet_database_url.replace("postgresql://", "postgresql+asyncpg://")
    engine = make_engine(url, pool_size=1)  # one connection: the read session's is the next session's
    reads, sessions = make_read_sessionmaker(engine), make_sessionmaker(engine)
    current = text("SELECT txid_current()")  # a transaction's id: the same for all its statements
    try:
        async with reads() as session:
            first, second = await session.scalar(current), await session.scalar(current)
            read_on = await session.scalar(text("SELECT pg_backend_pid()"))
        assert second > first, "each read was a transaction of its own"
        async with sessions() as session:
            first, second = await session.scalar(current), await session.scalar(current)
            assert await session.scalar(text("SELECT pg_backend_pid()")) == read_on
        assert second == first, "the same connection, back in the pool, runs sessions in one transaction again"
    finally:
        await engine.dispose()
