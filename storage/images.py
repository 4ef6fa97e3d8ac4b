"""What an uploaded file really is: the type from its first bytes, the size and soundness from Pillow."""

from __future__ import annotations

import asyncio
import contextlib
import io
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO

from PIL import Image, UnidentifiedImageError

from daygen.errors import InvalidInput, UnsupportedMediaType
from storage.objects import INLINE_BYTES, ObjectStore, ObjectWriter

SNIFF_BYTES = 16


class InvalidImage(InvalidInput):
    code = "invalid_image"


def sniff(head: bytes) -> str | None:
    """The image type the bytes start with (PNG, JPEG, WebP), whatever a header claims."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def inspect_stored(store: ObjectStore, key: str, max_pixels: int) -> tuple[int, int]:
    """Width and height of a stored image, refusing pixel bombs and broken files (blocking)."""
    with store.open_sync(key) as handle:
        return inspect_image(handle, max_pixels)


def inspect_image(handle: IO[bytes], max_pixels: int) -> tuple[int, int]:
    """Width and height of the image `handle` reads, refusing pixel bombs and broken files (blocking)."""
    with warnings.catch_warnings():
        # Our own limit below governs; as an error, Pillow's warning (at ~89.5M pixels) would
        # refuse images under the default max_pixels of 100M. Its hard error stays a backstop.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(handle) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise InvalidImage(
                        f"the image has {width}x{height} pixels; at most {max_pixels} are accepted",
                        details={"width": width, "height": height, "maxPixels": max_pixels},
                    )
                image.verify()
        except Image.DecompressionBombError:
            raise InvalidImage(f"the image has too many pixels; at most {max_pixels} are accepted") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InvalidImage("the file is not a readable image", details={"reason": str(exc)[:200]}) from None
    return width, height


@dataclass(frozen=True)
class ReceivedImage:
    """A verified image in a temporary object, ready for `writer.commit()`."""

    writer: ObjectWriter
    content_type: str
    width: int
    height: int


async def _peek(chunks: AsyncIterator[bytes], size: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first `size` bytes (fewer if the stream is shorter), and an iterator over the rest."""
    head = b""
    async for chunk in chunks:
        head += chunk
        if len(head) >= size:
            break
    return head, chunks


@contextlib.asynccontextmanager
async def received_image(
    store: ObjectStore, chunks: AsyncIterator[bytes], *, max_bytes: int, max_pixels: int
) -> AsyncIterator[ReceivedImage]:
    """Stream bytes into the store, then check they are the image their first bytes say.

    Uploads and provider outputs both come this way; whatever is not committed inside the
    block is removed when it ends."""
    head, rest = await _peek(chunks, SNIFF_BYTES)
    if not head:
        raise InvalidInput("the upload is empty", details=[{"field": "file", "message": "no bytes"}])
    content_type = sniff(head)
    if content_type is None:
        raise UnsupportedMediaType("only PNG, JPEG and WebP images are accepted")
    async with store.writer(content_type, max_bytes) as writer:
        await writer.write(head)
        async for chunk in rest:
            await writer.write(chunk)
        await writer.close()
        whole = writer.buffered
        if whole is not None and len(whole) <= INLINE_BYTES:  # checked in less time than a thread hop costs
            width, height = inspect_image(io.BytesIO(whole), max_pixels)
        elif whole is not None:  # in memory, stored in one go by commit
            width, height = await asyncio.to_thread(inspect_image, io.BytesIO(whole), max_pixels)
        else:
            width, height = await asyncio.to_thread(inspect_stored, store, writer.tmp_key, max_pixels)
        yield ReceivedImage(writer, content_type, width, height)
