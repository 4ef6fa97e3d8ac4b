"""Outgoing webhooks: Standard Webhooks signing, the SSRF guard, one delivery, and the retry schedule.

Plain functions with explicit parameters; the caller owns the database, the settings and the
queue. A delivery never raises for the receiver's faults: it returns a `DeliveryResult` that
says whether to retry, give up (410) or wait (Retry-After).

DNS pinning: `deliver` re-runs `check_target` right before each attempt and connects to the
address it checked, never to a fresh lookup, so a name cannot rebind to an internal address
between the check and the connect. The original name still travels as the Host header and, for
https, as the TLS SNI name the certificate is verified against (httpcore's `sni_hostname`).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import ipaddress
import json
import math
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from daygen.errors import Forbidden, InvalidInput

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
SIGNATURE_VERSION = "v1"
MAX_URL_LENGTH = 2048
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
JITTER = 0.2
EXCERPT_CHARS = 500
USER_AGENT = "daygen-webhooks/1"

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# ---------------------------------------------------------------------------------------------
# Signing (https://www.standardwebhooks.com)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the secret's decoded bytes."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def _secret_list(secret: str | Sequence[str]) -> list[str]:
    listed = [secret] if isinstance(secret, str) else list(secret)
    if not listed:
        raise ValueError("at least one webhook secret is needed")
    return listed


def headers(secret: str | Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The signed request headers; several secrets (a rotation) give space-separated signatures."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in _secret_list(secret)),
        "content-type": "application/json",
    }


def verify(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = 300,
    now: Callable[[], float] = time.time,
) -> None:
    """Raise `Forbidden` unless one of the signatures is valid under one of the secrets, in time."""
    lowered = {key.lower(): value for key, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    given = lowered.get("webhook-signature")
    if not msg_id or not stamp or not given:
        raise Forbidden("the webhook-id, webhook-timestamp and webhook-signature headers are required")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise Forbidden("webhook-timestamp is not a whole number of seconds") from None
    # Both directions: an old message is a replay, a future one a way to outlive the window.
    if abs(now() - timestamp) > tolerance:
        raise Forbidden("webhook-timestamp is outside the tolerance window")
    expected = [sign(s, msg_id, timestamp, body).encode() for s in _secret_list(secret)]
    offered = [candidate.encode() for candidate in given.split() if candidate.startswith(f"{SIGNATURE_VERSION},")]
    # Compare every pair without stopping early, so timing says nothing about which one matched.
    matched = False
    for candidate in offered:
        for signature in expected:
            matched |= hmac.compare_digest(candidate, signature)
    if not matched:
        raise Forbidden("no webhook signature matches")


# ---------------------------------------------------------------------------------------------
# SSRF guard

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata"})


@dataclass(frozen=True)
class ResolvedTarget:
    """A checked webhook URL and the address a delivery must connect to."""

    url: str
    scheme: str
    host: str  # as written in the URL: lowercase, IDNA-encoded, an IPv6 literal without brackets
    port: int
    address: str  # the checked address to connect to (the first one resolved)
    addresses: tuple[str, ...]  # every address the host resolved to; all of them passed the check

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


async def resolve_host(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, in its preference order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _refusal(ip: IPAddress) -> str | None:
    """Why a webhook may not reach this address, or None when it is an ordinary public one."""
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        # A mapped or NAT64 (DNS64) address is its IPv4 address in other clothes.
        if ip.ipv4_mapped is not None:
            return _refusal(ip.ipv4_mapped)
        if ip in _NAT64:
            return _refusal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        # 6to4 and Teredo reach IPv4 addresses through relays: the outer and inner must both pass.
        for inner in (ip.sixtofour, *(ip.teredo or ())):
            if inner is not None and (reason := _refusal(inner)):
                return reason
        if ip in _NAT64_LOCAL:
            return "a private address"
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip in _CGNAT, "a carrier-grade NAT address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    )
    return next((reason for refused, reason in checks if refused), None)


async def check_target(
    url: str,
    allowed_hosts: frozenset[str],
    *,
    field: str = "webhookUrl",
    resolve: Resolver = resolve_host,
) -> ResolvedTarget:
    """Refuse URLs a webhook must not call (internal, metadata, odd schemes); else where to connect.

    A host in `allowed_hosts` (the name or IP literal exactly as written in the URL) skips the
    address checks; it is still resolved so the delivery can be pinned.
    """

    def refuse(problem: str) -> InvalidInput:
        return InvalidInput(f"{field} {problem}", details=[{"field": field, "message": problem}])

    if len(url) > MAX_URL_LENGTH:
        raise refuse(f"must be at most {MAX_URL_LENGTH} characters")
    # httpx's own parser, so the check sees exactly the host the delivery will connect to.
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise refuse("is not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise refuse("must be an http or https URL")
    if parsed.userinfo:
        raise refuse("must not contain a user name or password")
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise refuse("must name a host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 0 < port < 65536:
        raise refuse("has an invalid port")
    allowed = host in allowed_hosts or f"[{host}]" in allowed_hosts
    if not allowed and host.rstrip(".") in _METADATA_NAMES:
        raise refuse("must not point at a cloud metadata service")

    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = list(await resolve(host, port))
        except OSError:
            raise refuse("has a host name that could not be resolved") from None
        if not addresses:
            raise refuse("has a host name that could not be resolved")

    if not allowed:
        # Every address, not just the first: a client may fall back to any of them.
        for address in addresses:
            reason = _refusal(ipaddress.ip_address(address))
            if reason is not None:
                raise refuse(f"must point at a public address; {host} is {reason}")
    return ResolvedTarget(url, parsed.scheme, host, port, addresses[0], tuple(addresses))


# ---------------------------------------------------------------------------------------------
# Delivery


@dataclass(frozen=True)
class DeliveryResult:
    status: int | None  # None when no HTTP answer came back
    ok: bool
    gone: bool  # 410: the receiver asks us to stop sending
    retry_after: float | None  # seconds, from the Retry-After header
    error: str | None
    response_excerpt: str
    duration_ms: int


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date), never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _network_error(exc: BaseException, timeout_seconds: float) -> str:
    # Only the exception's kind and the socket's own words: never the URL, which may carry a token.
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"timed out after {timeout_seconds:g}s"
    if isinstance(exc, httpx.ConnectError):
        return f"could not connect: {str(exc)[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


async def deliver(
    http: httpx.AsyncClient,
    url: str,
    secret: str | Sequence[str],
    msg_id: str,
    payload: dict[str, Any],
    *,
    allowed_hosts: frozenset[str],
    timeout_seconds: float = 5.0,
    max_response_bytes: int = 64 * 1024,
    now: Callable[[], float] = time.time,
    resolve: Resolver = resolve_host,
) -> DeliveryResult:
    """POST one signed event to `url`; the answer, or why there was none, comes back as a result.

    The whole attempt (check, connect, send, headers) is bounded by `timeout_seconds`; each
    attempt uses its own connection (`Connection: close`), so a TLS session opened for one host
    name is never reused for another name that resolves to the same address.
    """
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    timestamp = int(now())
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout_seconds

    def result(status: int | None = None, error: str | None = None, **fields: Any) -> DeliveryResult:
        ok = status is not None and 200 <= status < 300
        return DeliveryResult(
            status=status,
            ok=ok,
            gone=status == 410,
            retry_after=fields.get("retry_after"),
            error=error,
            response_excerpt=fields.get("excerpt", ""),
            duration_ms=round((loop.time() - started) * 1000),
        )

    try:
        async with asyncio.timeout_at(deadline):
            target = await check_target(url, allowed_hosts, resolve=resolve)
            request = http.build_request(
                "POST",
                httpx.URL(url).copy_with(host=target.address),
                content=body,
                headers={
                    **headers(secret, msg_id, timestamp, body),
                    "host": target.host_header,
                    "user-agent": USER_AGENT,
                    "accept-encoding": "identity",  # the capped read below is of raw bytes
                    "connection": "close",
                },
                timeout=httpx.Timeout(timeout_seconds),
                extensions={"sni_hostname": target.host} if target.scheme == "https" else None,
            )
            response = await http.send(request, stream=True, follow_redirects=False)
    except InvalidInput as exc:
        return result(error=f"refused: {exc.message}")
    except (TimeoutError, httpx.HTTPError, OSError) as exc:
        return result(error=_network_error(exc, timeout_seconds))

    received = bytearray()
    try:
        # The status is already the answer: a body that trickles or breaks only shortens the excerpt.
        async with asyncio.timeout_at(deadline):
            async for chunk in response.aiter_raw():
                received += chunk[: max_response_bytes - len(received)]
                if len(received) >= max_response_bytes:
                    break
    except (TimeoutError, httpx.HTTPError, OSError):
        pass
    finally:
        await response.aclose()

    status = response.status_code
    if 200 <= status < 300:
        error = None
    elif 300 <= status < 400:
        error = f"HTTP {status}: redirects are not followed"
    else:
        error = f"HTTP {status}"
    return result(
        status,
        error,
        retry_after=parse_retry_after(response.headers.get("retry-after"), now()),
        excerpt=received.decode("utf-8", errors="replace")[:EXCERPT_CHARS],
    )


# ---------------------------------------------------------------------------------------------
# Retry schedule


def parse_schedule(text: str) -> tuple[float, ...]:
    """ "5,30,120" -> (5.0, 30.0, 120.0); every delay a positive, finite number of seconds."""
    parts = [part.strip() for part in text.split(",")]
    delays = []
    for part in parts:
        try:
            delay = float(part)
        except ValueError:
            raise ValueError(f"retry schedule: {part!r} is not a number of seconds") from None
        if not math.isfinite(delay) or delay <= 0:
            raise ValueError(f"retry schedule: {part!r} is not a positive number of seconds")
        delays.append(delay)
    return tuple(delays)


def next_attempt_delay(
    attempt: int,
    schedule: Sequence[float],
    retry_after: float | None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (1-based), or None to give up.

    The schedule's delay with ±20% jitter, so receivers that failed together are not retried
    together; never sooner than the receiver's Retry-After, which is capped at a day.
    """
    if attempt < 1:
        raise ValueError("attempts are counted from 1")
    if attempt > len(schedule):
        return None
    rng = rng or random.Random()
    delay = schedule[attempt - 1] * rng.uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


# ---------------------------------------------------------------------------------------------
# Event body


def event_payload(event_type: str, timestamp: datetime | float, job: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of one job event; `timestamp` is an aware datetime or epoch seconds."""
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            raise ValueError("event timestamps must be timezone-aware")
        when = timestamp.astimezone(UTC)
    else:
        when = datetime.fromtimestamp(timestamp, UTC)
    return {
        "type": event_type,
        "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": {
            "jobId": job["jobId"],
            "status": job["status"],
            "progress": job.get("progress"),
            "resultUrl": job.get("resultUrl"),
            "assets": list(job.get("assets") or []),
        },
    }
