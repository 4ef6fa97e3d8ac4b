"""Benchmark: how long the dispatcher's claim takes with a backlog of queued jobs.

A claim ranks every claimable job of a provider (fair share between users), so its cost grows
with the backlog; this prints it for a few backlog sizes, on a freshly filled table (as after a
burst, before autovacuum has analyzed it) and after ANALYZE.

    .venv/bin/python bench/claims.py [--users 50] [--backlogs 500 5000 20000] [--limits 1 10 100]

Uses the machine's Postgres when DAYGEN_TEST_DATABASE_URL is set, else an embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from sqlalchemy import delete, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daygen.ids import uuid7  # noqa: E402
from daygen.settings import Settings  # noqa: E402
from storage import jobs as job_queries  # noqa: E402
from storage.db import make_engine, make_sessionmaker  # noqa: E402
from storage.models import Job, JobEvent, User  # noqa: E402
from tests.conftest import private_database, service_urls  # noqa: E402

CLAIMS = 7


async def claim_ms(sessions, limit: int) -> float:
    """Median of a few claims of `limit` jobs, each rolled back so the backlog stays the same."""
    times = []
    for _ in range(CLAIMS):
        async with sessions() as session:
            started = time.perf_counter()
            claimed = await job_queries.claim_jobs(session, provider="qwen", limit=limit, lease_seconds=30)
            times.append((time.perf_counter() - started) * 1000)
            assert len(claimed) == limit
        async with sessions.begin() as session:  # put them back
            await session.execute(
                text("UPDATE jobs SET status = 'queued', attempt = 0, lease_expires_at = NULL WHERE status = 'running'")
            )
            await session.execute(delete(JobEvent).where(JobEvent.type == "job.started"))
    return statistics.median(times)


async def run(database_url: str, users: int, backlogs: list[int], limits: list[int]) -> None:
    engine = make_engine(database_url, pool_size=2)
    sessions = make_sessionmaker(engine)
    owners = [uuid7() for _ in range(users)]
    async with sessions.begin() as session:
        session.add_all(User(id=o, email=f"claims-{o}@example.com", password_hash="!") for o in owners)
    for backlog in backlogs:
        async with sessions.begin() as session:
            await session.execute(delete(JobEvent))
            await session.execute(delete(Job))
        per_user = backlog // users
        for owner in owners:
            jobs = [
                job_queries.NewJob(uuid7(), owner, "qwen.generate", "qwen", {"prompt": "x"}, Decimal(1))
                for _ in range(per_user)
            ]
            async with sessions.begin() as session:
                await job_queries.insert_jobs(session, jobs)
        fresh = {limit: await claim_ms(sessions, limit) for limit in limits}
        async with engine.connect() as connection:
            await connection.execute(text("ANALYZE jobs"))
            await connection.commit()
        analyzed = {limit: await claim_ms(sessions, limit) for limit in limits}
        figures = ", ".join(f"{limit}: {fresh[limit]:.1f} / {analyzed[limit]:.1f} ms" for limit in limits)
        print(f"backlog {per_user * users} ({users} users), claim of N jobs, fresh / analyzed table: {figures}")
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--backlogs", type=int, nargs="+", default=[500, 5000, 20000])
    parser.add_argument("--limits", type=int, nargs="+", default=[1, 10, 100], help="jobs a claim takes, each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dgb-") as tmp, service_urls(Path(tmp)) as (pg_url, _):
        with private_database(pg_url) as url:
            asyncio.run(run(Settings(database_url=url).database_url, args.users, args.backlogs, args.limits))


if __name__ == "__main__":
    main()
