"""Benchmark: one pass of the dispatcher's reconciliation (`pipelines.jobs.settle_unsettled`) against
a long history of jobs, all ended and settled, as on a platform after months of work.

Prints how long the lookup of unsettled jobs takes for a first pass (every ended job: a dispatcher
starting) and for a later pass (what ended in the last ten minutes), and the cost Postgres plans for
the `id NOT IN (every settled job)` form the lookup had before, which it would not finish.

    .venv/bin/python bench/reconciliation.py [--jobs 500000]

Uses the machine's Postgres when DAYGEN_TEST_DATABASE_URL is set, else an embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daygen.settings import Settings  # noqa: E402
from storage.db import database_now, make_engine, make_sessionmaker  # noqa: E402
from storage.ledger import unsettled_finished_jobs  # noqa: E402
from storage.models import Job, LedgerEntry  # noqa: E402
from tests.conftest import private_database, service_urls  # noqa: E402

HISTORY = """
INSERT INTO jobs (id, owner_id, operation, provider, params, cost, status, progress, attempt, steps_done,
                  created_at, started_at, completed_at)
SELECT gen_random_uuid(), :owner, 'offline.generate', 'offline', '{}', 1, 'succeeded', 100, 1, 1,
       now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
FROM generate_series(1, :jobs);
"""
ENTRIES = """
INSERT INTO ledger_entries (account_id, kind, amount, job_id, idempotency_key)
SELECT owner_id, kind, amount, id, key || ':' || id
FROM jobs, (VALUES ('reserve', 'reserve', -1), ('commit', 'settle', 1)) AS entry(kind, key, amount);
"""


def old_lookup_sql() -> str:
    """The lookup as it was: every settled job gathered, each ended job checked against them."""
    settled = select(LedgerEntry.job_id).where(LedgerEntry.kind.in_(("commit", "release")))
    stmt = (
        select(Job)
        .join(LedgerEntry, LedgerEntry.idempotency_key == func.concat("reserve:", Job.id))
        .where(Job.status.in_(("succeeded", "failed", "canceled")), Job.id.not_in(settled))
        .limit(100)
    )
    return str(stmt.compile(compile_kwargs={"literal_binds": True}))


async def run(url: str, jobs: int) -> None:
    engine = make_engine(url, pool_size=1)
    sessions = make_sessionmaker(engine)
    owner = uuid.uuid4()
    started = time.perf_counter()
    async with sessions.begin() as session:
        await session.execute(
            text("INSERT INTO users (id, email, password_hash, role) VALUES (:owner, :email, '!', 'user')"),
            {"owner": owner, "email": f"{owner}@example.com"},
        )
        await session.execute(text(HISTORY), {"owner": owner, "jobs": jobs})
        await session.execute(text(ENTRIES))
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("VACUUM ANALYZE"))
    print(f"{jobs} ended jobs, {2 * jobs} ledger entries, made in {time.perf_counter() - started:.0f} s")
    async with sessions() as session:
        since = await database_now(session) - timedelta(minutes=10)
        for name, ended_since in (("first pass (every ended job)", None), ("later pass (the last 10 min)", since)):
            times = []
            for _ in range(3):
                started = time.perf_counter()
                found = await unsettled_finished_jobs(session, ended_since=ended_since)
                times.append(time.perf_counter() - started)
            print(f"{name}: {min(times) * 1000:.1f} ms (best of 3), {len(found)} unsettled found")
        plan = "\n".join((await session.execute(text("EXPLAIN " + old_lookup_sql()))).scalars())
        costliest = max(float(cost) for cost in re.findall(r"cost=[\d.]+\.\.([\d.]+)", plan))
        how = "hashed (it fits in work memory)" if "hashed SubPlan" in plan else "read again for every ended job"
        print(f"the former NOT IN lookup, as Postgres plans it: the settled jobs {how}, cost up to {costliest:.3g}")
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=500_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dgr-") as tmp, service_urls(Path(tmp)) as (admin_url, _):
        with private_database(admin_url) as url:
            asyncio.run(run(Settings(database_url=url).database_url, args.jobs))


if __name__ == "__main__":
    main()
