"""Provider outputs: upstream image URLs expire, so each is streamed into the store at once."""

from __future__ import annotations

from typing import Any

import aiohttp

from daygen.errors import DaygenError, ProviderUnavailable
from pipelines.providers import DEFAULT_TIMEOUT
from storage.images import received_image
from storage.objects import ObjectStore


async def copy_image(
    http: aiohttp.ClientSession,
    url: str,
    store: ObjectStore,
    *,
    max_bytes: int,
    max_pixels: int,
    http_timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Stream one upstream image into the store; returns the fields of its asset row."""
    try:
        async with http.get(url, timeout=http_timeout, allow_redirects=True) as response:
            if response.status != 200:
                raise ProviderUnavailable(f"the provider's output could not be fetched (HTTP {response.status})")
            async with received_image(
                store, response.content.iter_any(), max_bytes=max_bytes, max_pixels=max_pixels
            ) as received:
                stored = await received.writer.commit()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise ProviderUnavailable(f"the provider's output could not be fetched: {type(exc).__name__}") from None
    except ProviderUnavailable:
        raise
    except DaygenError as exc:
        raise ProviderUnavailable(f"the provider's output is not a usable image: {exc.message}") from None
    return {
        "key": stored.key,
        "sha256": stored.sha256,
        "size": stored.size,
        "content_type": stored.content_type,
        "width": received.width,
        "height": received.height,
    }
