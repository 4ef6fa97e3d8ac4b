"""A local Ideogram API for tests: real HTTP on loopback, faithful to ../shared/providers.md.

Use it as ``with FakeIdeogram() as fake:`` (or ``start()``/``stop()``) and point the client
at ``fake.base_url`` with ``Api-Key: fake.api_key``. Every call is recorded in
``fake.received`` (exact form fields and file bytes) before anything else happens.

Endpoints (all POST, all must be ``multipart/form-data``, else 400):

- ``/v1/ideogram-v3/generate``: ``prompt`` required; ``aspect_ratio``, ``resolution``,
  ``rendering_speed``, ``magic_prompt``, ``num_images``, ``seed``, ``style_type``,
  ``style_preset``, ``negative_prompt``; files ``style_reference_images`` and
  ``character_reference_images`` (any number, each a real image).
- ``/v1/ideogram-v3/edit``: files ``image`` and ``mask`` (same size) and ``prompt`` required;
  ``magic_prompt``, ``rendering_speed``, ``seed``, ``num_images``, ``style_type``, ``style_preset``.
- ``/v1/ideogram-v3/reframe``: file ``image`` and ``resolution`` required; ``rendering_speed``,
  ``seed``, ``num_images``, ``style_preset``.
- ``/v1/ideogram-v3/replace-background``: file ``image`` and ``prompt`` required;
  ``magic_prompt``, ``rendering_speed``, ``seed``, ``num_images``, ``style_preset``.
- ``/v1/ideogram-v3/remix``: file ``image`` and ``prompt`` required; ``aspect_ratio``,
  ``resolution``, ``image_weight`` (1..100), ``magic_prompt``, ``negative_prompt``,
  ``rendering_speed``, ``seed``, ``num_images``, ``style_type``, ``style_preset``, files
  ``character_reference_images``.
- ``/upscale``: file ``image_file`` and ``image_request`` (a JSON object as a string) required;
  its keys: ``resemblance`` and ``detail`` (1..100, defaults 60 and 90), ``prompt``,
  ``magic_prompt_option``, ``num_images``, ``seed``.
- ``/describe``: file ``image_file`` required; ``describe_model_version`` ``V_2|V_3``.

Checks, in this order, each answering JSON ``{"error": "<message>"}`` (the shape of Ideogram's
documented error bodies) plus ``reject_reason``/``max_inflight_requests`` where noted:

1. ``Api-Key`` header equal to the configured key, else 401.
2. A scripted failure for this endpoint, if any (``fail_next``): 401, 402 with
   ``reject_reason: "insufficient_funds"``, 422 safety failure, 429 like the in-flight limit
   below, 500, or any other status with a generic message; extra ``details`` join the body.
3. Validation, else 400: multipart body; required fields present and non-blank; no field the
   endpoint does not take (the real API may ignore unknown fields; the fake refuses them so a
   misspelt field fails loudly); text fields as text and file fields as files; enums
   ``rendering_speed`` TURBO|DEFAULT|QUALITY, ``magic_prompt`` AUTO|ON|OFF, ``style_type``
   AUTO|GENERAL|REALISTIC|DESIGN|FICTION; ``num_images`` an integer 1..8; ``seed`` an integer
   0..2147483647; ``aspect_ratio`` one of Ideogram's v3 ratios written with ``x``
   (``16:9`` is refused: the client must convert); ``resolution`` ``WxH`` with sides 64..2048
   (the real API takes a fixed list); ``aspect_ratio`` and ``resolution`` not both;
   ``style_preset`` upper-case words; every file a PNG, JPEG or WebP that Pillow decodes, at most
   10 MB; the edit ``mask`` the same size as the ``image``.
4. The in-flight limit (default 10 images per org): a request for k images holds k places
   while it is processed; if it would exceed the limit it is refused with 429
   ``{"error", "reject_reason": "inflight_limit", "max_inflight_requests": <limit>}`` and a
   ``Retry-After`` header (seconds), and is not counted as billed. ``describe`` holds no place
   (it makes no image). ``peak_inflight_images`` records the highest level reached.
5. Processing: at least ``set_latency`` seconds, plus a scripted ``slow_next`` delay or a
   ``hang_next`` hang (released by ``release_hung`` or by stopping the server, which answers 503).

Success for image endpoints: 200 ``{"created": "<ISO 8601 UTC>", "data": [{"url", "prompt",
"resolution": "WxH", "is_image_safe": true, "seed", "style_type"}]}`` with ``num_images``
entries. Each ``url`` is ``<base_url>/files/<token>.png`` on the fake itself and serves a real
PNG, a solid colour derived from prompt, seed and index, sized: generate by ``resolution``, or
by ``aspect_ratio`` with a 256 px long side, or 256x256; edit and replace-background as the input
image; reframe at ``resolution``; remix at ``resolution``, or the input's long side at
``aspect_ratio``, or the input size; upscale at twice the input size. URLs expire ``url_ttl``
seconds after the answer (or at once with ``expire_urls()``): then 403 ``{"error": "expired"}``;
an unknown token is 404. ``seed`` is the one sent or a random one; ``style_type`` the one sent,
``GENERAL`` for AUTO or none; ``prompt`` the one sent, with " (magic prompt)" appended when
``magic_prompt`` is ON. After ``unsafe_next`` the images carry ``is_image_safe: false`` and
``url: null``, as the real API does for a withheld image. ``describe`` answers
``{"descriptions": [{"text"}]}``.

Knobs: ``inflight_limit``, ``url_ttl``, ``retry_after`` and ``clock`` (constructor or attribute);
``fail_next``/``hang_next``/``slow_next``/``unsafe_next`` take ``times`` and an ``endpoint`` name
(``generate``, ``edit``, ``reframe``, ``replace-background``, ``remix``, ``upscale``, ``describe``);
``wait_until_hung``, ``release_hung``, ``expire_urls``, ``reset``. Image downloads are listed in
``downloads``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import FakeServer

V3 = "/v1/ideogram-v3"
DEFAULT_API_KEY = "test-ideogram-key"
DEFAULT_SIDE = 256
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_SEED = 2_147_483_647

RENDERING_SPEEDS = {"TURBO", "DEFAULT", "QUALITY"}
MAGIC_PROMPTS = {"AUTO", "ON", "OFF"}
STYLE_TYPES = {"AUTO", "GENERAL", "REALISTIC", "DESIGN", "FICTION"}
DESCRIBE_VERSIONS = {"V_2", "V_3"}
ASPECT_RATIOS = {
    "1x3", "3x1", "1x2", "2x1", "9x16", "16x9", "10x16", "16x10",
    "2x3", "3x2", "3x4", "4x3", "4x5", "5x4", "1x1",
}  # fmt: skip
IMAGE_FORMATS = {"PNG", "JPEG", "WEBP"}
RESOLUTION = re.compile(r"^(\d+)x(\d+)$")
STYLE_PRESET = re.compile(r"^[A-Z0-9_]+$")

_COMMON = {"rendering_speed", "seed", "num_images", "style_preset"}
TEXT_FIELDS = {
    "generate": _COMMON | {"prompt", "aspect_ratio", "resolution", "magic_prompt", "style_type", "negative_prompt"},
    "edit": _COMMON | {"prompt", "magic_prompt", "style_type"},
    "reframe": _COMMON | {"resolution"},
    "replace-background": _COMMON | {"prompt", "magic_prompt"},
    "remix": _COMMON
    | {"prompt", "aspect_ratio", "resolution", "image_weight", "magic_prompt", "negative_prompt", "style_type"},
    "upscale": {"image_request"},
    "describe": {"describe_model_version"},
}
FILE_FIELDS = {
    "generate": {"style_reference_images", "character_reference_images"},
    "edit": {"image", "mask"},
    "reframe": {"image"},
    "replace-background": {"image"},
    "remix": {"image", "character_reference_images"},
    "upscale": {"image_file"},
    "describe": {"image_file"},
}
ENDPOINT_PATHS = {
    **{name: f"{V3}/{name}" for name in ("generate", "edit", "reframe", "replace-background", "remix")},
    "upscale": "/upscale",
    "describe": "/describe",
}
UPSCALE_KEYS = {"resemblance", "detail", "prompt", "magic_prompt_option", "num_images", "seed"}

FAILURE_MESSAGES = {
    401: "Invalid API key",
    402: "Insufficient funds",
    422: "Prompt or provided image failed the safety checks",
    429: "Too many images in flight for this organization",
    500: "Internal server error",
}


class BadRequest(Exception):
    """A request the real API would refuse with 400."""


@dataclass
class ReceivedFile:
    field: str
    filename: str | None
    content_type: str | None
    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"ReceivedFile({self.field!r}, {self.filename!r}, {self.content_type!r}, {len(self.data)} bytes)"


@dataclass
class ReceivedRequest:
    """One call as the fake saw it; `status` is filled in once it is answered."""

    method: str
    path: str
    endpoint: str
    headers: dict[str, str]
    fields: dict[str, str] = field(default_factory=dict)
    files: list[ReceivedFile] = field(default_factory=list)
    status: int | None = None

    def file(self, name: str) -> ReceivedFile | None:
        return next((f for f in self.files if f.field == name), None)

    def files_named(self, name: str) -> list[ReceivedFile]:
        return [f for f in self.files if f.field == name]

    def __repr__(self) -> str:
        headers = {k: ("<redacted>" if k == "api-key" else v) for k, v in self.headers.items()}
        return (
            f"ReceivedRequest({self.method} {self.path} status={self.status} fields={self.fields!r} "
            f"files={self.files!r} headers={headers!r})"
        )


@dataclass
class _Script:
    endpoint: str | None
    times: int
    kind: str  # "fail", "hang", "slow" or "unsafe"
    status: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Job:
    """What a valid image request asks for."""

    sizes: list[tuple[int, int]]
    prompt: str
    seed: int | None
    style_type: str


@dataclass
class _StoredFile:
    data: bytes
    expires_at: float


class FakeIdeogram:
    """The Ideogram API on a loopback port, with scriptable failures and an in-flight limit."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        inflight_limit: int = 10,
        url_ttl: float = 30.0,
        retry_after: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self.url_ttl = url_ttl
        self.retry_after = retry_after
        self.clock = clock
        self._default_limit = inflight_limit
        self.inflight_limit = inflight_limit
        self.received: list[ReceivedRequest] = []
        self.downloads: list[str] = []
        self.inflight_images = 0
        self.peak_inflight_images = 0
        self.latency = 0.0
        self._files: dict[str, _StoredFile] = {}
        self._scripts: list[_Script] = []
        self._lock = threading.Lock()
        self._hung = threading.Condition(self._lock)
        self._hung_now = 0
        self._random = random.Random(0)
        self._stopping = False
        self._release: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._server = FakeServer(self._app(), on_shutdown=self._on_server_stopping)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def start(self) -> str:
        self._stopping = False
        self._release = asyncio.Event()
        self._stop = asyncio.Event()
        return self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeIdeogram:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget requests, files and scripts; release hung calls; restore the default limit and latency."""
        self.release_hung()
        with self._lock:
            self.received.clear()
            self.downloads.clear()
            self._files.clear()
            self._scripts.clear()
            self.peak_inflight_images = self.inflight_images
            self.inflight_limit = self._default_limit
            self.latency = 0.0
            self._random = random.Random(0)

    # -- scripting -------------------------------------------------------------------------

    def fail_next(self, status: int, times: int = 1, *, endpoint: str | None = None, **details: Any) -> None:
        """Answer the next `times` calls (to `endpoint`, or any) with `status`; `details` join the JSON body.

        For 429, `retry_after=<seconds>` sets the header (default `self.retry_after`).
        """
        self._add(_Script(endpoint, times, "fail", status=status, details=details))

    def hang_next(self, times: int = 1, *, endpoint: str | None = None) -> None:
        """The next `times` accepted calls never answer until `release_hung()` or the server stops."""
        self._add(_Script(endpoint, times, "hang"))

    def slow_next(self, seconds: float, times: int = 1, *, endpoint: str | None = None) -> None:
        """The next `times` accepted calls take `seconds` longer (holding their in-flight places)."""
        self._add(_Script(endpoint, times, "slow", seconds=seconds))

    def unsafe_next(self, times: int = 1, *, endpoint: str | None = None) -> None:
        """The next `times` accepted image calls withhold their images: `is_image_safe: false`, `url: null`."""
        self._add(_Script(endpoint, times, "unsafe"))

    def set_latency(self, seconds: float) -> None:
        """Every accepted call takes at least this long, so concurrency is observable."""
        self.latency = seconds

    def release_hung(self) -> None:
        """Answer every hung call now, and drop hangs scripted but not yet used."""
        with self._lock:
            self._scripts = [s for s in self._scripts if s.kind != "hang"]
        self._server.call_soon(self._release_on_loop)

    def wait_until_hung(self, count: int = 1, timeout: float = 5.0) -> None:
        """Block until `count` calls are hanging (from async code: `await asyncio.to_thread(...)`)."""
        with self._hung:
            if not self._hung.wait_for(lambda: self._hung_now >= count, timeout):
                raise TimeoutError(f"{self._hung_now} calls hung, wanted {count}")

    def expire_urls(self) -> None:
        """Expire every image URL handed out so far."""
        with self._lock:
            for stored in self._files.values():
                stored.expires_at = float("-inf")

    def requests_to(self, endpoint: str) -> list[ReceivedRequest]:
        return [r for r in self.received if r.endpoint == endpoint]

    def _add(self, script: _Script) -> None:
        if script.endpoint is not None and script.endpoint not in ENDPOINT_PATHS:
            raise ValueError(f"unknown endpoint {script.endpoint!r}; one of {sorted(ENDPOINT_PATHS)}")
        with self._lock:
            self._scripts.append(script)

    def _take(self, kinds: set[str], endpoint: str) -> _Script | None:
        with self._lock:
            for script in self._scripts:
                if script.kind in kinds and script.endpoint in (None, endpoint):
                    script.times -= 1
                    if script.times <= 0:
                        self._scripts.remove(script)
                    return script
        return None

    def _release_on_loop(self) -> None:
        released, self._release = self._release, asyncio.Event()
        if released is not None:
            released.set()

    def _on_server_stopping(self) -> None:
        self._stopping = True
        if self._stop is not None:
            self._stop.set()
        self._release_on_loop()

    # -- HTTP ------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        routes = [Route(path, self._endpoint(name), methods=["POST"]) for name, path in ENDPOINT_PATHS.items()]
        return Starlette(routes=[*routes, Route("/files/{name}", self._download, methods=["GET"])])

    def _endpoint(self, name: str) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            record = ReceivedRequest(
                method=request.method,
                path=request.url.path,
                endpoint=name,
                headers={k.lower(): v for k, v in request.headers.items()},
            )
            self.received.append(record)
            response = await self._handle(name, request, record)
            record.status = response.status_code
            return response

        return handle

    async def _handle(self, name: str, request: Request, record: ReceivedRequest) -> Response:
        form_error = await self._read_form(request, record)
        if request.headers.get("api-key") != self.api_key:
            return _error(401, FAILURE_MESSAGES[401])
        if failure := self._take({"fail"}, name):
            return self._failure(failure)
        if form_error:
            return _error(400, form_error)
        try:
            job = _validate(name, record, default_side=DEFAULT_SIDE)
        except BadRequest as exc:
            return _error(400, str(exc))

        places = 0 if isinstance(job, str) else len(job.sizes)
        if self.inflight_images + places > self.inflight_limit:
            return self._inflight_refusal()
        self.inflight_images += places
        self.peak_inflight_images = max(self.peak_inflight_images, self.inflight_images)
        # Taken on arrival, not after the wait: a call a test hung or slowed down must not
        # finish later and use up a script the next test added.
        unsafe = not isinstance(job, str) and self._take({"unsafe"}, name) is not None
        try:
            await self._process(name)
            if self._stopping:
                return _error(503, "The fake server is stopping")
            if isinstance(job, str):
                return JSONResponse({"descriptions": [{"text": job}]})
            return JSONResponse(self._images(job, str(request.base_url).rstrip("/"), unsafe=unsafe))
        finally:
            self.inflight_images -= places

    async def _read_form(self, request: Request, record: ReceivedRequest) -> str | None:
        """Record the body's fields and files; return why it is not a usable multipart body, if it is not."""
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            return "Content-Type must be multipart/form-data"
        try:
            form = await request.form()
        except Exception as exc:  # malformed multipart of any kind is the client's fault
            return f"Malformed multipart body: {exc}"
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                record.files.append(ReceivedFile(key, value.filename, value.content_type, await value.read()))
            else:
                record.fields[key] = value
        await form.close()
        # Recorded either way, so a test can see what a client sent by mistake.
        return None if content_type.startswith("multipart/form-data") else "Content-Type must be multipart/form-data"

    async def _process(self, name: str) -> None:
        assert self._stop is not None
        delay = self.latency
        hang = self._take({"hang", "slow"}, name)
        if hang is not None and hang.kind == "slow":
            delay += hang.seconds
        if delay > 0:
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass
        if hang is not None and hang.kind == "hang":
            release = self._release  # captured in the same step as the script, so release_hung cannot miss it
            assert release is not None
            with self._hung:
                self._hung_now += 1
                self._hung.notify_all()
            try:
                await release.wait()
            finally:
                with self._hung:
                    self._hung_now -= 1

    def _failure(self, script: _Script) -> Response:
        details = dict(script.details)
        if script.status == 429:
            retry_after = details.pop("retry_after", self.retry_after)
            body = {"error": FAILURE_MESSAGES[429], "reject_reason": "inflight_limit"}
            body["max_inflight_requests"] = self.inflight_limit
            return JSONResponse({**body, **details}, 429, headers={"Retry-After": str(retry_after)})
        body: dict[str, Any] = {"error": FAILURE_MESSAGES.get(script.status, f"Scripted failure {script.status}")}
        if script.status == 402:
            body["reject_reason"] = "insufficient_funds"
        return JSONResponse({**body, **details}, script.status)

    def _inflight_refusal(self) -> Response:
        body = {
            "error": FAILURE_MESSAGES[429],
            "reject_reason": "inflight_limit",
            "max_inflight_requests": self.inflight_limit,
        }
        return JSONResponse(body, 429, headers={"Retry-After": str(self.retry_after)})

    def _images(self, job: _Job, base_url: str, *, unsafe: bool) -> dict[str, Any]:
        data = []
        for index, (width, height) in enumerate(job.sizes):
            seed = job.seed if job.seed is not None else self._random.randrange(MAX_SEED)
            url = None
            if not unsafe:
                token = secrets.token_urlsafe(12)
                png = _solid_png((width, height), _colour(f"{job.prompt}|{seed}|{index}"))
                with self._lock:
                    self._files[token] = _StoredFile(png, self.clock() + self.url_ttl)
                url = f"{base_url}/files/{token}.png"
            data.append(
                {
                    "url": url,
                    "prompt": job.prompt,
                    "resolution": f"{width}x{height}",
                    "is_image_safe": not unsafe,
                    "seed": seed,
                    "style_type": job.style_type,
                }
            )
        return {"created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "data": data}

    async def _download(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.downloads.append(name)
        with self._lock:
            stored = self._files.get(name.removesuffix(".png")) if name.endswith(".png") else None
        if stored is None:
            return _error(404, "not found")
        if self.clock() >= stored.expires_at:
            return _error(403, "expired")
        return Response(stored.data, media_type="image/png")


# -- validation ----------------------------------------------------------------------------


def _validate(name: str, record: ReceivedRequest, *, default_side: int) -> _Job | str:
    """The job a valid request asks for (a description for `describe`); raises BadRequest."""
    fields, files = record.fields, record.files
    for key in fields:
        if key in FILE_FIELDS[name]:
            raise BadRequest(f"'{key}' must be a file")
        if key not in TEXT_FIELDS[name]:
            raise BadRequest(f"Unknown field '{key}'")
    for upload in files:
        if upload.field in TEXT_FIELDS[name]:
            raise BadRequest(f"'{upload.field}' must be a text field, not a file")
        if upload.field not in FILE_FIELDS[name]:
            raise BadRequest(f"Unknown file field '{upload.field}'")
    for upload in files:  # every file must decode, optional references too
        _image_size(upload)

    if name == "describe":
        image = _image_size(_one_file(record, "image_file"))
        _enum(fields, "describe_model_version", DESCRIBE_VERSIONS)
        return f"A solid-colour image, {image[0]} by {image[1]} pixels."
    if name == "upscale":
        return _validate_upscale(record)

    for key, allowed in (
        ("rendering_speed", RENDERING_SPEEDS),
        ("magic_prompt", MAGIC_PROMPTS),
        ("style_type", STYLE_TYPES),
    ):
        _enum(fields, key, allowed)
    num_images = _int(fields, "num_images", 1, 8, default=1)
    seed = _int(fields, "seed", 0, MAX_SEED, default=None)
    _int(fields, "image_weight", 1, 100, default=None)
    if (preset := fields.get("style_preset")) is not None and not STYLE_PRESET.match(preset):
        raise BadRequest(f"Invalid style_preset '{preset}'")
    if "aspect_ratio" in fields and "resolution" in fields:
        raise BadRequest("aspect_ratio and resolution are mutually exclusive")
    aspect = _aspect_ratio(fields)
    resolution = _resolution(fields)

    prompt = "" if name == "reframe" else _required_text(fields, "prompt")
    if name == "generate":
        size = resolution or (_fit(aspect, default_side) if aspect else (default_side, default_side))
    elif name == "edit":
        size = _image_size(_one_file(record, "image"))
        mask = _image_size(_one_file(record, "mask"))
        if mask != size:
            raise BadRequest(f"mask must be the same size as image: {mask[0]}x{mask[1]} vs {size[0]}x{size[1]}")
    elif name == "reframe":
        _one_file(record, "image")
        if resolution is None:
            raise BadRequest("'resolution' is required")
        size = resolution
    elif name == "remix":
        source = _image_size(_one_file(record, "image"))
        size = resolution or (_fit(aspect, max(source)) if aspect else source)
    else:  # replace-background
        size = _image_size(_one_file(record, "image"))

    if fields.get("magic_prompt") == "ON":
        prompt = f"{prompt} (magic prompt)"
    style_type = fields.get("style_type") or "AUTO"
    return _Job([size] * num_images, prompt, seed, "GENERAL" if style_type == "AUTO" else style_type)


def _validate_upscale(record: ReceivedRequest) -> _Job:
    source = _image_size(_one_file(record, "image_file"))
    raw = _required_text(record.fields, "image_request")
    try:
        request = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"image_request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest("image_request must be a JSON object")
    if unknown := set(request) - UPSCALE_KEYS:
        raise BadRequest(f"Unknown image_request keys: {sorted(unknown)}")
    for key in ("resemblance", "detail"):
        _int(request, key, 1, 100, default=None)
    if "prompt" in request and not isinstance(request["prompt"], str):
        raise BadRequest("image_request.prompt must be a string")
    _enum(request, "magic_prompt_option", MAGIC_PROMPTS)
    num_images = _int(request, "num_images", 1, 8, default=1)
    seed = _int(request, "seed", 0, MAX_SEED, default=None)
    size = (source[0] * 2, source[1] * 2)
    return _Job([size] * num_images, request.get("prompt", ""), seed, "GENERAL")


def _required_text(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key)
    if value is None or not str(value).strip():
        raise BadRequest(f"'{key}' is required")
    return str(value)


def _enum(fields: dict[str, Any], key: str, allowed: set[str]) -> None:
    if key in fields and fields[key] not in allowed:
        raise BadRequest(f"Invalid {key} '{fields[key]}'; expected one of {sorted(allowed)}")


def _int(fields: dict[str, Any], key: str, low: int, high: int, *, default: int | None) -> int | None:
    if key not in fields:
        return default
    value = fields[key]
    if isinstance(value, bool):
        raise BadRequest(f"{key} must be an integer")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{key} must be an integer") from None
    if isinstance(value, float) and value != number:
        raise BadRequest(f"{key} must be an integer")
    if not low <= number <= high:
        raise BadRequest(f"{key} must be between {low} and {high}")
    return number


def _aspect_ratio(fields: dict[str, str]) -> tuple[int, int] | None:
    value = fields.get("aspect_ratio")
    if value is None:
        return None
    if value not in ASPECT_RATIOS:
        hint = " (write ratios with 'x', e.g. 16x9)" if ":" in value else ""
        raise BadRequest(f"Invalid aspect_ratio '{value}'{hint}")
    width, height = value.split("x")
    return int(width), int(height)


def _resolution(fields: dict[str, str]) -> tuple[int, int] | None:
    value = fields.get("resolution")
    if value is None:
        return None
    match = RESOLUTION.match(value)
    if not match or not all(64 <= int(side) <= 2048 for side in match.groups()):
        raise BadRequest(f"Invalid resolution '{value}'; expected WIDTHxHEIGHT, sides 64..2048")
    return int(match[1]), int(match[2])


def _fit(aspect: tuple[int, int], long_side: int) -> tuple[int, int]:
    width, height = aspect
    if width >= height:
        return long_side, max(1, round(long_side * height / width))
    return max(1, round(long_side * width / height)), long_side


def _one_file(record: ReceivedRequest, key: str) -> ReceivedFile:
    found = record.files_named(key)
    if not found:
        raise BadRequest(f"'{key}' file is required")
    if len(found) > 1:
        raise BadRequest(f"'{key}' must be a single file")
    return found[0]


def _image_size(upload: ReceivedFile) -> tuple[int, int]:
    if len(upload.data) > MAX_FILE_BYTES:
        raise BadRequest(f"'{upload.field}' is larger than 10 MB")
    try:
        with Image.open(io.BytesIO(upload.data)) as image:
            image.load()
            if image.format not in IMAGE_FORMATS:
                raise BadRequest(f"'{upload.field}' must be PNG, JPEG or WebP, not {image.format}")
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise BadRequest(f"'{upload.field}' is not a readable image") from None


def _colour(key: str) -> tuple[int, int, int]:
    red, green, blue = hashlib.sha256(key.encode()).digest()[:3]
    return red, green, blue


@lru_cache(maxsize=16)
def _solid_png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    """Made once per size and colour: a megapixel PNG costs 20-35 ms of the process's CPU, which
    a benchmark driving the fake 50 times a second would spend instead of the app it measures."""
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG", compress_level=1)
    return out.getvalue()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)
