"""What every provider client shares: the files it sends and the result it returns.

A client makes exactly one upstream attempt per call and raises the ProviderError subclass
that says what went wrong (daygen/errors.py); retries, backoff and limits live in the pool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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

# What a client uses when none is given; the pool passes the configured one (provider_*_timeout_seconds).
# A generation takes tens of seconds before the first byte of the answer; connecting should not.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(sock_connect=5.0, sock_read=120.0)
# An API answer is JSON of a few KB (images come as URLs, copied apart); more is a broken upstream.
MAX_ANSWER_BYTES = 4 * 1024 * 1024


def provider_timeout(*, connect_seconds: float, read_seconds: float) -> aiohttp.ClientTimeout:
    """How long to wait for an upstream connection, and then between bytes of its answer."""
    return aiohttp.ClientTimeout(sock_connect=connect_seconds, sock_read=read_seconds)


def provider_session(connections: int) -> aiohttp.ClientSession:
    """The HTTP client of a pool actor's provider calls and downloads: aiohttp's own API, since
    httpx's layers over the same pool cost about as much CPU as the requests (bench/http_client.py).
    No cookies are kept between upstream calls. Made inside the running event loop."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=DEFAULT_TIMEOUT,
    )


@dataclass(frozen=True)
class UpstreamResponse:
    """An upstream API's answer, read whole (its JSON is small) so the connection is free at once."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not."""
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def send(http: aiohttp.ClientSession, method: str, url: str, **request: Any) -> UpstreamResponse:
    """One request (`request`: aiohttp's arguments), redirects not followed; raises TimeoutError or
    aiohttp.ClientError when no answer came, ProviderUnavailable when it is over MAX_ANSWER_BYTES."""
    async with http.request(method, url, allow_redirects=False, **request) as response:
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise ProviderUnavailable(f"the provider answered with more than {MAX_ANSWER_BYTES} bytes")
        return UpstreamResponse(response.status, response.reason or "", response.headers, bytes(body))


@dataclass(frozen=True)
class ImageFile:
    """An input image as sent upstream: a multipart file part or an image URL's bytes."""

    filename: str
    data: bytes
    content_type: str


@dataclass
class ProviderResult:
    """Upstream output: short-lived image URLs to copy into the store at once, or text."""

    image_urls: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)
    upstream_request_id: str | None = None


REDACTED = "<redacted>"


def redact(text: str, secret: str | None) -> str:
    """`text` without `secret`: an upstream that echoes what it was sent must not carry our key
    into job errors or logs."""
    return text.replace(secret, REDACTED) if secret else text


def retry_after_seconds(response: UpstreamResponse) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def error_for(response: UpstreamResponse, provider: str, message: str) -> ProviderError:
    """The domain error for an upstream error status; the message never contains our key."""
    status = response.status
    text = f"{provider} answered {status}: {message}"[:500]
    if status == 401 or status == 403:
        return ProviderMisconfigured(f"{provider} refused our API key")
    if status == 402:
        return ProviderOutOfFunds(text)
    if status == 422:
        return ContentRejected(text)
    if status == 429:
        return ProviderRateLimited(text, retry_after=retry_after_seconds(response))
    if status >= 500:
        return ProviderUnavailable(text)
    return ProviderBadRequest(text)
