"""A response hook for every test client: no JSON answer may carry a data URL or base64 image bytes."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import httpx

IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"RIFF", b"GIF8")
BASE64 = re.compile(r"^[A-Za-z0-9+/_-]{24,}={0,2}$")


def inline_image_in(value: Any, path: str = "$") -> str | None:
    """Where in a JSON value a data URL or base64-encoded image sits, or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            if found := inline_image_in(item, f"{path}.{key}"):
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if found := inline_image_in(item, f"{path}[{index}]"):
                return found
    elif isinstance(value, str):
        if value.lstrip().lower().startswith("data:"):
            return path
        compact = "".join(value.split())
        if BASE64.match(compact):
            padded = compact + "=" * (-len(compact) % 4)
            try:
                head = base64.b64decode(padded[:64].replace("-", "+").replace("_", "/"))
            except (binascii.Error, ValueError):
                return None
            if head.startswith(IMAGE_MAGIC):
                return path
    return None


async def refuse_inline_images(response: httpx.Response) -> None:
    if "json" not in response.headers.get("content-type", ""):
        return
    await response.aread()
    found = inline_image_in(response.json())
    assert found is None, f"{response.request.method} {response.request.url.path} answered image bytes at {found}"
