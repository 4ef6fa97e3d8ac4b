"""Provider pools: actors that run job steps for one provider and write outputs to the store."""

from __future__ import annotations

from typing import Any

import ray

from daygen.logs import configure_logging
from daygen.settings import Settings
from pipelines.steps import StepContext, StepOutcome, run_step


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=64)
class ProviderWorker:
    def __init__(self, settings: Settings, provider: str) -> None:
        configure_logging(settings.log_level)
        self.provider = provider
        self.context = StepContext.from_settings(settings)

    async def run(self, operation: str, params: dict[str, Any], inputs: dict[str, Any]) -> StepOutcome:
        return await run_step(self.context, operation, params, inputs)


def pool_name(provider: str) -> str:
    return f"daygen-pool-{provider}"
