"""Provider steps without Ray: the pool's polling of DashScope tasks and its failure handling."""

from __future__ import annotations

import pytest
from PIL import Image

from pipelines.providers import provider_session
from pipelines.qwen import QwenClient
from pipelines.retry import RetryPolicy
from pipelines.steps import StepContext, run_step
from storage.objects import ObjectStore
from tests.fakes.dashscope import FakeDashScope


@pytest.fixture(scope="module")
def dashscope():
    with FakeDashScope() as fake:
        yield fake


@pytest.fixture
async def context(dashscope, tmp_path):
    dashscope.reset()
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    async with provider_session(16) as http:
        ctx = StepContext(
            store=ObjectStore(f"file://{tmp_path}"),
            http=http,
            qwen=QwenClient(http, base_url=dashscope.base_url, api_key=dashscope.api_key),
            retry=RetryPolicy(max_attempts=2, base_seconds=0.01),
            qwen_async_tasks=True,
            poll_seconds=2.0,
            sleep=record,
        )
        yield ctx, slept


async def test_the_pool_polls_a_task_with_growing_intervals_and_stores_the_result(context, dashscope, tmp_path):
    ctx, slept = context
    dashscope.task_polls = 4
    outcome = await run_step(ctx, "qwen.generate", {"prompt": "a quiet lake", "size": "928*1664", "seed": 1}, {})
    assert outcome.ok, outcome.error_message
    [asset] = outcome.assets
    assert (asset["width"], asset["height"]) == (928, 1664)
    assert Image.open(tmp_path / asset["key"]).size == (928, 1664)
    assert len(dashscope.requests_to("image-synthesis")) == 1
    assert len(dashscope.requests_to("tasks")) == 4
    assert slept == [2.0, 3.0, 4.5], "the client never polls; the pool does, backing off"


async def test_a_failed_task_fails_the_step_with_its_mapped_code(context, dashscope):
    ctx, _ = context
    dashscope.fail_next_task("DataInspectionFailed", "Input data may contain inappropriate content.")
    outcome = await run_step(ctx, "qwen.generate", {"prompt": "x", "size": "1328*1328", "seed": 1}, {})
    assert outcome.error_code == "content_rejected"


async def test_a_task_that_never_ends_times_out_as_unavailable(context, dashscope):
    ctx, slept = context
    dashscope.task_polls = 10_000
    ctx.task_timeout_seconds = 10.0
    outcome = await run_step(ctx, "qwen.generate", {"prompt": "x", "size": "1328*1328", "seed": 1}, {})
    assert outcome.error_code == "provider_unavailable"
    assert sum(slept) >= 10.0


async def test_without_a_key_the_step_fails_as_misconfigured_and_sends_nothing(context, dashscope):
    ctx, _ = context
    ctx.qwen = QwenClient(ctx.http, base_url=dashscope.base_url, api_key=None)
    outcome = await run_step(ctx, "qwen.generate", {"prompt": "x", "size": "1328*1328", "seed": 1}, {})
    assert outcome.error_code == "provider_misconfigured"
    assert dashscope.received == []
