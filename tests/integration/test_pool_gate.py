"""One provider's pool actors share their upstream limits: two step contexts (two actors) on
one Redis, one fake DashScope."""

from __future__ import annotations

import uuid

import pytest

from pipelines.providers import provider_session
from pipelines.qwen import QwenClient
from pipelines.retry import RetryPolicy
from pipelines.shared_limits import ProviderGate
from pipelines.steps import StepContext, run_step
from storage.objects import ObjectStore
from storage.redis import make_redis
from tests.fakes.dashscope import FakeDashScope

PARAMS = {"prompt": "two actors, one limit", "size": "1328*1328", "seed": 3}


@pytest.fixture(scope="module")
def dashscope():
    with FakeDashScope() as fake:
        yield fake


@pytest.fixture
async def actors(dashscope, settings, tmp_path):
    """Two contexts like two pool actors: each its own Redis connection, one shared key."""
    dashscope.reset()
    key = f"{settings.redis_namespace}:pool-test:{uuid.uuid4().hex}"
    made = []
    async with provider_session(16) as http:
        for _ in range(2):
            gate = ProviderGate(make_redis(settings.redis_url), key, requests_per_minute=60_000)
            slept: list[float] = []
            ctx = StepContext(
                store=ObjectStore(f"file://{tmp_path}"),
                http=http,
                qwen=QwenClient(http, base_url=dashscope.base_url, api_key=dashscope.api_key),
                gates={"qwen": gate},
                retry=RetryPolicy(max_attempts=2, base_seconds=0.01),
            )
            made.append((ctx, gate, slept))
        yield made
        for _, gate, _ in made:
            await gate.aclose()
            await gate.pause.redis.aclose()


async def test_a_429_with_retry_after_pauses_the_other_actors_too(actors, dashscope):
    (first, first_gate, _), (_, second_gate, _) = actors
    dashscope.fail_next(429)  # "Requests rate limit exceeded": DashScope's window clears within a second
    seen_by_the_other_actor: list[float] = []

    async def backoff(seconds: float) -> None:
        # While the first actor waits out the 429, the other actor's gate is closed as well.
        seen_by_the_other_actor.append(await second_gate.pause.remaining())

    first.sleep = backoff
    outcome = await run_step(first, "qwen.generate", PARAMS, {})
    assert outcome.ok, outcome.error_message
    assert len(seen_by_the_other_actor) == 1 and 0 < seen_by_the_other_actor[0] <= 1.0
    assert await first_gate.pause.remaining() == 0, "the pause ends when the retry goes out"
    assert [r.status for r in dashscope.received] == [429, 200]
