"""Provider pools: N actors per provider run job steps and write outputs to the store.

The actors of one pool share its upstream limits through Redis (`pipelines.shared_limits`), so
adding actors adds concurrency without ever adding to what the provider sees.
"""

from __future__ import annotations

from typing import Any

import ray

from daygen.logs import configure_logging
from daygen.runtime import freeze_startup_heap
from daygen.settings import Settings
from pipelines.pool_config import ProviderPools
from pipelines.steps import StepContext, StepOutcome, run_step


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)
class ProviderWorker:
    def __init__(self, settings: Settings, pools: ProviderPools, provider: str) -> None:
        configure_logging(settings.log_level)
        self.provider = provider
        self.context = StepContext.from_settings(settings, pools, provider)
        freeze_startup_heap()

    async def run(self, operation: str, params: dict[str, Any], inputs: dict[str, Any]) -> StepOutcome:
        return await run_step(self.context, operation, params, inputs)


def pool_name(provider: str, index: int) -> str:
    return f"daygen-pool-{provider}-{index}"
