"""Benchmark: the ledger's allowance pass against many accounts, most of them on the free plan.

The pass runs every DAYGEN_ALLOWANCE_CHECK_SECONDS (a minute by default). It reads the accounts
marked due (users/organisations.allowance_due_from, through a partial index), so a pass with nothing
due should cost the same with a thousand accounts or a million. Prints the first pass of a month
(every paid account's reset), a pass with nothing due, and one after a burst of signups.

    .venv/bin/python bench/allowance_pass.py [--accounts 1000000] [--paid-every 100]

Uses the machine's Postgres when DAYGEN_TEST_DATABASE_URL is set, else an embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import speed_line  # noqa: E402
from daygen.settings import Settings  # noqa: E402
from storage import allowances  # noqa: E402
from storage.db import make_engine, make_sessionmaker  # noqa: E402
from tests.conftest import private_database, service_urls  # noqa: E402

ALLOWANCES = {"free": Decimal(0), "plus": Decimal(200), "pro": Decimal(1000), "studio": Decimal(4000)}
SIGNUPS = 1000


def add_users(first: int, count: int, paid_every: int) -> str:
    plan = f"CASE WHEN g % {paid_every} = 0 THEN 'plus' ELSE 'free' END"
    return (
        "INSERT INTO users (id, email, password_hash, role, status, created_at, updated_at, plan) "
        f"SELECT gen_random_uuid(), 'allowance-' || g || '@example.com', '!', 'user', 'active', now(), now(), {plan} "
        f"FROM generate_series({first}, {first + count - 1}) g"
    )


async def vacuum(engine: AsyncEngine) -> None:
    """What autovacuum does after so many changed rows (this machine's Postgres runs without it): the
    marks cleared leave the index, and the planner learns that few accounts are marked due now."""
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("VACUUM ANALYZE users"))


async def timed_pass(sessions, now: datetime) -> tuple[float, int]:
    started = time.perf_counter()
    done = await allowances.reset_due(sessions, ALLOWANCES, now)
    return (time.perf_counter() - started) * 1000, len(done)


async def run(url: str, accounts: int, paid_every: int) -> None:
    engine = make_engine(url, pool_size=2)
    sessions = make_sessionmaker(engine)
    started = time.perf_counter()
    async with sessions.begin() as session:
        await session.execute(text(add_users(1, accounts, paid_every)))
    await vacuum(engine)
    print(f"{accounts:,} accounts made in {time.perf_counter() - started:.1f} s, one in {paid_every} on a paid plan")
    ms, resets = await timed_pass(sessions, datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC))
    print(f"first pass of January (every account new to it): {resets:,} resets in {ms / 1000:.1f} s")
    await vacuum(engine)
    for _ in range(3):
        ms, resets = await timed_pass(sessions, datetime(2027, 1, 2, tzinfo=UTC))
        print(f"a pass with nothing due: {ms:.1f} ms ({resets} resets)")
    async with sessions.begin() as session:
        await session.execute(text(add_users(accounts + 1, SIGNUPS, paid_every)))
    ms, resets = await timed_pass(sessions, datetime(2027, 1, 2, tzinfo=UTC))
    print(f"a pass after {SIGNUPS:,} signups: {ms:.1f} ms ({resets} resets)")
    ms, resets = await timed_pass(sessions, datetime(2027, 2, 1, 0, 0, 5, tzinfo=UTC))
    print(f"first pass of February: {resets:,} resets in {ms / 1000:.1f} s")
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--paid-every", type=int, default=100)
    args = parser.parse_args()
    print(speed_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="dga-") as tmp:
        with service_urls(Path(tmp)) as (admin_url, _), private_database(admin_url) as url:
            database_url = Settings(_env_file=None, database_url=url, jwt_secret="x" * 32).database_url
            asyncio.run(run(database_url, args.accounts, args.paid_every))


if __name__ == "__main__":
    main()
