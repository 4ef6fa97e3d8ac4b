"""Jobs a minute per account and per provider, counted in the real Redis: a minute's jobs at once,
then one each 60/limit seconds; never more, however many replicas ask at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from pipelines.submit_rates import SubmitRates
from storage.redis import make_redis


@pytest.fixture
async def rates(settings) -> AsyncIterator[SubmitRates]:
    redis = make_redis(settings.redis_url)
    namespace = f"{settings.redis_namespace}:rates:{uuid.uuid4().hex}"
    yield SubmitRates(redis, namespace)
    keys = [key async for key in redis.scan_iter(match=f"{namespace}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def keys_of(rates: SubmitRates) -> list[bytes]:
    return [key async for key in rates.redis.scan_iter(match=f"{rates.namespace}:*")]


async def a_second_passes(rates: SubmitRates, key: str) -> None:
    """As if a second went by: the key's next due time moves a second closer."""
    redis = rates.redis
    await redis.set(key, int(await redis.get(key)) - 1_000_000, keepttl=True)


async def test_a_minutes_jobs_go_at_once_then_one_a_second_at_sixty_a_minute(rates):
    account = str(uuid.uuid4())
    first = await rates.admit([(f"account:{account}", 60)], [("offline",)] * 65, {})
    assert first.jobs == 60 and 0 < first.retry_after <= 1
    assert (await rates.admit([(f"account:{account}", 60)], [("offline",)], {})).jobs == 0
    await a_second_passes(rates, f"{rates.namespace}:submit-rate:account:{account}")
    assert (await rates.admit([(f"account:{account}", 60)], [("offline",)] * 3, {})).jobs == 1
    # Another account has its own minute.
    assert (await rates.admit([(f"account:{uuid.uuid4()}", 60)], [("offline",)] * 60, {})).jobs == 60


async def test_the_wait_is_the_limits_interval(rates):
    account = str(uuid.uuid4())
    assert (await rates.admit([(f"account:{account}", 3)], [("offline",)] * 3, {})).jobs == 3
    refused = await rates.admit([(f"account:{account}", 3)], [("offline",)], {})
    assert refused.jobs == 0 and 19 < refused.retry_after <= 20  # one job each 20 s at 3 a minute


async def test_a_providers_limit_counts_its_jobs_from_every_account_and_no_others(rates):
    limits = {"ideogram": 3}
    jobs = [("ideogram",), ("offline",), ("ideogram",), ("ideogram",), ("ideogram",), ("offline",)]
    answer = await rates.admit([(f"account:{uuid.uuid4()}", None)], jobs, limits)
    assert answer.jobs == 4 and answer.retry_after > 0  # the fourth Ideogram job stops the request there
    assert (await rates.admit([(f"account:{uuid.uuid4()}", None)], [("offline",)] * 10, limits)).jobs == 10
    assert (await rates.admit([(f"account:{uuid.uuid4()}", None)], [("ideogram",)], limits)).jobs == 0


async def test_a_teams_job_counts_against_its_member_and_its_team(rates):
    member, team = f"account:{uuid.uuid4()}", f"org:{uuid.uuid4()}"
    assert (await rates.admit([(member, 10), (team, 3)], [("offline",)] * 5, {})).jobs == 3
    assert (await rates.admit([(member, 10)], [("offline",)] * 10, {})).jobs == 7  # the member's own: 7 left
    other = f"account:{uuid.uuid4()}"
    assert (await rates.admit([(other, None), (team, 3)], [("offline",)], {})).jobs == 0  # the team's are spent


async def test_a_job_counts_against_both_limits_and_only_admitted_jobs_are_counted(rates):
    account = str(uuid.uuid4())
    limits = {"ideogram": 2}
    assert (await rates.admit([(f"account:{account}", 4)], [("ideogram",)] * 3, limits)).jobs == 2
    assert (
        await rates.admit([(f"account:{account}", 4)], [("offline",)] * 3, limits)
    ).jobs == 2  # 2 of the account's 4 were left


async def test_many_replicas_at_once_never_admit_more_than_the_limit(rates, settings):
    account = str(uuid.uuid4())
    replicas = [SubmitRates(make_redis(settings.redis_url), rates.namespace) for _ in range(8)]
    try:
        answers = await asyncio.gather(
            *(replicas[i % 8].admit([(f"account:{account}", 10)], [("qwen",)] * 2, {}) for i in range(20))
        )
    finally:
        for replica in replicas:
            await replica.redis.aclose()
    assert sum(a.jobs for a in answers) == 10


async def test_without_limits_nothing_is_counted(rates):
    assert (await rates.admit([(f"account:{uuid.uuid4()}", None)], [("ideogram",)] * 500, {"qwen": 1})).jobs == 500
    assert await keys_of(rates) == []


async def test_a_chain_counts_once_against_each_of_its_providers_limits(rates):
    limits = {"ideogram": 3, "qwen": 10}
    chain = ("qwen", "ideogram")  # a qwen image, then an Ideogram upscale of it
    answer = await rates.admit([(f"account:{uuid.uuid4()}", None)], [chain] * 4, limits)
    assert answer.jobs == 3 and answer.retry_after > 0  # Ideogram's 3 a minute, though its step comes second
    assert (await rates.admit([(f"account:{uuid.uuid4()}", None)], [("qwen",)] * 7, limits)).jobs == 7
    assert (await rates.admit([(f"account:{uuid.uuid4()}", None)], [("qwen",)], limits)).jobs == 0
