"""How the dispatcher's claims hand out work: per provider, and fairly between users."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
import sqlalchemy

from daygen.ids import uuid7
from storage import jobs as job_queries
from storage.db import make_engine, make_sessionmaker
from tests.integration.test_job_lifecycle import make_user


async def queue(sessions, owner: uuid.UUID, provider: str, count: int) -> list[uuid.UUID]:
    params = {"prompt": "fair", "width": 64, "height": 64, "seed": 1}
    jobs = [job_queries.NewJob(uuid7(), owner, "offline.generate", provider, params, Decimal(0)) for _ in range(count)]
    async with sessions.begin() as session:
        await job_queries.insert_jobs(session, jobs)
    return [job.id for job in jobs]


async def claim(sessions, provider: str, limit: int) -> list[uuid.UUID]:
    async with sessions() as session:
        return [j.id for j in await job_queries.claim_jobs(session, provider=provider, limit=limit, lease_seconds=60)]


async def test_one_users_backlog_does_not_starve_another_users_single_job(sessions):
    provider = f"fair-{uuid.uuid4().hex[:8]}"  # a pool of its own: other tests' jobs stay out
    heavy, light = await make_user(sessions), await make_user(sessions)
    backlog = await queue(sessions, heavy, provider, 30)
    [single] = await queue(sessions, light, provider, 1)

    first = await claim(sessions, provider, 2)
    assert single in first, "the newcomer's only job is among the first two handed out"
    assert set(first) == {backlog[0], single}
    rest = await claim(sessions, provider, 100)
    assert rest == sorted(backlog[1:]), "then the backlog, oldest first"


async def test_users_take_turns_oldest_job_first(sessions):
    provider = f"fair-{uuid.uuid4().hex[:8]}"
    a, b, c = [await make_user(sessions) for _ in range(3)]
    a_jobs = await queue(sessions, a, provider, 3)
    b_jobs = await queue(sessions, b, provider, 2)
    c_jobs = await queue(sessions, c, provider, 1)

    claims = []
    while batch := await claim(sessions, provider, 2):
        claims.append(set(batch))
    # Each user's oldest job first, then their next, and so on, even when a round is split
    # across claims: a user's running jobs count against their turn, so c waits for no one.
    assert claims == [{a_jobs[0], b_jobs[0]}, {c_jobs[0], a_jobs[1]}, {b_jobs[1], a_jobs[2]}]


async def test_a_claim_takes_only_its_own_providers_jobs(sessions):
    mine, theirs = f"fair-{uuid.uuid4().hex[:8]}", f"fair-{uuid.uuid4().hex[:8]}"
    owner = await make_user(sessions)
    [other] = await queue(sessions, owner, theirs, 1)
    [job] = await queue(sessions, owner, mine, 1)
    assert await claim(sessions, mine, 10) == [job]
    assert await claim(sessions, theirs, 10) == [other]


async def test_queue_depth_counts_waiting_and_running_jobs_per_provider(sessions):
    provider = f"fair-{uuid.uuid4().hex[:8]}"
    owner = await make_user(sessions)
    await queue(sessions, owner, provider, 3)
    await claim(sessions, provider, 1)
    async with sessions() as session:
        load = (await job_queries.provider_load(session))[provider]
    assert (load.queued, load.running) == (2, 1)


async def prepared_claim_plans(engine) -> tuple[int, int]:
    """(generic, custom) plans the connection's prepared claim statement was run with."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                sqlalchemy.text(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                    " WHERE statement LIKE 'WITH running AS MATERIALIZED%'"
                )
            )
        ).one()
    return row.generic_plans, row.custom_plans


@pytest.mark.parametrize("plan_each_time", [True, False])
async def test_claims_on_a_plan_each_time_connection_are_planned_for_the_table_as_it_is(
    quiet_database_url, plan_each_time
):
    """A generic plan made while the jobs table is nearly empty is kept however it grows: on a fresh
    database the first burst of 2,000 jobs was claimed by one statement of minutes. The dispatcher
    claims on connections that plan each claim afresh."""
    url = quiet_database_url.replace("postgresql://", "postgresql+asyncpg://")
    engine = make_engine(url, pool_size=1, plan_each_time=plan_each_time)  # one connection: one prepared claim
    sessions = make_sessionmaker(engine)
    try:
        provider = f"plans-{uuid.uuid4().hex[:8]}"
        owner = await make_user(sessions)
        for _ in range(8):
            [job] = await queue(sessions, owner, provider, 1)
            assert await claim(sessions, provider, 10) == [job]
        generic, custom = await prepared_claim_plans(engine)
    finally:
        await engine.dispose()

    if plan_each_time:
        assert (generic, custom) == (0, 8)
    else:
        assert generic > 0, "past five runs Postgres settles on the generic plan: what plan_each_time is for"
