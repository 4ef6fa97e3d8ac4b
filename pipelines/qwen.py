"""Qwen image models on Alibaba DashScope: one upstream attempt per call, errors as ProviderErrors.

Wire format: ../shared/providers.md, "Qwen on Alibaba DashScope". How DashScope's answers map
to our errors (the HTTP status first, then DashScope's `code` where the status is not enough):

| upstream                                              | raised                                   |
|-------------------------------------------------------|------------------------------------------|
| no API key configured (nothing is sent)               | ProviderMisconfigured                    |
| 401 / 403 (key refused, API not enabled for the key)  | ProviderMisconfigured, logged as warning |
| 402                                                   | ProviderOutOfFunds                       |
| 400 `Arrearage` (DashScope's "account overdue")       | ProviderOutOfFunds                       |
| 400 `DataInspectionFailed` and kin (moderation)       | ContentRejected                          |
| other 400 / 4xx                                       | ProviderBadRequest                       |
| 422                                                   | ContentRejected (shared error_for)       |
| 429 "Requests rate limit exceeded" (per second/min)   | ProviderRateLimited, Retry-After or 1 s  |
| 429 "Allocated quota exceeded" (per-minute quota)     | ProviderRateLimited, Retry-After or 15 s |
| 429 "Free allocated quota exceeded" (free tier spent) | ProviderOutOfFunds: waiting won't help   |
| 5xx, timeout, broken connection, malformed 200        | ProviderUnavailable                      |

A task that ends FAILED is mapped by its `output.code` (see `task_error`); CANCELED and
UNKNOWN (unknown or expired id) are ProviderUnavailable, so the pool may submit again.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from daygen.errors import (
    ContentRejected,
    ProviderBadRequest,
    ProviderError,
    ProviderMisconfigured,
    ProviderOutOfFunds,
    ProviderRateLimited,
    ProviderUnavailable,
)
from pipelines.providers import DEFAULT_TIMEOUT, ImageFile, ProviderResult, UpstreamResponse, error_for, redact, send

logger = logging.getLogger("daygen.qwen")

PROVIDER = "DashScope"
GENERATE_MODEL = "qwen-image"
EDIT_MODEL = "qwen-image-edit"
GENERATION_PATH = "/services/aigc/multimodal-generation/generation"
SYNTHESIS_PATH = "/services/aigc/text2image/image-synthesis"
TASK_PATH = "/tasks/{task_id}"

# Without Retry-After: the per-second window clears within a second, the per-minute quota
# "recovers within a minute" (providers.md), so wait a fraction of it rather than hammer it.
RATE_LIMIT_RETRY_S = 1.0
QUOTA_RETRY_S = 15.0

PARAMETERS = ("size", "seed", "negative_prompt", "prompt_extend", "watermark")
MODERATION_CODES = frozenset({"DataInspectionFailed", "data_inspection_failed", "IPInfringementSuspect"})
OUT_OF_FUNDS_CODES = frozenset({"Arrearage"})
TASK_STATUSES = frozenset({"PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})
FINISHED_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})


@dataclass
class TaskStatus:
    """One poll of an asynchronous task: `result` once SUCCEEDED, `error` once it ended otherwise."""

    status: str
    result: ProviderResult | None = None
    error: ProviderError | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class QwenClient:
    """Calls DashScope's Qwen image models; the pool around it owns retries, backoff and limits."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str | None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self._timeout = timeout or DEFAULT_TIMEOUT

    def __repr__(self) -> str:
        return f"QwenClient(base_url={self._base_url!r}, api_key={'<set>' if self._api_key else None})"

    async def generate(self, params: dict) -> ProviderResult:
        """Text to image with qwen-image, answered on the same call."""
        body = _sync_body(GENERATE_MODEL, params, [{"text": params["prompt"]}])
        payload = await self._call("POST", GENERATION_PATH, body)
        return _sync_result(payload, params.get("seed"))

    async def edit(self, params: dict, *, image: ImageFile) -> ProviderResult:
        """Edit `image` as the prompt says with qwen-image-edit, answered on the same call."""
        # The one data URL daygen builds: it only travels to DashScope in this request body and
        # is never stored, logged or returned (no image bytes in Postgres or API answers).
        data_url = f"data:{image.content_type};base64,{base64.b64encode(image.data).decode('ascii')}"
        body = _sync_body(EDIT_MODEL, params, [{"image": data_url}, {"text": params["prompt"]}])
        payload = await self._call("POST", GENERATION_PATH, body)
        return _sync_result(payload, params.get("seed"))

    async def submit_generate_task(self, params: dict) -> str:
        """Start a qwen-image task (X-DashScope-Async); poll it with `task_status`."""
        given = {"prompt": params["prompt"]}
        if params.get("negative_prompt") is not None:
            given["negative_prompt"] = params["negative_prompt"]
        parameters = _parameters(params, exclude={"negative_prompt"})
        body: dict[str, Any] = {"model": GENERATE_MODEL, "input": given}
        if parameters:
            body["parameters"] = parameters
        payload = await self._call("POST", SYNTHESIS_PATH, body, asynchronous=True)
        task_id = _output(payload).get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise ProviderUnavailable(f"{PROVIDER} accepted a task without giving its id")
        return task_id

    async def task_status(self, task_id: str) -> TaskStatus:
        """Where the task stands now; DashScope suggests polling about every 10 s."""
        payload = await self._call("GET", TASK_PATH.format(task_id=quote(task_id, safe="")))
        output = _output(payload)
        status = output.get("task_status")
        if status not in TASK_STATUSES:
            raise ProviderUnavailable(f"{PROVIDER} reported task status {str(status)[:40]!r}")
        if status == "SUCCEEDED":
            return _succeeded(task_id, payload, output, self._api_key)
        if status == "FAILED":
            message = redact(str(output.get("message") or ""), self._api_key)
            return TaskStatus(status, error=task_error(task_id, output.get("code"), message))
        if status == "CANCELED":
            return TaskStatus(status, error=ProviderUnavailable(f"{PROVIDER} task {task_id} was canceled"))
        if status == "UNKNOWN":
            return TaskStatus(status, error=ProviderUnavailable(f"{PROVIDER} task {task_id} is unknown or expired"))
        return TaskStatus(status)

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, asynchronous: bool = False
    ) -> dict[str, Any]:
        if self._api_key is None:
            logger.warning("%s API key is not configured; Qwen calls fail until it is set", PROVIDER)
            raise ProviderMisconfigured(f"{PROVIDER} API key is not configured")
        headers = {"Authorization": f"Bearer {self._api_key}"}
        if asynchronous:
            headers["X-DashScope-Async"] = "enable"
        try:
            response = await send(
                self._http, method, self._base_url + path, json=body, headers=headers, timeout=self._timeout
            )
        except TimeoutError as exc:
            raise ProviderUnavailable(f"{PROVIDER} did not answer in time ({type(exc).__name__})") from exc
        except aiohttp.ClientError as exc:
            reason = redact(f"{type(exc).__name__}: {exc}", self._api_key)
            raise ProviderUnavailable(f"{PROVIDER} could not be reached ({reason})"[:500]) from exc
        if not response.ok:
            raise self._error(response)
        try:
            payload = response.json()
        except ValueError as exc:
            raise ProviderUnavailable(f"{PROVIDER} answered 200 with a body that is not JSON") from exc
        if not isinstance(payload, dict):
            raise ProviderUnavailable(f"{PROVIDER} answered 200 with JSON that is not an object")
        return payload

    def _error(self, response: UpstreamResponse) -> ProviderError:
        # Redacted before anything reads it: the error, the job and the warning below all quote it.
        code, message = (redact(text, self._api_key) for text in _code_and_message(response))
        detail = f"{code}: {message}" if code or message else response.reason or "no details"
        error = error_for(response, PROVIDER, detail)
        if isinstance(error, ProviderMisconfigured):
            # An operator must act; the message names DashScope's code, never our key.
            logger.warning("%s refused our API key (HTTP %s, %s)", PROVIDER, response.status, detail[:200])
            return error
        if response.status == 400 and code in MODERATION_CODES:
            return ContentRejected(error.message)
        if response.status == 400 and code in OUT_OF_FUNDS_CODES:
            return ProviderOutOfFunds(error.message)
        if isinstance(error, ProviderRateLimited):
            if message.lower().startswith("free allocated quota exceeded"):
                return ProviderOutOfFunds(error.message)
            if error.retry_after is None:
                error.retry_after = _default_retry_after(code, message)
        return error


def task_error(task_id: str, code: Any, message: Any) -> ProviderError:
    """The error for a task that ended FAILED, by DashScope's `code` (its HTTP status is always 200)."""
    code = str(code or "")
    text = f"{PROVIDER} task {task_id} failed: {code or 'no code'}: {message or 'no message'}"[:500]
    if code in MODERATION_CODES:
        return ContentRejected(text)
    if code in OUT_OF_FUNDS_CODES:
        return ProviderOutOfFunds(text)
    if code.startswith("Throttling"):
        return ProviderRateLimited(text, retry_after=_default_retry_after(code, str(message or "")))
    if code.startswith(("InvalidParameter", "BadRequest", "InvalidURL")):
        return ProviderBadRequest(text)
    # InternalError.*, a missing code or one we do not know: DashScope's side, worth another try.
    return ProviderUnavailable(text)


def _parameters(params: dict, *, exclude: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    # Only the names DashScope knows: validated params may carry others (an edit's image id).
    return {name: params[name] for name in PARAMETERS if name not in exclude and params.get(name) is not None}


def _sync_body(model: str, params: dict, content: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": {"messages": [{"role": "user", "content": content}]}}
    if parameters := _parameters(params):
        body["parameters"] = parameters
    return body


def _output(payload: dict[str, Any]) -> dict[str, Any]:
    output = payload.get("output")
    if not isinstance(output, dict):
        raise ProviderUnavailable(f"{PROVIDER} answered 200 without an output object")
    return output


def _sync_result(payload: dict[str, Any], seed: int | None) -> ProviderResult:
    choices = _output(payload).get("choices")
    urls: list[str] = []
    try:
        for choice in choices:
            for part in choice["message"]["content"]:
                if "image" in part:
                    urls.append(part["image"])
    except (KeyError, TypeError) as exc:
        raise ProviderUnavailable(f"{PROVIDER} answered 200 with malformed choices") from exc
    if not urls or not all(isinstance(url, str) and url for url in urls):
        raise ProviderUnavailable(f"{PROVIDER} answered 200 without an image URL")
    return ProviderResult(image_urls=urls, seeds=[seed] * len(urls), upstream_request_id=_request_id(payload))


def _succeeded(task_id: str, payload: dict[str, Any], output: dict[str, Any], secret: str | None) -> TaskStatus:
    results = output.get("results")
    if not isinstance(results, list) or not all(isinstance(item, dict) for item in results):
        raise ProviderUnavailable(f"{PROVIDER} reported task {task_id} SUCCEEDED without results")
    urls = [item["url"] for item in results if isinstance(item.get("url"), str) and item["url"]]
    if not urls:
        # Every image of the task failed on its own (e.g. output moderation): a failure by its first code.
        first = results[0] if results else {}
        message = redact(str(first.get("message") or ""), secret)
        return TaskStatus("FAILED", error=task_error(task_id, first.get("code"), message))
    result = ProviderResult(image_urls=urls, seeds=[None] * len(urls), upstream_request_id=_request_id(payload))
    return TaskStatus("SUCCEEDED", result=result)


def _request_id(payload: dict[str, Any]) -> str | None:
    request_id = payload.get("request_id")
    return request_id if isinstance(request_id, str) and request_id else None


def _code_and_message(response: UpstreamResponse) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("code") or ""), str(body.get("message") or "")


def _default_retry_after(code: str, message: str) -> float:
    if code == "Throttling.AllocationQuota" or message.lower().startswith("allocated quota exceeded"):
        return QUOTA_RETRY_S
    return RATE_LIMIT_RETRY_S
