"""Benchmark: what checking a pooled connection costs a transaction.

`storage.db.make_engine` drops a connection the server closed at checkout, from what asyncpg
already knows; SQLAlchemy's `pool_pre_ping` asks the server instead (BEGIN, a ping, ROLLBACK).
This runs small transactions one after another both ways and prints wall time and the CPU of
the client and of its Postgres backend per transaction.

    .venv/bin/python bench/db_checkout.py [--transactions 3000]

Uses the machine's Postgres when DAYGEN_TEST_DATABASE_URL is set, else an embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.db import make_engine, make_sessionmaker  # noqa: E402
from tests.conftest import service_urls  # noqa: E402


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def measure(engine: AsyncEngine, label: str, transactions: int) -> None:
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session:
            backend = psutil.Process(await session.scalar(text("SELECT pg_backend_pid()")))
        client = psutil.Process()
        client_before, backend_before, started = cpu_seconds(client), cpu_seconds(backend), time.perf_counter()
        for _ in range(transactions):
            async with sessions() as session:
                await session.scalar(text("SELECT 1"))
        wall = (time.perf_counter() - started) / transactions * 1000
        client_ms = (cpu_seconds(client) - client_before) / transactions * 1000
        backend_ms = (cpu_seconds(backend) - backend_before) / transactions * 1000
        print(f"{label}: {wall:.3f} ms a transaction; CPU {client_ms:.3f} ms client, {backend_ms:.3f} ms Postgres")
    finally:
        await engine.dispose()


async def run(url: str, transactions: int) -> None:
    url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    for _ in range(2):  # twice each, interleaved: the second round shows the noise
        pinged = create_async_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
        await measure(pinged, "pool_pre_ping         ", transactions)
        await measure(make_engine(url, pool_size=1), "checked at checkout   ", transactions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dgb-") as tmp, service_urls(Path(tmp)) as (pg_url, _):
        asyncio.run(run(pg_url, args.transactions))


if __name__ == "__main__":
    main()
