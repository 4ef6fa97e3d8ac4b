"""One step of a job: call the provider, put the output in the object store, describe it.

Failures the user should see come back as an outcome with an error code, not an
exception, so they cross process boundaries (Ray) unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from daygen.errors import JobFailed
from pipelines import offline
from storage.objects import ObjectStore

log = logging.getLogger("daygen.steps")


@dataclass
class StepOutcome:
    assets: list[dict[str, Any]] = field(default_factory=list)
    text: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


async def _store_png(store: ObjectStore, image) -> dict[str, Any]:
    data = await asyncio.to_thread(offline.encode_png, image)
    try:
        stored = await store.put_bytes(data, "image/png")
    except OSError as exc:
        raise JobFailed("storage_unavailable", "the object store could not save the output") from exc
    return {
        "key": stored.key,
        "sha256": stored.sha256,
        "size": stored.size,
        "content_type": stored.content_type,
        "width": image.width,
        "height": image.height,
    }


async def _offline_generate(store: ObjectStore, params: dict[str, Any]) -> StepOutcome:
    image = await asyncio.to_thread(
        offline.render_generate, params["prompt"], params["width"], params["height"], params["seed"]
    )
    return StepOutcome(assets=[await _store_png(store, image)])


STEPS: dict[str, Callable[[ObjectStore, dict[str, Any]], Awaitable[StepOutcome]]] = {
    "offline.generate": _offline_generate,
}


async def run_step(store: ObjectStore, operation: str, params: dict[str, Any]) -> StepOutcome:
    step = STEPS.get(operation)
    if step is None:
        return StepOutcome(error_code="unsupported_operation", error_message=f"no engine runs {operation!r}")
    try:
        return await step(store, params)
    except JobFailed as exc:
        log.warning("step failed", extra={"operation": operation, "error_code": exc.code})
        return StepOutcome(error_code=exc.code, error_message=exc.message)
