"""The async SQLAlchemy engine and session factory, one per process."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def make_engine(database_url: str, pool_size: int = 10, max_overflow: int = 0) -> AsyncEngine:
    """A pool of `pool_size` connections kept open, plus `max_overflow` opened for a burst and closed
    after it. Actors under steady load take none: they wait for a connection (back-pressure) rather
    than each opening and closing one of their own, which costs far more than the query it is for."""
    return create_async_engine(database_url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_unique_violation(exc: Exception) -> bool:
    """True for Postgres error 23505, however the driver wraps it."""
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) == "23505" or getattr(orig, "pgcode", None) == "23505"
