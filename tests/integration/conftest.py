"""Integration tests get a database of their own: the e2e app's dispatcher never polls it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.db import make_engine, make_sessionmaker
from tests.conftest import private_database


@pytest.fixture(scope="session")
def quiet_database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    with private_database(server_urls[0]) as url:
        yield url


@pytest.fixture
async def sessions(quiet_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(quiet_database_url.replace("postgresql://", "postgresql+asyncpg://"), pool_size=2)
    yield make_sessionmaker(engine)
    await engine.dispose()
