"""The provider pools' sizes and upstream limits, from configs/providers.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daygen.config_files import read_yaml
from daygen.errors import InvalidInput
from pipelines.operations import OPERATIONS, Operation


def pool_key(namespace: str, provider: str) -> str:
    """Where a provider's shared limits live in Redis."""
    return f"{namespace}:pool:{provider}"


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    actors: int = Field(1, ge=1, le=64)
    max_running_jobs: int = Field(8, ge=1, le=100_000)
    max_inflight_images: int | None = Field(None, ge=1)
    requests_per_minute: float | None = Field(None, gt=0)

    @property
    def steps_per_actor(self) -> int:
        """The most steps one actor runs at once (the dispatcher hands its running jobs out in turn)."""
        return -(-self.max_running_jobs // self.actors)


class ProviderPools(BaseModel):
    """One pool per provider that an operation names; a missing one is a configuration error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pools: dict[str, PoolConfig]

    def __getitem__(self, provider: str) -> PoolConfig:
        return self.pools[provider]

    def check_fits(self, operation: Operation, params: dict[str, Any]) -> None:
        """A request for more images than the upstream lets us have in flight could never start."""
        limit = self.pools[operation.provider].max_inflight_images
        if limit is not None and operation.images_in_flight(params) > limit:
            raise InvalidInput(
                f"{operation.name} can make at most {limit} images at once here",
                details=[{"field": "params.num_images", "message": f"must be at most {limit}"}],
            )

    @classmethod
    def load(cls, path: Path) -> ProviderPools:
        raw = read_yaml(path, "provider pools config")
        try:
            pools = cls(pools=raw or {})
        except ValidationError as exc:
            raise ValueError(f"invalid provider pools config {path}: {exc}") from None
        missing = sorted({op.provider for op in OPERATIONS.values()} - set(pools.pools))
        if missing:
            raise ValueError(f"{path} has no pool for {', '.join(missing)}")
        return pools
