"""The Ideogram API client: one multipart POST per call, answers mapped to ProviderResult or a ProviderError.

Wire format in ../shared/providers.md (Ideogram). Retries, backoff and in-flight limits are the pool's job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import aiohttp

from daygen.errors import ContentRejected, ProviderMisconfigured, ProviderUnavailable
from pipelines.providers import DEFAULT_TIMEOUT, ImageFile, ProviderResult, UpstreamResponse, error_for, redact, send

log = logging.getLogger("daygen.ideogram")

PROVIDER = "Ideogram"
V3 = "/v1/ideogram-v3"

# Operation params that name stored assets; their bytes arrive as ImageFile arguments instead.
ASSET_KEYS = frozenset({"image", "mask", "style_reference_images", "character_reference_images"})
_MESSAGE_CHARS = 300

# A multipart part: (field name, (filename or None for a text field, content, content type or None)).
_Part = tuple[str, tuple[str | None, bytes | str, str | None]]


class IdeogramClient:
    """Ideogram's v3 image endpoints plus the legacy upscale and describe, over the pool actor's HTTP session."""

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
        self._api_key = api_key.strip() if api_key else None
        self._timeout = timeout or DEFAULT_TIMEOUT

    def __repr__(self) -> str:
        configured = "configured" if self._api_key else "missing"
        return f"IdeogramClient(base_url={self._base_url!r}, api_key=<{configured}>)"

    async def generate(
        self,
        params: dict[str, Any],
        *,
        style_references: Sequence[ImageFile] = (),
        character_references: Sequence[ImageFile] = (),
    ) -> ProviderResult:
        files = [
            *_file_parts("style_reference_images", style_references),
            *_file_parts("character_reference_images", character_references),
        ]
        return _images(await self._post(f"{V3}/generate", [*_text_parts(params), *files]))

    async def edit(self, params: dict[str, Any], *, image: ImageFile, mask: ImageFile) -> ProviderResult:
        parts = [*_text_parts(params), *_file_parts("image", [image]), *_file_parts("mask", [mask])]
        return _images(await self._post(f"{V3}/edit", parts))

    async def reframe(self, params: dict[str, Any], *, image: ImageFile) -> ProviderResult:
        return _images(await self._post(f"{V3}/reframe", [*_text_parts(params), *_file_parts("image", [image])]))

    async def replace_background(self, params: dict[str, Any], *, image: ImageFile) -> ProviderResult:
        parts = [*_text_parts(params), *_file_parts("image", [image])]
        return _images(await self._post(f"{V3}/replace-background", parts))

    async def remix(
        self,
        params: dict[str, Any],
        *,
        image: ImageFile,
        character_references: Sequence[ImageFile] = (),
    ) -> ProviderResult:
        parts = [
            *_text_parts(params),
            *_file_parts("image", [image]),
            *_file_parts("character_reference_images", character_references),
        ]
        return _images(await self._post(f"{V3}/remix", parts))

    async def upscale(self, params: dict[str, Any], *, image: ImageFile) -> ProviderResult:
        # The legacy endpoint takes its options as one JSON text field, with magic_prompt under its old name.
        request = {
            ("magic_prompt_option" if key == "magic_prompt" else key): value
            for key, value in params.items()
            if value is not None and key not in ASSET_KEYS
        }
        parts: list[_Part] = [("image_request", (None, json.dumps(request), None))]
        return _images(await self._post("/upscale", [*parts, *_file_parts("image_file", [image])]))

    async def describe(self, params: dict[str, Any], *, image: ImageFile) -> ProviderResult:
        response = await self._post("/describe", [*_text_parts(params), *_file_parts("image_file", [image])])
        body = _json(response)
        descriptions = body.get("descriptions") if isinstance(body, dict) else None
        if not isinstance(descriptions, list):
            raise ProviderUnavailable("Ideogram answered describe without descriptions")
        texts = [d["text"] for d in descriptions if isinstance(d, dict) and isinstance(d.get("text"), str)]
        if not texts:
            raise ProviderUnavailable("Ideogram answered describe without any description text")
        return ProviderResult(texts=texts, upstream_request_id=_request_id(response))

    async def _post(self, path: str, parts: list[_Part]) -> UpstreamResponse:
        if not self._api_key:
            raise ProviderMisconfigured("No Ideogram API key is configured")
        # Always multipart: with no file parts aiohttp would otherwise send the form url-encoded.
        form = aiohttp.FormData(default_to_multipart=True)
        for name, (filename, content, content_type) in parts:
            form.add_field(name, content, filename=filename, content_type=content_type)
        try:
            response = await send(
                self._http,
                "POST",
                f"{self._base_url}{path}",
                data=form,
                headers={"Api-Key": self._api_key},
                timeout=self._timeout,
            )
        except TimeoutError as exc:
            raise ProviderUnavailable(f"Ideogram did not answer {path} in time ({type(exc).__name__})") from exc
        except aiohttp.ClientError as exc:
            raise ProviderUnavailable(f"Could not reach Ideogram for {path} ({type(exc).__name__})") from exc
        if response.ok:
            return response
        if response.status in (401, 403):
            log.warning("Ideogram refused our API key (HTTP %s on %s)", response.status, path)
        raise error_for(response, PROVIDER, redact(_error_message(response), self._api_key)[:_MESSAGE_CHARS])


def _text_parts(params: dict[str, Any]) -> list[_Part]:
    parts: list[_Part] = []
    for key, value in params.items():
        if value is None or key in ASSET_KEYS:
            continue
        if key == "aspect_ratio":
            value = str(value).replace(":", "x")
        elif isinstance(value, bool):
            value = "true" if value else "false"
        parts.append((key, (None, str(value), None)))
    return parts


def _file_parts(name: str, images: Iterable[ImageFile]) -> list[_Part]:
    # A part without a filename is read as a text field, so a nameless image still gets one.
    return [(name, (image.filename or "image", image.data, image.content_type)) for image in images]


def _json(response: UpstreamResponse) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ProviderUnavailable(f"Ideogram answered {response.status} with a body that is not JSON") from None


def _images(response: UpstreamResponse) -> ProviderResult:
    """The safe images of an image endpoint's answer; ContentRejected if every one was withheld."""
    body = _json(response)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data or not all(isinstance(item, dict) for item in data):
        raise ProviderUnavailable("Ideogram answered without a list of images")
    safe = [
        item
        for item in data
        if item.get("is_image_safe") is not False and isinstance(item.get("url"), str) and item["url"]
    ]
    if not safe:
        raise ContentRejected(f"Ideogram withheld all {len(data)} images as unsafe")
    return ProviderResult(
        image_urls=[item["url"] for item in safe],
        seeds=[item.get("seed") if isinstance(item.get("seed"), int) else None for item in safe],
        upstream_request_id=_request_id(response),
    )


def _error_message(response: UpstreamResponse) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    message = None
    if isinstance(body, dict):
        message = next((body[k] for k in ("error", "message", "detail") if isinstance(body.get(k), str)), None)
    if message is None:
        message = response.text.strip() or response.reason
    return message


def _request_id(response: UpstreamResponse) -> str | None:
    return response.headers.get("x-request-id")
