"""What an uploaded file really is: the type from its first bytes, the size and soundness from Pillow."""

from __future__ import annotations

import warnings

from PIL import Image, UnidentifiedImageError

from daygen.errors import InvalidInput
from storage.objects import ObjectStore

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
    with store.open_sync(key) as handle, warnings.catch_warnings():
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
