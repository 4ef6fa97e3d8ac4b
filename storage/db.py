"""The async SQLAlchemy engine and session factory, one per process."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

import asyncpg
from sqlalchemy import Table, bindparam, column, event, func, make_url, select
from sqlalchemy.dialects.postgresql import ARRAY, Insert, insert
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.sql.expression import TableValuedAlias
from sqlalchemy.types import TypeEngine

log = logging.getLogger("daygen.db")


def make_engine(
    database_url: str, pool_size: int = 10, max_overflow: int = 0, *, plan_each_time: bool = False
) -> AsyncEngine:
    """A pool of `pool_size` connections kept open, plus `max_overflow` opened for a burst and closed
    after it. Actors under steady load take none: they wait for a connection (back-pressure) rather
    than each opening and closing one of their own, which costs far more than the query it is for.

    `plan_each_time`: every statement is planned for its parameters and the tables as they are now
    (`plan_cache_mode`), for statements whose best plan changes as a table fills. Otherwise a
    prepared statement may settle on a generic plan made while a table was nearly empty and keep
    it, however the table grows, until the next ANALYZE. Planning costs CPU each time, so only
    such statements should run on it."""
    settings = {"plan_cache_mode": "force_custom_plan"} if plan_each_time else {}
    engine = create_async_engine(
        database_url, pool_size=pool_size, max_overflow=max_overflow, connect_args={"server_settings": settings}
    )
    event.listen(engine.sync_engine, "checkout", _drop_if_closed_by_server)
    return engine


def _drop_if_closed_by_server(dbapi_connection, _record, _proxy) -> None:
    """A pooled connection the server closed (a restart, a terminated backend) is dropped at checkout
    and another one taken or opened. asyncpg knows without asking the server; SQLAlchemy's
    `pool_pre_ping` asks it, at three round trips per transaction (bench/db_checkout.py)."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on the same pool for lone reads, in autocommit: a read is one round trip, not three
    (BEGIN, the read, ROLLBACK as the session closes). Each statement is its own transaction, so never
    for statements that belong together, nor for writes."""
    return async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


def unnest_rows(name: str, columns: Sequence[tuple[str, TypeEngine]], prefix: str = "") -> TableValuedAlias:
    """Rows given as one array parameter per column (named `<prefix><column>`), as the table `name`
    (`unnest`): the SQL is the same for any number of rows, so it is compiled and prepared once."""
    arrays = [bindparam(prefix + column_name, type_=ARRAY(type_)) for column_name, type_ in columns]
    return func.unnest(*arrays).table_valued(*(column(n, t) for n, t in columns)).render_derived(name=name)


@functools.cache
def insert_unnested(table: Table, columns: tuple[tuple[str, TypeEngine], ...]) -> Insert:
    """Many rows in one INSERT, built once per table and columns: `columns` given as
    `unnest_rows("new", columns)`, the table's own defaults for the rest (an `executemany` runs a
    statement per row)."""
    rows = unnest_rows("new", columns)
    names = [name for name, _ in columns]
    return insert(table).from_select(names, select(*(rows.c[name] for name in names)))


async def database_now(session: AsyncSession) -> datetime:
    """The database's clock: the one `now()` stamps rows with."""
    return (await session.execute(select(func.now()))).scalar_one()


def is_unique_violation(exc: Exception) -> bool:
    """True for Postgres error 23505, however the driver wraps it."""
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) == "23505" or getattr(orig, "pgcode", None) == "23505"


async def listen(database_url: str, channel: str, notified: Callable[[str], None], retry_seconds: float = 1.0) -> None:
    """Call `notified(payload)` on every NOTIFY on `channel` (they arrive as the notifying transaction
    commits), and `notified("")` on every (re)connection for what was sent while nobody listened.
    Runs until canceled; a lost connection is opened again, so callers that also poll now and then
    miss nothing."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    while True:
        try:
            connection = await asyncpg.connect(dsn)
            try:
                closed = asyncio.Event()
                connection.add_termination_listener(lambda _, closed=closed: closed.set())
                await connection.add_listener(channel, lambda _c, _pid, _channel, payload: notified(payload))
                notified("")
                await closed.wait()
            finally:
                await connection.close()
        except Exception:  # whatever broke the connection, listen again: callers poll meanwhile
            log.warning("lost the database notifications; polling until they are back", exc_info=True)
        await asyncio.sleep(retry_seconds)
