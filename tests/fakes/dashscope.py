"""A local Alibaba DashScope API (Qwen image models) for tests: real HTTP on loopback.

The wire format follows ../shared/providers.md, "Qwen on Alibaba DashScope". Use it as
``with FakeDashScope() as fake:`` (or ``start()``/``stop()``) and point the client at
``fake.base_url`` (``http://127.0.0.1:<port>/api/v1``, standing in for
``https://dashscope-intl.aliyuncs.com/api/v1``) with ``Authorization: Bearer <fake.api_key>``.
Every call under ``/api/v1`` is recorded in ``fake.received`` before anything else happens
(method, path, headers, JSON body, and the answer's ``status``; ``repr`` hides the key).

Every error answer is JSON ``{"request_id", "code", "message"}`` with the HTTP status.
Checks on every call, in this order:

1. ``Authorization: Bearer <api_key>`` exactly, else 401 ``InvalidApiKey`` "Invalid API-key provided.".
2. Scripted delays: ``set_latency`` on every call, plus ``slow_next`` or ``hang_next`` (a hung
   call waits until ``release_hung()``, ``reset()`` or ``stop()``; on stop it answers 503).
3. A scripted failure (``fail_next``; with ``echo_auth=True`` its message quotes the call's
   ``Authorization`` header back), else the endpoint's own checks below.

``POST /services/aigc/multimodal-generation/generation`` (synchronous; endpoint "generation"):

- ``X-DashScope-Async: enable`` is refused: 403 ``AccessDenied`` "current user api does not
  support asynchronous calls" (what DashScope answers for this endpoint).
- The body must be a JSON object, else 400 ``InvalidParameter``. ``model`` must be
  ``qwen-image``, ``qwen-image-plus`` or ``qwen-image-edit``, else 400 ``InvalidParameter``
  "Model not exist.".
- The per-model rate limit (below) is checked here, so a call refused later for a bad
  parameter still counts against the limit.
- Then 400 ``InvalidParameter`` unless: ``input.messages`` is exactly one message with
  ``role: "user"``; its ``content`` is a list of parts, each an object with exactly one key,
  ``text`` or ``image`` (order free); exactly one non-blank ``text``; ``qwen-image-edit`` has
  exactly one ``image`` and the others none. The image is a ``data:<type>;base64,...`` URL or
  an ``http(s)`` URL on loopback (``127.0.0.0/8``, ``::1``, ``localhost``: a fake must not reach
  the internet), which is fetched (non-200 is a 400); the bytes must decode with Pillow.
  ``parameters`` (optional) may hold only ``size`` (one of ``SIZES``), ``seed`` (integer
  0..2147483647, not a bool), ``negative_prompt`` (string), ``prompt_extend`` and ``watermark``
  (booleans) and ``n`` (must be 1). Unknown keys are refused: stricter than DashScope, so a
  misspelt parameter fails loudly.
- Success, 200: ``{"request_id", "output": {"choices": [{"finish_reason": "stop", "message":
  {"role": "assistant", "content": [{"image": <url>}]}}]}, "usage": {"width", "height",
  "image_count": 1}}``. The size is ``size``, else for an edit the input image's size, else
  ``DEFAULT_SIZE``.

``POST /services/aigc/text2image/image-synthesis`` (asynchronous; endpoint "image-synthesis"):

- Without ``X-DashScope-Async: enable``: 403 ``AccessDenied`` "current user api does not
  support synchronous calls" (DashScope's documented answer).
- ``model`` must be ``qwen-image`` or ``qwen-image-plus`` (the documented async models),
  else 400 "Model not exist."; then the rate limit; then ``input`` must be an object with a
  non-blank ``prompt`` and optionally ``negative_prompt`` (nothing else); ``parameters`` as
  above. Success, 200: ``{"request_id", "output": {"task_id", "task_status": "PENDING"}}``.

``GET /tasks/{task_id}`` (endpoint "tasks"; not rate limited): always 200. An unknown id is
``{"request_id", "output": {"task_id", "task_status": "UNKNOWN"}}``, as DashScope reports
unknown or expired ids. A known task advances one step per poll: with ``task_polls = N``
(default 3, read when the task is submitted) poll k < N reports ``PENDING`` for k = 1 and
``RUNNING`` after; poll N and later report the terminal status. Output carries ``task_id``,
``task_status``, ``submit_time``, and ``scheduled_time``/``end_time`` once reached
(``"YYYY-MM-DD HH:MM:SS.mmm"``). ``SUCCEEDED`` adds
``output.results: [{"orig_prompt", "actual_prompt", "url"}]``, ``output.task_metrics`` and
``usage: {"image_count": 1}``; the image is made (and its URL's TTL starts) at the first
``SUCCEEDED`` poll, and later polls repeat the same URL. ``fail_next_task`` makes the next tasks
end ``FAILED`` with ``output.code``/``output.message`` (or ``CANCELED``). ``poll_count(task_id)``
counts polls that reached the task (not those refused by auth or a scripted failure).

Rate limits: ``set_rpm(rpm)`` (or ``rpm=`` at construction) limits calls per model per
minute, and per second to ``ceil(rpm / 60)`` (override with ``rps=``), each over a sliding
window on the injectable ``clock``; only admitted calls count. Beyond either: 429
``Throttling.RateQuota`` "Requests rate limit exceeded, please try again later.". The
"Allocated quota exceeded" 429 is scripted: ``fail_next(429, code=QUOTA_CODE, message=QUOTA_MESSAGE)``.

Images: each URL is ``<origin>/results/<name>.png?Signature=<token>`` on the fake itself (no
auth, like DashScope's signed OSS links) and serves a real PNG of the answered size, one solid
colour derived from the prompt and seed. It expires ``url_ttl`` seconds (default 60, on
``clock``) after it is handed out, or at once with ``expire_urls()``: then 403 with an
OSS-style XML ``AccessDenied`` "Request has expired."; a wrong signature is 403 too, an unknown
name 404. ``fake.downloads`` lists the paths fetched.

Any other path under ``/api/v1`` is recorded (endpoint "unknown") and answered 404 ``NotFound``.

Not modelled: content moderation, prompt length limits, image dimension limits, the 20 QPS
limit on task polls, and task expiry after 24 h.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import json
import math
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import FakeServer

DEFAULT_API_KEY = "sk-fake-dashscope"
API_PREFIX = "/api/v1"
ENDPOINT_PATHS = {
    "generation": "/services/aigc/multimodal-generation/generation",
    "image-synthesis": "/services/aigc/text2image/image-synthesis",
    "tasks": "/tasks/{task_id}",
}

SYNC_MODELS = frozenset({"qwen-image", "qwen-image-plus", "qwen-image-edit"})
EDIT_MODELS = frozenset({"qwen-image-edit"})
ASYNC_MODELS = frozenset({"qwen-image", "qwen-image-plus"})
SIZES = {
    "1328*1328": (1328, 1328),
    "1664*928": (1664, 928),
    "1472*1140": (1472, 1140),
    "1140*1472": (1140, 1472),
    "928*1664": (928, 1664),
}
DEFAULT_SIZE = "1328*1328"
MAX_SEED = 2_147_483_647
TASK_STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")

RATE_LIMIT_CODE = "Throttling.RateQuota"
RATE_LIMIT_MESSAGE = "Requests rate limit exceeded, please try again later."
QUOTA_CODE = "Throttling.AllocationQuota"
QUOTA_MESSAGE = "Allocated quota exceeded, please increase your quota limit."
SYNC_ONLY_MESSAGE = "current user api does not support synchronous calls"
ASYNC_REFUSED_MESSAGE = "current user api does not support asynchronous calls"

FAILURES = {
    400: ("InvalidParameter", "The request parameters are invalid."),
    401: ("InvalidApiKey", "Invalid API-key provided."),
    403: ("AccessDenied", "Access denied."),
    429: (RATE_LIMIT_CODE, RATE_LIMIT_MESSAGE),
    500: ("InternalError", "An internal error has occured, please try again later or contact service support."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable, please try again later."),
}

_PARAMETERS = frozenset({"size", "seed", "negative_prompt", "prompt_extend", "watermark", "n"})
_FETCH_TIMEOUT_S = 5.0


class DashScopeError(Exception):
    """A refusal, answered as ``{request_id, code, message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _invalid(message: str) -> DashScopeError:
    return DashScopeError(400, "InvalidParameter", message)


class ManualClock:
    """A clock that moves only when told, for rate windows and URL expiry without waiting."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ReceivedRequest:
    """One API call as the fake saw it; `status` and `answered_at` are filled in once it is answered."""

    method: str
    path: str
    endpoint: str
    headers: dict[str, str]
    json: Any = None
    status: int | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived
    answered_at: float | None = None

    def __repr__(self) -> str:
        headers = {k: ("Bearer <redacted>" if k == "authorization" else v) for k, v in self.headers.items()}
        return f"ReceivedRequest({self.method} {self.path} status={self.status} json={self.json!r} headers={headers!r})"


@dataclass
class _Script:
    endpoint: str | None
    times: int
    kind: str  # "fail", "hang" or "slow"
    status: int = 0
    code: str = ""
    message: str = ""
    seconds: float = 0.0
    echo_auth: bool = False


@dataclass
class _Ending:
    status: str
    code: str | None
    message: str | None
    times: int


@dataclass
class _Task:
    task_id: str
    prompt: str
    prompt_extend: bool
    seed: int | None
    size: tuple[int, int]
    polls_to_finish: int
    ending: str = "SUCCEEDED"
    code: str | None = None
    message: str | None = None
    submit_time: str = ""
    scheduled_time: str | None = None
    end_time: str | None = None
    url: str | None = None
    polls: int = 0


@dataclass
class _Result:
    signature: str
    size: tuple[int, int]
    colour: tuple[int, int, int]
    expires_at: float


class FakeDashScope:
    """DashScope's Qwen image API on a loopback port, with scriptable failures, tasks and rate limits."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        url_ttl: float = 60.0,
        task_polls: int = 3,
        rpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self.clock = clock
        self._defaults = (url_ttl, task_polls, rpm)
        self.url_ttl = url_ttl
        self.task_polls = task_polls
        self.latency = 0.0
        self.received: list[ReceivedRequest] = []
        self.downloads: list[str] = []
        self._lock = threading.Lock()
        self._hung = threading.Condition(self._lock)
        self._hung_now = 0
        self._scripts: list[_Script] = []
        self._endings: list[_Ending] = []
        self._tasks: dict[str, _Task] = {}
        self._results: dict[str, _Result] = {}
        self._limits: dict[str | None, tuple[int, int] | None] = {}
        self._windows: dict[str, deque[float]] = {}
        self._stopping = False
        self._release: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._server = FakeServer(self._app(), on_shutdown=self._on_server_stopping)
        self.set_rpm(rpm)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return self._server.base_url

    @property
    def base_url(self) -> str:
        return self._server.base_url + API_PREFIX

    def start(self) -> str:
        if self._server.port is not None:
            return self.base_url
        self._stopping = False
        self._release = asyncio.Event()
        self._stop = asyncio.Event()
        self._server.start()
        return self.base_url

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeDashScope:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget calls, tasks, images, scripts and rate windows; release hung calls; restore the defaults."""
        self.release_hung()
        url_ttl, task_polls, rpm = self._defaults
        with self._lock:
            self.received.clear()
            self.downloads.clear()
            self._scripts.clear()
            self._endings.clear()
            self._tasks.clear()
            self._results.clear()
            self._windows.clear()
            self.url_ttl = url_ttl
            self.task_polls = task_polls
            self.latency = 0.0
        self.set_rpm(rpm)

    # -- scripting -------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        code: str | None = None,
        message: str | None = None,
        endpoint: str | None = None,
        echo_auth: bool = False,
    ) -> None:
        """Answer the next `times` calls (to `endpoint`, or any) with `status` and a DashScope error body.

        `code` and `message` default per status (see `FAILURES`): 429 is the rate-limit refusal;
        pass `code=QUOTA_CODE, message=QUOTA_MESSAGE` for the allocated-quota one. With `echo_auth`
        the message quotes the call's own Authorization header, as a careless upstream might.
        """
        default_code, default_message = FAILURES.get(status, ("InternalError", f"Scripted failure {status}."))
        script = _Script(endpoint, times, "fail", status, code or default_code, message or default_message)
        script.echo_auth = echo_auth
        self._add(script)

    def hang_next(self, times: int = 1, *, endpoint: str | None = None) -> None:
        """The next `times` authorised calls do not answer until `release_hung()` or the server stops."""
        self._add(_Script(endpoint, times, "hang"))

    def slow_next(self, seconds: float, times: int = 1, *, endpoint: str | None = None) -> None:
        """The next `times` authorised calls take `seconds` longer."""
        self._add(_Script(endpoint, times, "slow", seconds=seconds))

    def set_latency(self, seconds: float) -> None:
        """Every authorised call takes at least this long."""
        self.latency = seconds

    def set_rpm(self, rpm: int | None, *, model: str | None = None, rps: int | None = None) -> None:
        """Limit calls per minute for `model` (or every model, each counted apart); None lifts the limit.

        The per-second limit is `rps`, by default ceil(rpm / 60) as DashScope derives it.
        """
        limit = None if rpm is None else (rpm, rps if rps is not None else math.ceil(rpm / 60))
        with self._lock:
            if model is None:
                self._limits = {None: limit}
            else:
                self._limits[model] = limit

    def fail_next_task(
        self,
        code: str = "InternalError.Algo",
        message: str = "An internal error occurred while generating the image.",
        times: int = 1,
        *,
        status: str = "FAILED",
    ) -> None:
        """The next `times` submitted tasks end `status` (FAILED or CANCELED) instead of SUCCEEDED."""
        if status not in ("FAILED", "CANCELED"):
            raise ValueError(f"a task can be scripted to end FAILED or CANCELED, not {status!r}")
        with self._lock:
            if status == "CANCELED":
                self._endings.append(_Ending(status, None, None, times))
            else:
                self._endings.append(_Ending(status, code, message, times))

    def release_hung(self) -> None:
        """Answer every hung call now (normally), and drop hangs scripted but not yet used."""
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
            for result in self._results.values():
                result.expires_at = float("-inf")

    # -- inspection ------------------------------------------------------------------------

    def requests_to(self, endpoint: str) -> list[ReceivedRequest]:
        return [r for r in self.received if r.endpoint == endpoint]

    def poll_count(self, task_id: str) -> int:
        task = self._tasks.get(task_id)
        return task.polls if task is not None else 0

    # -- scripts and hangs -----------------------------------------------------------------

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

    async def _delay(self, endpoint: str) -> None:
        assert self._stop is not None
        delay = self.latency
        script = self._take({"hang", "slow"}, endpoint)
        if script is not None and script.kind == "slow":
            delay += script.seconds
        if delay > 0:
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass
        if script is not None and script.kind == "hang":
            release = self._release  # captured in the same loop step as the script, so release_hung cannot miss it
            assert release is not None
            with self._hung:
                self._hung_now += 1
                self._hung.notify_all()
            try:
                await release.wait()
            finally:
                with self._hung:
                    self._hung_now -= 1
        if self._stopping:
            raise DashScopeError(503, *FAILURES[503])

    # -- rate limits -----------------------------------------------------------------------

    def _admit(self, model: str) -> None:
        with self._lock:
            limit = self._limits.get(model, self._limits.get(None))
            if limit is None:
                return
            per_minute, per_second = limit
            now = self.clock()
            window = self._windows.setdefault(model, deque())
            while window and window[0] <= now - 60:
                window.popleft()
            last_second = sum(1 for t in window if t > now - 1)
            if len(window) >= per_minute or last_second >= per_second:
                raise DashScopeError(429, RATE_LIMIT_CODE, RATE_LIMIT_MESSAGE)
            window.append(now)

    # -- HTTP ------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        routes = [
            Route(API_PREFIX + ENDPOINT_PATHS["generation"], self._endpoint("generation"), methods=["POST"]),
            Route(API_PREFIX + ENDPOINT_PATHS["image-synthesis"], self._endpoint("image-synthesis"), methods=["POST"]),
            Route(API_PREFIX + ENDPOINT_PATHS["tasks"], self._endpoint("tasks"), methods=["GET"]),
            Route("/results/{name}.png", self._download, methods=["GET"]),
            Route(API_PREFIX + "/{rest:path}", self._unknown, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ]
        return Starlette(routes=routes)

    def _endpoint(self, name: str) -> Callable[[Request], Any]:
        handlers = {"generation": self._generate, "image-synthesis": self._submit, "tasks": self._poll}

        async def handle(request: Request) -> Response:
            body = await request.body()
            record = ReceivedRequest(
                method=request.method,
                path=request.url.path,
                endpoint=name,
                headers={k.lower(): v for k, v in request.headers.items()},
                json=_json_or_none(body),
            )
            with self._lock:
                self.received.append(record)
            request_id = str(uuid.uuid4())
            try:
                if request.headers.get("authorization") != f"Bearer {self.api_key}":
                    raise DashScopeError(401, *FAILURES[401])
                await self._delay(name)
                if failure := self._take({"fail"}, name):
                    message = failure.message
                    if failure.echo_auth:
                        message = f"{message} (Authorization: {request.headers.get('authorization')})"
                    raise DashScopeError(failure.status, failure.code, message)
                answer = await handlers[name](request, body)
                response = JSONResponse({"request_id": request_id, **answer})
            except DashScopeError as exc:
                response = _error(exc, request_id)
            record.status = response.status_code
            record.answered_at = time.monotonic()
            return response

        return handle

    async def _unknown(self, request: Request) -> Response:
        body = await request.body()
        record = ReceivedRequest(
            request.method, request.url.path, "unknown", {k.lower(): v for k, v in request.headers.items()}
        )
        record.json = _json_or_none(body)
        record.status = 404
        with self._lock:
            self.received.append(record)
        message = f"No such API in the DashScope fake: {request.method} {request.url.path}"
        return _error(DashScopeError(404, "NotFound", message), str(uuid.uuid4()))

    async def _generate(self, request: Request, body: bytes) -> dict[str, Any]:
        if request.headers.get("x-dashscope-async", "").lower() == "enable":
            raise DashScopeError(403, "AccessDenied", ASYNC_REFUSED_MESSAGE)
        payload = _json_object(body)
        model = _model(payload, SYNC_MODELS)
        self._admit(model)
        prompt, image = _message(payload.get("input"))
        if model in EDIT_MODELS and image is None:
            raise _invalid(f"{model} needs exactly one image part in input.messages[0].content.")
        if model not in EDIT_MODELS and image is not None:
            raise _invalid(f"{model} takes no image; use qwen-image-edit to edit an image.")
        params = _parameters(payload.get("parameters"))
        input_size = await _image_size(image) if image is not None else None
        size = SIZES[params["size"]] if "size" in params else input_size or SIZES[DEFAULT_SIZE]
        url = self._publish(size, prompt, params.get("seed"))
        return {
            "output": {
                "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": [{"image": url}]}}]
            },
            "usage": {"width": size[0], "height": size[1], "image_count": 1},
        }

    async def _submit(self, request: Request, body: bytes) -> dict[str, Any]:
        if request.headers.get("x-dashscope-async", "").lower() != "enable":
            raise DashScopeError(403, "AccessDenied", SYNC_ONLY_MESSAGE)
        payload = _json_object(body)
        model = _model(payload, ASYNC_MODELS)
        self._admit(model)
        given = payload.get("input")
        if not isinstance(given, dict):
            raise _invalid("input must be an object with a prompt.")
        if extra := sorted(set(given) - {"prompt", "negative_prompt"}):
            raise _invalid(f"Unknown field in input: {', '.join(extra)}.")
        prompt = given.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _invalid("input.prompt is required and must be a non-blank string.")
        if not isinstance(given.get("negative_prompt", ""), str):
            raise _invalid("input.negative_prompt must be a string.")
        params = _parameters(payload.get("parameters"))
        task = _Task(
            task_id=str(uuid.uuid4()),
            prompt=prompt,
            prompt_extend=params.get("prompt_extend", True),
            seed=params.get("seed"),
            size=SIZES[params.get("size", DEFAULT_SIZE)],
            polls_to_finish=max(1, self.task_polls),
            submit_time=_now(),
        )
        with self._lock:
            if self._endings:
                ending = self._endings[0]
                task.ending, task.code, task.message = ending.status, ending.code, ending.message
                ending.times -= 1
                if ending.times <= 0:
                    self._endings.pop(0)
            self._tasks[task.task_id] = task
        return {"output": {"task_id": task.task_id, "task_status": "PENDING"}}

    async def _poll(self, request: Request, body: bytes) -> dict[str, Any]:
        task_id = request.path_params["task_id"]
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return {"output": {"task_id": task_id, "task_status": "UNKNOWN"}}
            task.polls += 1
            if task.polls < task.polls_to_finish:
                status = "PENDING" if task.polls == 1 else "RUNNING"
            else:
                status = task.ending
            if status != "PENDING" and task.scheduled_time is None:
                task.scheduled_time = _now()
            if status == task.ending and task.end_time is None:
                task.end_time = _now()
        output: dict[str, Any] = {"task_id": task_id, "task_status": status, "submit_time": task.submit_time}
        if task.scheduled_time is not None:
            output["scheduled_time"] = task.scheduled_time
        if status != task.ending:
            return {"output": output}
        output["end_time"] = task.end_time
        if status == "CANCELED":
            return {"output": output}
        if status == "FAILED":
            output.update(code=task.code, message=task.message, task_metrics={"TOTAL": 1, "SUCCEEDED": 0, "FAILED": 1})
            return {"output": output}
        if task.url is None:
            url = self._publish(task.size, task.prompt, task.seed)
            with self._lock:  # two racing polls must still report one URL
                task.url = task.url or url
        result = {"orig_prompt": task.prompt, "actual_prompt": task.prompt, "url": task.url}
        if not task.prompt_extend:
            del result["actual_prompt"]
        output.update(results=[result], task_metrics={"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0})
        return {"output": output, "usage": {"image_count": 1}}

    def _publish(self, size: tuple[int, int], prompt: str, seed: int | None) -> str:
        name = uuid.uuid4().hex
        digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
        result = _Result(
            secrets.token_urlsafe(16), size, (digest[0], digest[1], digest[2]), self.clock() + self.url_ttl
        )
        with self._lock:
            self._results[name] = result
        return f"{self.origin}/results/{name}.png?Signature={result.signature}"

    async def _download(self, request: Request) -> Response:
        name = request.path_params["name"]
        with self._lock:
            self.downloads.append(request.url.path)
            result = self._results.get(name)
        if result is None:
            return _oss_error(404, "NoSuchKey", "The specified key does not exist.")
        if request.query_params.get("Signature") != result.signature:
            return _oss_error(403, "SignatureDoesNotMatch", "The request signature does not match.")
        if self.clock() >= result.expires_at:
            return _oss_error(403, "AccessDenied", "Request has expired.")
        return Response(_solid_png(result.size, result.colour), media_type="image/png")


# -- validation ----------------------------------------------------------------------------


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _json_object(body: bytes) -> dict[str, Any]:
    payload = _json_or_none(body)
    if not isinstance(payload, dict):
        raise _invalid("The request body must be a JSON object.")
    return payload


def _model(payload: dict[str, Any], known: frozenset[str]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or model not in known:
        raise _invalid("Model not exist.")
    return model


def _message(given: Any) -> tuple[str, str | None]:
    """The prompt and the optional image of the one user message."""
    messages = given.get("messages") if isinstance(given, dict) else None
    if not isinstance(messages, list) or len(messages) != 1:
        raise _invalid("input.messages must hold exactly one message.")
    message = messages[0]
    if not isinstance(message, dict) or message.get("role") != "user":
        raise _invalid("input.messages[0].role must be user.")
    content = message.get("content")
    if not isinstance(content, list):
        raise _invalid("input.messages[0].content must be a list of parts.")
    texts: list[Any] = []
    images: list[Any] = []
    for part in content:
        if not isinstance(part, dict) or len(part) != 1 or not ({"text", "image"} & set(part)):
            raise _invalid('Each content part must be {"text": ...} or {"image": ...}.')
        (texts if "text" in part else images).append(next(iter(part.values())))
    if len(texts) != 1 or not isinstance(texts[0], str) or not texts[0].strip():
        raise _invalid("input.messages[0].content must hold exactly one non-blank text part.")
    if len(images) > 1:
        raise _invalid("input.messages[0].content may hold at most one image part.")
    if images and (not isinstance(images[0], str) or not images[0]):
        raise _invalid("The image part must be a URL or a data URL.")
    return texts[0], images[0] if images else None


def _parameters(given: Any) -> dict[str, Any]:
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise _invalid("parameters must be an object.")
    if extra := sorted(set(given) - _PARAMETERS):
        raise _invalid(f"Unknown parameter: {', '.join(extra)}.")
    if "size" in given and (not isinstance(given["size"], str) or given["size"] not in SIZES):
        raise _invalid(f"size must be one of {', '.join(SIZES)}.")
    seed = given.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise _invalid(f"seed must be an integer in [0, {MAX_SEED}].")
    if not isinstance(given.get("negative_prompt", ""), str):
        raise _invalid("negative_prompt must be a string.")
    for flag in ("prompt_extend", "watermark"):
        if not isinstance(given.get(flag, False), bool):
            raise _invalid(f"{flag} must be a boolean.")
    if given.get("n", 1) != 1 or isinstance(given.get("n"), bool):
        raise _invalid("n must be 1 for this model.")
    return given


async def _image_size(ref: str) -> tuple[int, int]:
    """Size of the image behind a data URL or a loopback http(s) URL, or 400."""
    if ref.startswith("data:"):
        header, sep, data = ref.partition(",")
        if not sep or not header.endswith(";base64"):
            raise _invalid("The image data URL must be data:<type>;base64,<data>.")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _invalid("The image data URL is not valid base64.") from exc
    else:
        parts = urlsplit(ref)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _invalid("The image must be an http(s) URL or a data URL.")
        if not _is_loopback(parts.hostname):
            raise _invalid(f"The DashScope fake only downloads images from loopback hosts, not {parts.hostname}.")
        try:
            async with httpx.AsyncClient(timeout=_FETCH_TIMEOUT_S, trust_env=False) as client:
                response = await client.get(ref)
        except httpx.HTTPError as exc:
            raise _invalid(f"Failed to download the image from {ref}: {exc!r}.") from exc
        if response.status_code != 200:
            raise _invalid(f"Failed to download the image from {ref}: HTTP {response.status_code}.")
        raw = response.content
    try:
        with Image.open(io.BytesIO(raw)) as image:
            size = image.size
            image.verify()
    except Exception as exc:  # anything Pillow cannot read is the client's bad image
        raise _invalid("The image could not be decoded as an image.") from exc
    return size


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- answers -------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _error(exc: DashScopeError, request_id: str) -> JSONResponse:
    return JSONResponse({"request_id": request_id, "code": exc.code, "message": exc.message}, exc.status)


def _oss_error(status: int, code: str, message: str) -> Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Response(body, status, media_type="application/xml")


@lru_cache(maxsize=16)
def _solid_png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


@dataclass(frozen=True)
class SeenCall:
    """What a fake in another process reports of one call it received."""

    endpoint: str
    method: str
    at: float  # time.monotonic() of that process: the same clock as this one's on Linux
    status: int | None
    answered_at: float | None


_SERVE_CONTROL = """
import json, sys
from tests.fakes.dashscope import FakeDashScope
fake = FakeDashScope()
print(json.dumps([fake.start(), fake.api_key]), flush=True)
for line in sys.stdin:
    name, args = json.loads(line)
    if name == "received":
        answer = [[r.endpoint, r.method, r.at, r.status, r.answered_at] for r in list(fake.received)]
    else:
        answer = getattr(fake, name)(*args)
    print(json.dumps(answer), flush=True)
fake.stop()
"""


class FakeDashScopeProcess:
    """A FakeDashScope in a process of its own, driven over its stdin: for benchmarks, whose own
    CPU (and GIL) the fake would otherwise share, so that its answers were held up by their clients."""

    def __init__(self) -> None:
        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVE_CONTROL], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.base_url, self.api_key = self._answer()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _answer(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the fake DashScope process ended")
        return json.loads(line)

    def _call(self, name: str, *args: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps([name, args]) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def set_latency(self, seconds: float) -> None:
        self._call("set_latency", seconds)

    def set_rpm(self, rpm: int | None) -> None:
        self._call("set_rpm", rpm)

    def received(self) -> list[SeenCall]:
        return [SeenCall(*fields) for fields in self._call("received")]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the fake stops at the end of its input
        self.process.wait(timeout=30)

    def __enter__(self) -> FakeDashScopeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
