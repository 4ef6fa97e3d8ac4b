"""Benchmark: a reservation's cost as its account's history grows.

A reservation reads the account's balance row (kept by the database as entries are added, migration
0007), not the sum of its entries, so its cost should not grow with the account's history. For a
few history sizes this prints the time of a reservation (one job, one transaction, as the ledger
actor makes it for a lone submit), and beside it the sum over the account's entries that a
reservation read before 0007, and still the balance it would have found.

    .venv/bin/python bench/ledger_history.py [--histories 0 10000 100000] [--reservations 200]

Uses the machine's Postgres when DAYGEN_TEST_DATABASE_URL is set, else an embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daygen.settings import Settings  # noqa: E402
from storage import ledger  # noqa: E402
from storage.db import make_engine, make_sessionmaker  # noqa: E402
from storage.models import LedgerEntry  # noqa: E402
from tests.conftest import private_database, service_urls  # noqa: E402


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


async def run(database_url: str, histories: list[int], reservations: int) -> None:
    engine = make_engine(database_url, pool_size=2)
    sessions = make_sessionmaker(engine)
    for history in histories:
        account = uuid.uuid4()
        async with sessions.begin() as session:
            await ledger.append_entry(
                session, account_id=account, kind="grant", amount=Decimal(10**9), idempotency_key=f"grant:{account}"
            )
            # Past jobs: a reservation and its commit each, as the job path leaves them.
            await session.execute(
                text(
                    "WITH past AS (SELECT gen_random_uuid() AS job FROM generate_series(1, :jobs)) "
                    "INSERT INTO ledger_entries (account_id, kind, amount, job_id, idempotency_key) "
                    "SELECT :account, kind, amount, job, kind || ':' || job FROM past "
                    "CROSS JOIN (VALUES ('reserve', -1::numeric), ('commit', 0::numeric)) AS e(kind, amount)"
                ),
                {"account": account, "jobs": history // 2},
            )
        async with engine.connect() as connection:
            await connection.execute(text("ANALYZE ledger_entries"))
            await connection.commit()
        entries_sum = select(func.sum(LedgerEntry.amount)).where(LedgerEntry.account_id == account)
        reserve_ms, sum_ms = [], []
        for _ in range(reservations):
            started = time.perf_counter()
            async with sessions.begin() as session:
                await ledger.reserve(session, account_id=account, job_id=uuid.uuid4(), amount=Decimal(1))
            reserve_ms.append((time.perf_counter() - started) * 1000)
        for _ in range(reservations):
            async with sessions() as session:
                started = time.perf_counter()
                total = await session.scalar(entries_sum)
                sum_ms.append((time.perf_counter() - started) * 1000)
                assert total == await ledger.balance(session, account)
        print(
            f"history {history:>7} entries: reservation p50 {statistics.median(reserve_ms):.2f} ms, "
            f"p99 {pct(reserve_ms, 99):.2f} ms; the sum of the entries alone (before 0007) "
            f"p50 {statistics.median(sum_ms):.2f} ms",
            flush=True,
        )
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--histories", type=int, nargs="+", default=[0, 10_000, 100_000])
    parser.add_argument("--reservations", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dgb-") as tmp, service_urls(Path(tmp)) as (pg_url, _):
        with private_database(pg_url) as url:
            asyncio.run(run(Settings(database_url=url).database_url, args.histories, args.reservations))


if __name__ == "__main__":
    main()
