"""What an uploaded file really is: sniffing the first bytes, and Pillow's look at a stored file.

Real images come from Pillow; the pixel bombs are written by hand (a PNG header declaring a
huge size over a tiny body), and Pillow is watched so that it never prepares a pixel buffer.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from daygen.errors import InvalidInput
from storage.images import SNIFF_BYTES, InvalidImage, inspect_stored, received_image, sniff
from storage.objects import ObjectStore

MAX_PIXELS = 100_000_000  # the settings' default


def pillow_image(fmt: str, size: tuple[int, int] = (37, 23)) -> bytes:
    width, height = size
    image = Image.frombytes("RGB", size, bytes((x * 7 + y * 13) % 256 for y in range(height) for x in range(width * 3)))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(width: int, height: int) -> bytes:
    """A well-formed PNG that declares width x height 8-bit grey pixels but carries one row's worth."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # depth 8, greyscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + png_chunk(b"IEND", b"")
    )


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return ObjectStore(f"file://{tmp_path / 'objects'}")


def stored(store: ObjectStore, data: bytes, key: str = "tmp/upload") -> str:
    store.fs.pipe_file(f"{store.root}/{key}", data)
    return key


@pytest.fixture
def pixels_never_decoded(monkeypatch):
    """Fail the test if Pillow starts to decode, i.e. to allocate the image's pixels."""

    def refuse(self):
        raise AssertionError(f"Pillow was about to allocate {self.size[0]}x{self.size[1]} pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", refuse)


# --- sniffing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_sniff_recognises_images_made_by_pillow(fmt, content_type):
    assert sniff(pillow_image(fmt)[:SNIFF_BYTES]) == content_type


NOT_IMAGES = {
    "a GIF": pillow_image("GIF"),
    "text": b"just some text, no image here",
    "an HTML page claiming to be PNG": b"<!doctype html><title>image.png</title>",
    "a RIFF file that is not WebP": b"RIFF\x24\x00\x00\x00WAVEfmt ",
    "too few bytes to tell WebP": b"RIFF\x24\x00\x00",
    "nothing": b"",
}


@pytest.mark.parametrize("head", list(NOT_IMAGES.values()), ids=list(NOT_IMAGES))
def test_sniff_refuses_what_is_not_png_jpeg_or_webp(head):
    assert sniff(head[:SNIFF_BYTES]) is None


# --- inspecting stored images -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_inspect_stored_gives_the_size_of_a_real_image(store, fmt):
    key = stored(store, pillow_image(fmt, (37, 23)))

    assert inspect_stored(store, key, MAX_PIXELS) == (37, 23)


def test_a_truncated_png_is_an_invalid_image(store):
    whole = pillow_image("PNG", (200, 100))
    key = stored(store, whole[: len(whole) // 2])

    with pytest.raises(InvalidImage) as refused:
        inspect_stored(store, key, MAX_PIXELS)

    assert refused.value.code == "invalid_image"
    assert isinstance(refused.value, InvalidInput)


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n" + b"not chunks at all" * 10, b"plain text", b""],
    ids=["only the signature", "a signature over rubbish", "text", "an empty file"],
)
def test_what_pillow_cannot_read_is_an_invalid_image(store, data):
    key = stored(store, data)

    with pytest.raises(InvalidImage) as refused:
        inspect_stored(store, key, MAX_PIXELS)

    assert refused.value.code == "invalid_image"


def test_a_pixel_bomb_is_refused_without_allocating_its_pixels(store, pixels_never_decoded):
    bomb = handmade_png(100_000, 100_000)  # 10 GB of grey pixels in a few dozen bytes
    assert len(bomb) < 100
    key = stored(store, bomb)

    with pytest.raises(InvalidImage) as refused:
        inspect_stored(store, key, MAX_PIXELS)

    assert refused.value.code == "invalid_image"
    assert str(MAX_PIXELS) in refused.value.message


def test_an_image_over_our_limit_but_small_for_pillow_is_refused_with_its_size(store, pixels_never_decoded):
    key = stored(store, handmade_png(2000, 1000))

    with pytest.raises(InvalidImage) as refused:
        inspect_stored(store, key, max_pixels=1_000_000)

    assert refused.value.details == {"width": 2000, "height": 1000, "maxPixels": 1_000_000}


def test_an_image_just_under_the_limit_passes_without_decoding(store, pixels_never_decoded):
    key = stored(store, handmade_png(10_001, 9_999))  # 99,999,999 pixels; Pillow warns above ~89.5M

    assert inspect_stored(store, key, MAX_PIXELS) == (10_001, 9_999)


def test_an_image_of_exactly_the_limit_passes(store, pixels_never_decoded):
    key = stored(store, handmade_png(10_000, 10_000))

    assert inspect_stored(store, key, MAX_PIXELS) == (10_000, 10_000)


def test_one_pixel_over_the_limit_is_refused(store, pixels_never_decoded):
    key = stored(store, handmade_png(5_882_353, 17))  # 100,000,001 pixels

    with pytest.raises(InvalidImage):
        inspect_stored(store, key, MAX_PIXELS)


# --- receiving a stream -------------------------------------------------------------------


async def chunks_of(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def noisy_png(size: tuple[int, int]) -> bytes:
    """A PNG that does not compress: 750 KB for 500x500 (kept in memory, but too large to check on the event
    loop), over a megabyte for 800x800 (written out as it arrives)."""
    noise = random.Random(5).randbytes(size[0] * size[1] * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, noise).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "size",
    [(37, 23), (500, 500), (800, 800)],
    ids=["small: checked at once", "under a megabyte: checked in memory in a thread", "large: streamed"],
)
async def test_a_received_image_is_checked_then_stored_once_under_its_sha256(store, size):
    data = pillow_image("PNG", size) if size[0] < 100 else noisy_png(size)
    async with received_image(store, chunks_of(data), max_bytes=len(data), max_pixels=MAX_PIXELS) as received:
        assert (received.width, received.height, received.content_type) == (*size, "image/png")
        key = received.writer.key  # uploads lock it before they commit (against a delete of the same bytes)
        committed = await received.writer.commit()

    assert key == committed.key
    assert store.fs.cat_file(f"{store.root}/{committed.key}") == data
    assert committed.sha256 == hashlib.sha256(data).hexdigest() and committed.size == len(data)
    assert store.fs.glob(f"{store.root}/tmp/*") == []


@pytest.mark.parametrize("size", [(200, 100), (500, 500), (800, 800)], ids=["small", "under a megabyte", "large"])
async def test_a_received_truncated_image_is_refused_and_nothing_is_kept(store, size):
    whole = pillow_image("PNG", size) if size[0] < 500 else noisy_png(size)
    data = whole[: len(whole) // 2]

    with pytest.raises(InvalidImage):
        async with received_image(store, chunks_of(data), max_bytes=len(whole), max_pixels=MAX_PIXELS) as received:
            await received.writer.commit()

    assert store.fs.find(store.root) == []
