"""One step of a job: read the input images, call the engine, put the outputs in the store.

Failures the user should see come back as an outcome with an error code, not an exception,
so they cross process boundaries (Ray) unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from PIL import Image

from daygen.errors import (
    JobFailed,
    ProviderError,
    ProviderMisconfigured,
    ProviderOutOfFunds,
    ProviderRateLimited,
    ProviderUnavailable,
)
from pipelines import offline
from pipelines.downloads import copy_image
from pipelines.ideogram import IdeogramClient
from pipelines.operations import OPERATIONS
from pipelines.pool_config import ProviderPools, pool_key
from pipelines.providers import DEFAULT_TIMEOUT, ImageFile, ProviderResult, provider_session, provider_timeout
from pipelines.qwen import QwenClient
from pipelines.retry import RetryPolicy, call_with_retries
from pipelines.shared_limits import ProviderGate
from storage.objects import EXTENSIONS, ObjectStore
from storage.redis import make_redis

log = logging.getLogger("daygen.steps")

Inputs = dict[str, dict[str, Any]]
MAX_OUTPUT_BYTES = 200 * 1024 * 1024
MAX_TASK_POLL_SECONDS = 30.0


@dataclass
class StepContext:
    """What a provider worker holds for its steps: the store, HTTP clients, the pools' shared
    limits (a gate per provider), the retry policy."""

    store: ObjectStore
    http: aiohttp.ClientSession | None = None
    ideogram: IdeogramClient | None = None
    qwen: QwenClient | None = None
    gates: dict[str, ProviderGate] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT
    max_pixels: int = 100_000_000
    qwen_async_tasks: bool = False
    poll_seconds: float = 10.0
    task_timeout_seconds: float = 600.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @classmethod
    def from_settings(cls, settings, pools: ProviderPools, provider: str | None = None) -> StepContext:
        """For a pool actor of `provider`: its HTTP connections are as many as the steps it may run
        at once, so the upstream's limits (the shared gates) are the only ones that queue a step.
        Called inside the running event loop (the HTTP session belongs to it)."""

        def key(secret) -> str | None:
            return secret.get_secret_value() if secret is not None else None

        connections = max(pools[provider].steps_per_actor, 16) if provider else 64
        http = provider_session(connections)
        redis = make_redis(settings.redis_url)
        gates = {
            provider: ProviderGate(
                redis,
                pool_key(settings.redis_namespace, provider),
                max_inflight_images=pool.max_inflight_images,
                requests_per_minute=pool.requests_per_minute,
                outage_seconds=settings.provider_outage_seconds,
            )
            for provider, pool in pools.pools.items()
            if provider in ("ideogram", "qwen")
        }
        timeout = provider_timeout(
            connect_seconds=settings.provider_connect_timeout_seconds,
            read_seconds=settings.provider_read_timeout_seconds,
        )
        return cls(
            store=ObjectStore.from_settings(settings),
            http=http,
            ideogram=IdeogramClient(
                http, base_url=settings.ideogram_base_url, api_key=key(settings.ideogram_api_key), timeout=timeout
            ),
            qwen=QwenClient(
                http, base_url=settings.dashscope_base_url, api_key=key(settings.dashscope_api_key), timeout=timeout
            ),
            gates=gates,
            retry=RetryPolicy(
                max_attempts=settings.provider_max_attempts,
                base_seconds=settings.provider_backoff_seconds,
                cap_seconds=settings.provider_backoff_cap_seconds,
                rate_limit_budget_seconds=settings.provider_rate_limit_budget_seconds,
            ),
            timeout=timeout,
            max_pixels=settings.max_image_pixels,
            qwen_async_tasks=settings.dashscope_async_tasks,
            poll_seconds=settings.dashscope_poll_seconds,
            task_timeout_seconds=settings.dashscope_task_timeout_seconds,
        )


@dataclass
class StepOutcome:
    assets: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    # How long the step's engine took (the provider's calls, or the offline work); None if it never ran.
    upstream_ms: int | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None

    @property
    def text(self) -> str | None:
        """All the step's text results as one (describe may give several descriptions)."""
        return "\n\n".join(self.texts) if self.texts else None


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


Engine = Callable[[StepContext, dict[str, Any], Inputs], Awaitable[StepOutcome]]


async def _render(ctx: StepContext, render: Callable[..., Image.Image], *args: Any) -> StepOutcome:
    image = await asyncio.to_thread(render, *args)
    return StepOutcome(assets=[await _store_png(ctx.store, image)])


async def _generate(ctx: StepContext, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    return await _render(ctx, offline.render_generate, p["prompt"], p["width"], p["height"], p["seed"])


async def _edit(ctx: StepContext, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    image, mask = await _images(ctx.store, inputs, "image", "mask")
    return await _render(ctx, offline.render_edit, image, mask, p["prompt"], p["seed"])


async def _reframe(ctx: StepContext, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    [image] = await _images(ctx.store, inputs, "image")
    return await _render(ctx, offline.render_reframe, image, p["width"], p["height"], p["seed"])


async def _replace_background(ctx: StepContext, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    [image] = await _images(ctx.store, inputs, "image")
    return await _render(ctx, offline.render_replace_background, image, p["prompt"], p["seed"])


async def _remix(ctx: StepContext, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    [image] = await _images(ctx.store, inputs, "image")
    return await _render(ctx, offline.render_remix, image, p["prompt"], p["seed"], p["image_weight"])


async def _upscale(ctx: StepContext, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    [image] = await _images(ctx.store, inputs, "image")
    return await _render(ctx, offline.render_upscale, image, p["factor"])


async def _describe(ctx: StepContext, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    [image] = await _images(ctx.store, inputs, "image")
    return StepOutcome(texts=[await asyncio.to_thread(offline.describe, image)])


async def _image_file(store: ObjectStore, ref: dict[str, Any], name: str) -> ImageFile:
    """An input asset's bytes as a file part (inputs are capped at the upload size limit)."""

    def read() -> bytes:
        with store.open_sync(ref["key"]) as handle:
            return handle.read()

    try:
        data = await asyncio.to_thread(read)
    except FileNotFoundError:
        raise JobFailed("input_missing", "an input image was deleted before the job ran") from None
    return ImageFile(f"{name}.{EXTENSIONS.get(ref['contentType'], 'bin')}", data, ref["contentType"])


def _listed(inputs: Inputs, name: str) -> list[dict[str, Any]]:
    """The refs of a list param, in order: inputs names them `name.0`, `name.1`, ..."""
    found = [(int(key.rsplit(".", 1)[1]), ref) for key, ref in inputs.items() if key.startswith(name + ".")]
    return [ref for _, ref in sorted(found, key=lambda pair: pair[0])]


async def _outcome(ctx: StepContext, result: ProviderResult) -> StepOutcome:
    """Copy every upstream image into the store now: their URLs expire."""
    if ctx.http is None:
        raise ProviderMisconfigured("this worker has no HTTP client")
    assets = [
        await copy_image(
            ctx.http, url, ctx.store, max_bytes=MAX_OUTPUT_BYTES, max_pixels=ctx.max_pixels, http_timeout=ctx.timeout
        )
        for url in result.image_urls
    ]
    return StepOutcome(assets=assets, texts=list(result.texts))


async def _ideogram(ctx: StepContext, operation: str, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    if ctx.ideogram is None:
        raise ProviderMisconfigured("Ideogram is not configured")
    method = getattr(ctx.ideogram, operation.split(".", 1)[1])
    files: dict[str, Any] = {}
    for name in ("image", "mask"):
        if name in inputs:
            files[name] = await _image_file(ctx.store, inputs[name], name)
    for param, argument in (
        ("style_reference_images", "style_references"),
        ("character_reference_images", "character_references"),
    ):
        refs = _listed(inputs, param)
        if refs:
            files[argument] = [await _image_file(ctx.store, ref, f"{param}{i}") for i, ref in enumerate(refs)]
    places = OPERATIONS[operation].images_in_flight(p)
    result = await _upstream(ctx, "ideogram", lambda: method(p, **files), places)
    return await _outcome(ctx, result)


async def _upstream(
    ctx: StepContext, provider: str, call: Callable[[], Awaitable[ProviderResult]], places: int = 0
) -> ProviderResult:
    """One upstream request through the provider's gate, with retries; a 429 pauses the whole pool,
    a refused key or an empty account marks the provider down (new jobs get a 503 for a while)."""
    gate = ctx.gates.get(provider)

    async def attempt() -> ProviderResult:
        if gate is None:
            return await call()
        try:
            async with gate.call(places):
                return await call()
        except ProviderRateLimited as exc:
            await gate.rate_limited(exc.retry_after)
            raise
        except (ProviderMisconfigured, ProviderOutOfFunds) as exc:
            await gate.refused(exc.job_code)
            raise

    return await call_with_retries(attempt, ctx.retry, sleep=ctx.sleep)


async def _await_task(ctx: StepContext, task_id: str) -> ProviderResult:
    """Poll a DashScope task with growing intervals until it ends or the timeout passes."""
    assert ctx.qwen is not None
    waited, interval = 0.0, ctx.poll_seconds
    while True:
        status = await call_with_retries(lambda: ctx.qwen.task_status(task_id), ctx.retry, sleep=ctx.sleep)
        if status.status == "SUCCEEDED" and status.result is not None:
            return status.result
        if status.error is not None:
            raise status.error
        if status.finished:
            raise ProviderUnavailable(f"the DashScope task ended {status.status}")
        if waited >= ctx.task_timeout_seconds:
            raise ProviderUnavailable("the DashScope task did not finish in time")
        await ctx.sleep(interval)
        waited += interval
        interval = min(interval * 1.5, MAX_TASK_POLL_SECONDS)


async def _qwen(ctx: StepContext, operation: str, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
    qwen = ctx.qwen
    if qwen is None:
        raise ProviderMisconfigured("DashScope is not configured")
    if operation == "qwen.edit":
        image = await _image_file(ctx.store, inputs["image"], "image")
        result = await _upstream(ctx, "qwen", lambda: qwen.edit(p, image=image))
    elif ctx.qwen_async_tasks:
        task_id = await _upstream(ctx, "qwen", lambda: qwen.submit_generate_task(p))
        result = await _await_task(ctx, task_id)
    else:
        result = await _upstream(ctx, "qwen", lambda: qwen.generate(p))
    return await _outcome(ctx, result)


def _provider(
    engine: Callable[[StepContext, str, dict[str, Any], Inputs], Awaitable[StepOutcome]], operation: str
) -> Engine:
    async def run(ctx: StepContext, p: dict[str, Any], inputs: Inputs) -> StepOutcome:
        return await engine(ctx, operation, p, inputs)

    return run


IDEOGRAM_OPERATIONS = ("generate", "edit", "reframe", "replace_background", "remix", "upscale", "describe")

STEPS: dict[str, Engine] = {
    **{f"ideogram.{name}": _provider(_ideogram, f"ideogram.{name}") for name in IDEOGRAM_OPERATIONS},
    "qwen.generate": _provider(_qwen, "qwen.generate"),
    "qwen.edit": _provider(_qwen, "qwen.edit"),
    "offline.generate": _generate,
    "offline.edit": _edit,
    "offline.reframe": _reframe,
    "offline.replace_background": _replace_background,
    "offline.remix": _remix,
    "offline.upscale": _upscale,
    "offline.describe": _describe,
}


async def run_step(ctx: StepContext, operation: str, params: dict[str, Any], inputs: Inputs) -> StepOutcome:
    step = STEPS.get(operation)
    if step is None:
        return StepOutcome(error_code="unsupported_operation", error_message=f"no engine runs {operation!r}")
    try:
        return await step(ctx, params, inputs)
    except ProviderError as exc:
        log.warning("provider refused the step", extra={"operation": operation, "error_code": exc.job_code})
        return StepOutcome(error_code=exc.job_code, error_message=exc.message)
    except JobFailed as exc:
        log.warning("step failed", extra={"operation": operation, "error_code": exc.code})
        return StepOutcome(error_code=exc.code, error_message=exc.message)
    except ValueError as exc:
        # The engine refuses inputs that could only be judged once loaded (e.g. a mask that no longer fits).
        log.warning("step refused its input", extra={"operation": operation, "error_code": "invalid_input"})
        return StepOutcome(error_code="invalid_input", error_message=str(exc)[:500])


@dataclass(frozen=True)
class StepCall:
    """A step as the dispatcher sends it to a pool actor; `key` names it for an abort."""

    key: str
    operation: str
    params: dict[str, Any]
    inputs: Inputs


class RunningSteps:
    """A pool actor's steps in progress, by key, so the dispatcher can abort one (a canceled job).
    An abort that arrives before its step is remembered, and the step is then not started."""

    MAX_EARLY_ABORTS = 10_000

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[StepOutcome]] = {}
        self.aborted: dict[str, None] = {}  # keys aborted before they arrived, oldest first

    def abort(self, key: str) -> None:
        task = self.tasks.get(key)
        if task is not None:
            task.cancel()
            return
        self.aborted[key] = None
        if len(self.aborted) > self.MAX_EARLY_ABORTS:
            del self.aborted[next(iter(self.aborted))]

    def start(self, ctx: StepContext, call: StepCall) -> asyncio.Task[StepOutcome] | None:
        """The step's task, or None when it was aborted already."""
        if call.key in self.aborted:
            del self.aborted[call.key]
            return None
        task = asyncio.create_task(_run_guarded(ctx, call))
        self.tasks[call.key] = task
        task.add_done_callback(lambda _: self.tasks.pop(call.key, None))
        return task

    async def run(self, ctx: StepContext, call: StepCall) -> StepOutcome | None:
        """One step; None when it was aborted."""
        task = self.start(ctx, call)
        if task is None:
            return None
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this call was canceled, not just its step
            return None

    async def run_many(self, ctx: StepContext, calls: list[StepCall]) -> AsyncIterator[list[tuple[str, StepOutcome]]]:
        """Steps at once, each answered as it ends: what ended meanwhile comes in one list, so one
        message carries many answers under load. Aborted steps are not answered."""
        ended: asyncio.Queue[tuple[str, StepOutcome] | None] = asyncio.Queue()

        def answer(key: str, task: asyncio.Task[StepOutcome]) -> None:
            ended.put_nowait(None if task.cancelled() else (key, task.result()))

        tasks = []
        for call in calls:
            task = self.start(ctx, call)
            if task is not None:
                task.add_done_callback(functools.partial(answer, call.key))
                tasks.append(task)
        left = len(tasks)
        try:
            while left:
                batch = [await ended.get()]
                while not ended.empty():
                    batch.append(ended.get_nowait())
                left -= len(batch)
                answers = [item for item in batch if item is not None]
                if answers:
                    yield answers
        finally:
            for task in tasks:
                task.cancel()  # the caller went away: nobody would take these answers


async def _run_guarded(ctx: StepContext, call: StepCall) -> StepOutcome:
    """`run_step`, with a crash turned into the job's error (logged here, where it happened), and timed."""
    started = time.monotonic()
    try:
        outcome = await run_step(ctx, call.operation, call.params, call.inputs)
    except Exception:
        log.exception("step crashed", extra={"job_step": call.operation})
        outcome = StepOutcome(error_code="internal_error", error_message="the job failed unexpectedly")
    outcome.upstream_ms = round((time.monotonic() - started) * 1000)
    return outcome
