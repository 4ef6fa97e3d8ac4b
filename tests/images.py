"""Image bytes for tests: real encodings from Pillow, hand-made PNGs for the edge cases, and a PNG fetched by URL."""

from __future__ import annotations

import io
import struct
import zlib

import aiohttp
from PIL import Image


def encoded(fmt: str = "PNG", size: tuple[int, int] = (40, 30), colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, fmt)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height greyscale pixels: a decompression bomb's calling card."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


async def png_size(http: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    async with http.get(url) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "image/png"
        content = await response.read()
    with Image.open(io.BytesIO(content)) as image:
        assert image.format == "PNG"
        return image.size
