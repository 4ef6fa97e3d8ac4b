"""Benchmark: the CPU a pool actor spends on one provider step, the largest share of a job's CPU.

Runs a qwen pool actor's own step code (`pipelines.steps.RunningSteps` with the `StepContext` the
actor builds from its settings: the shared rate gate in Redis, the DashScope client, the image
copied into a file store) in this process, against the fake DashScope in a process of its own,
`--concurrency` steps at a time, and prints this process's CPU per step, measured twice (the second
round shows the noise). A step is `qwen.generate`: one upstream call, its image downloaded,
checked and stored.

    .venv/bin/python bench/provider_step.py [--steps 2000] [--concurrency 50]

Uses the machine's Redis when DAYGEN_TEST_REDIS_URL is set, else an embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daygen.settings import Settings  # noqa: E402
from pipelines.pool_config import ProviderPools  # noqa: E402
from pipelines.steps import RunningSteps, StepCall, StepContext  # noqa: E402
from tests.conftest import service_urls  # noqa: E402
from tests.fakes.dashscope import FakeDashScopeProcess  # noqa: E402

PARAMS = {"prompt": "a benchmark", "size": "1328*1328", "seed": 7}


async def measure(context: StepContext, steps: int, concurrency: int) -> None:
    running = RunningSteps()
    left = steps

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            outcome = await running.run(context, StepCall(uuid.uuid4().hex, "qwen.generate", PARAMS, {}))
            if outcome is None or not outcome.ok:
                raise RuntimeError(f"a step failed: {outcome}")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{steps} steps, {concurrency} at a time: {cpu / steps * 1000:.3f} ms CPU a step, {steps / wall:.0f} steps/s")


async def run(settings: Settings, pools: ProviderPools, steps: int, concurrency: int) -> None:
    context = StepContext.from_settings(settings, pools, "qwen")
    try:
        await measure(context, min(steps, 200), concurrency)  # warm-up: connections, caches
        for _ in range(2):
            await measure(context, steps, concurrency)
    finally:
        if context.http is not None:
            await context.http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with (
        FakeDashScopeProcess() as dashscope,
        tempfile.TemporaryDirectory(prefix="dgb-") as tmp,
        service_urls(Path(tmp)) as (_, redis_url),
    ):
        pools = ProviderPools.model_validate(
            {"pools": {"qwen": {"actors": 1, "max_running_jobs": args.concurrency, "requests_per_minute": 10**8}}}
        )
        settings = Settings(
            _env_file=None,
            home=Path(tmp),
            redis_url=redis_url,
            redis_namespace=f"daygen-bench-{secrets.token_hex(4)}",
            storage_url=f"file://{Path(tmp) / 'objects'}",
            dashscope_base_url=dashscope.base_url,
            dashscope_api_key=dashscope.api_key,
            log_level="WARNING",
        )
        asyncio.run(run(settings, pools, args.steps, args.concurrency))


if __name__ == "__main__":
    main()
