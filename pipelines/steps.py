"""One step of a job: read the input images, call the engine, put the outputs in the store.

Failures the user should see come back as an outcome with an error code, not an exception,
so they cross process boundaries (Ray) unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from daygen.errors import JobFailed
from pipelines import offline
from storage.objects import ObjectStore

log = logging.getLogger("daygen.steps")

Inputs = dict[str, dict[str, Any]]


@dataclass
class StepOutcome:
    assets: list[dict[str, Any]] = field(default_factory=list)
    text: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


async def _store_png(store: ObjectStore, image: Image.Image) -> dict[str, Any]:
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


async def _load(store: ObjectStore, ref: dict[str, Any]) -> Image.Image:
    """An input image, fully read, from its stored object."""

    def read() -> Image.Image:
        with store.open_sync(ref["key"]) as handle, Image.open(handle) as image:
            image.load()
            return image.copy()

    try:
        return await asyncio.to_thread(read)
    except FileNotFoundError:
        raise JobFailed("input_missing", "an input image was deleted before the job ran") from None


async def _images(store: ObjectStore, inputs: Inputs, *names: str) -> list[Image.Image]:
    return list(await asyncio.gather(*(_load(store, inputs[name]) for name in names)))


Engine = Callable[[ObjectStore, dict[str, Any], Inputs], Awaitable[StepOutcome]]


async def _render(store: ObjectStore, render: Callable[..., Image.Image], *args: Any) -> StepOutcome:
    image = await asyncio.to_thread(render, *args)
    return StepOutcome(assets=[await _store_png(store, image)])


async def _generate(store: ObjectStore, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    return await _render(store, offline.render_generate, p["prompt"], p["width"], p["height"], p["seed"])


async def _edit(store: ObjectStore, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    image, mask = await _images(store, inputs, "image", "mask")
    return await _render(store, offline.render_edit, image, mask, p["prompt"], p["seed"])


async def _reframe(store: ObjectStore, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    [image] = await _images(store, inputs, "image")
    return await _render(store, offline.render_reframe, image, p["width"], p["height"], p["seed"])


async def _replace_background(store: ObjectStore, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    [image] = await _images(store, inputs, "image")
    return await _render(store, offline.render_replace_background, image, p["prompt"], p["seed"])


async def _remix(store: ObjectStore, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    [image] = await _images(store, inputs, "image")
    return await _render(store, offline.render_remix, image, p["prompt"], p["seed"], p["image_weight"])


async def _upscale(store: ObjectStore, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    [image] = await _images(store, inputs, "image")
    return await _render(store, offline.render_upscale, image, p["factor"])


async def _describe(store: ObjectStore, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    [image] = await _images(store, inputs, "image")
    return StepOutcome(text=await asyncio.to_thread(offline.describe, image))


STEPS: dict[str, Engine] = {
    "offline.generate": _generate,
    "offline.edit": _edit,
    "offline.reframe": _reframe,
    "offline.replace_background": _replace_background,
    "offline.remix": _remix,
    "offline.upscale": _upscale,
    "offline.describe": _describe,
}


async def run_step(store: ObjectStore, operation: str, params: dict[str, Any], inputs: Inputs) -> StepOutcome:
    step = STEPS.get(operation)
    if step is None:
        return StepOutcome(error_code="unsupported_operation", error_message=f"no engine runs {operation!r}")
    try:
        return await step(store, params, inputs)
    except JobFailed as exc:
        log.warning("step failed", extra={"operation": operation, "error_code": exc.code})
        return StepOutcome(error_code=exc.code, error_message=exc.message)
    except ValueError as exc:
        # The engine refuses inputs that could only be judged once loaded (e.g. a mask that no longer fits).
        log.warning("step refused its input", extra={"operation": operation, "error_code": "invalid_input"})
        return StepOutcome(error_code="invalid_input", error_message=str(exc)[:500])
