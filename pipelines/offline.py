"""The offline engine: real pictures drawn locally with Pillow, no API key, no network.

It is not an AI model and says so on every image: it paints a deterministic composition
derived from the prompt and seed, so the same request always gives the same bytes. The
image operations (edit, reframe, replace background, remix, upscale, describe) work on the
real pixels with plain image processing, and `describe` only reports what it measures.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
from collections import Counter

from PIL import Image, ImageChops, ImageColor, ImageDraw, ImageFilter, ImageFont, ImageOps, ImageStat

LABEL = "daygen offline engine"
UPSCALE_FACTORS = (2, 4)

_WHITE = (255, 255, 255)


def _rng(prompt: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def palette_from_prompt(prompt: str) -> list[tuple[int, int, int]]:
    """Colour words in the prompt ("a red fox in snow") steer the palette."""
    words = [w.strip(".,;:!?\"'()").lower() for w in prompt.split()]
    return [ImageColor.getrgb(w) for w in words if w in ImageColor.colormap][:2]


def _paint(prompt: str, width: int, height: int, seed: int) -> Image.Image:
    """The generated composition without its caption, so other operations can use it as material."""
    rng = _rng(prompt, seed)
    ends = palette_from_prompt(prompt) + [_colour(rng), _colour(rng)]
    gradient = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270)))
    gradient = gradient.resize((width, height), Image.Resampling.BILINEAR)
    image = ImageOps.colorize(gradient, ends[0], ends[1]).convert("RGB")
    draw = ImageDraw.Draw(image, "RGBA")
    for _ in range(8 + len(prompt.split()) % 8):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        size = rng.randrange(max(8, min(width, height) // 10), max(16, min(width, height) // 2))
        box = (x0 - size // 2, y0 - size // 2, x0 + size // 2, y0 + size // 2)
        fill = (*_colour(rng), rng.randrange(60, 180))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    return image


def render_generate(prompt: str, width: int, height: int, seed: int) -> Image.Image:
    image = _paint(prompt, width, height, seed)
    draw = ImageDraw.Draw(image, "RGBA")
    font = ImageFont.load_default()
    caption = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    draw.rectangle((0, height - 28, width, height), fill=(0, 0, 0, 150))
    draw.text((6, height - 24), caption, fill=(255, 255, 255, 255), font=font)
    draw.text((6, height - 12), f"{LABEL} · seed {seed}", fill=(200, 200, 200, 255), font=font)
    return image


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa") or (image.mode == "P" and "transparency" in image.info)


def _rgb(image: Image.Image) -> Image.Image:
    """Transparent inputs are flattened onto white, the way a viewer shows them on a page."""
    if image.mode == "RGB":
        return image
    if not _has_alpha(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, _WHITE)
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"the target size must be at least 1x1, got {width}x{height}")


def _blur_cheaply(image: Image.Image, radius: float) -> Image.Image:
    """Large blurs are done at a quarter size: the result is smooth anyway and four times cheaper."""
    factor = 4 if min(image.size) >= 64 and radius >= 8 else 1
    if factor == 1:
        return image.filter(ImageFilter.GaussianBlur(radius))
    small = image.reduce(factor).filter(ImageFilter.GaussianBlur(radius / factor))
    return small.resize(image.size, Image.Resampling.BICUBIC)


def render_edit(image: Image.Image, mask: Image.Image, prompt: str, seed: int) -> Image.Image:
    """Repaint the black area of the mask (Ideogram's convention) with the prompt's picture.

    The rest of the image is left byte-for-byte alone; inside the area the new content fades
    in over a few pixels so the seam is not a hard cut.
    """
    if mask.size != image.size:
        raise ValueError(
            f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
            "they must be the same size"
        )
    source = _rgb(image)
    area = mask.convert("L").point(lambda v: 255 if v < 128 else 0)
    if area.getbbox() is None:
        return source.copy()
    feather = max(1, min(source.size) // 128)
    alpha = ImageChops.darker(area, area.filter(ImageFilter.GaussianBlur(feather)))
    fresh = _paint(prompt, source.width, source.height, seed)
    return Image.composite(fresh, source, alpha)


def _mirror_tiled(fitted: Image.Image, width: int, height: int, left: int, top: int) -> Image.Image:
    """The fitted picture repeated as its own mirror image in every direction, so edges continue."""
    fw, fh = fitted.size
    period = Image.new("RGB", (2 * fw, 2 * fh))
    mirrored = ImageOps.mirror(fitted)
    period.paste(fitted, (0, 0))
    period.paste(mirrored, (fw, 0))
    period.paste(ImageOps.flip(fitted), (0, fh))
    period.paste(ImageOps.flip(mirrored), (fw, fh))
    canvas = Image.new("RGB", (width, height))
    x0 = left - math.ceil(left / (2 * fw)) * 2 * fw
    y0 = top - math.ceil(top / (2 * fh)) * 2 * fh
    for y in range(y0, height, 2 * fh):
        for x in range(x0, width, 2 * fw):
            canvas.paste(period, (x, y))
    return canvas


def _grain(width: int, height: int, seed: int) -> Image.Image:
    """Soft seeded mottling, so the outpainted area is not a smear and differs per seed."""
    rng = random.Random(seed)
    cells = (max(2, width // 16), max(2, height // 16))
    noise = Image.frombytes("L", cells, rng.randbytes(cells[0] * cells[1])).filter(ImageFilter.GaussianBlur(2))
    return ImageOps.autocontrast(noise).resize((width, height), Image.Resampling.BICUBIC).convert("RGB")


def render_reframe(image: Image.Image, width: int, height: int, seed: int) -> Image.Image:
    """Fit the picture, centred and uncropped, into the new size and outpaint the margins.

    The margins continue the picture's own edges (mirrored, then blurred more the further they
    are from it), which reads as out-of-focus surroundings rather than bars.
    """
    _check_size(width, height)
    source = _rgb(image)
    scale = min(width / source.width, height / source.height)
    fw, fh = max(1, round(source.width * scale)), max(1, round(source.height * scale))
    fitted = source.resize((fw, fh), Image.Resampling.LANCZOS) if (fw, fh) != source.size else source.copy()
    if (fw, fh) == (width, height):
        return fitted
    left, top = (width - fw) // 2, (height - fh) // 2
    canvas = _mirror_tiled(fitted, width, height, left, top)
    reach = max(width, height) / 24
    near = _blur_cheaply(canvas, max(2.0, reach / 6))
    far = _blur_cheaply(canvas, reach)
    outside = Image.new("L", (width, height), 255)
    outside.paste(0, (left, top, left + fw, top + fh))
    ramp = _blur_cheaply(outside, reach).point(lambda v: max(0, 2 * v - 255))
    canvas = Image.composite(far, near, ramp)
    canvas = Image.blend(canvas, _grain(width, height, seed), 0.06)
    canvas.paste(fitted, (left, top))
    return canvas


def _mean_colour(pixels: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    count = len(pixels)
    return (sum(p[0] for p in pixels) // count, sum(p[1] for p in pixels) // count, sum(p[2] for p in pixels) // count)


def _border_colours(image: Image.Image) -> tuple[list[tuple[int, int, int]], int]:
    """The colours that fill the image's outer ring, and how far from them still counts as background."""
    thumb = image.resize((64, 64), Image.Resampling.BOX)
    ring = [thumb.getpixel((i, j)) for i in range(64) for j in range(64) if min(i, j, 63 - i, 63 - j) < 2]
    bins: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
    for pixel in ring:
        bins.setdefault((pixel[0] >> 5, pixel[1] >> 5, pixel[2] >> 5), []).append(pixel)
    ranked = sorted(bins.values(), key=len, reverse=True)
    chosen = [members for members in ranked[:3] if len(members) >= 0.15 * len(ring)] or ranked[:1]
    colours = [_mean_colour(members) for members in chosen]
    distances = sorted(min(max(abs(a - b) for a, b in zip(p, c, strict=True)) for c in colours) for p in ring)
    spread = distances[int(0.9 * (len(distances) - 1))]
    return colours, min(120, max(40, 2 * spread + 16))


def _reachable_from_border(walls: bytes, width: int, height: int) -> bytearray:
    seen = bytearray(width * height)
    stack = [
        y * width + x
        for y in range(height)
        for x in range(width)
        if (x in (0, width - 1) or y in (0, height - 1)) and not walls[y * width + x]
    ]
    for index in stack:
        seen[index] = 255
    while stack:
        index = stack.pop()
        x, y = index % width, index // width
        for nx, ny in ((x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)):
            if 0 <= nx < width and 0 <= ny < height:
                neighbour = ny * width + nx
                if not seen[neighbour] and not walls[neighbour]:
                    seen[neighbour] = 255
                    stack.append(neighbour)
    return seen


def _distance_from(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """Per pixel, the largest channel difference from the colour, so a change in any one channel counts."""
    r, g, b = ImageChops.difference(image, Image.new("RGB", image.size, colour)).split()
    return ImageChops.lighter(ImageChops.lighter(r, g), b)


def _subject_mask(image: Image.Image) -> Image.Image:
    """White where the subject is: pixels unlike the border colours, plus background-coloured holes inside it.

    Only background-coloured regions connected to the border count as background, so a white
    eye on a white-backed subject is kept. Connectivity is worked out on a coarse grid.
    """
    colours, threshold = _border_colours(image)
    distances = [_distance_from(image, colour) for colour in colours]
    distance = distances[0]
    for other in distances[1:]:
        distance = ImageChops.darker(distance, other)
    subject = distance.point(lambda v: 255 if v > threshold else 0)
    subject = subject.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
    side = min(256, max(image.size))
    grid = max(1, image.width * side // max(image.size)), max(1, image.height * side // max(image.size))
    walls = subject.resize(grid, Image.Resampling.BOX).point(lambda v: 255 if v else 0)
    reached = Image.frombytes("L", grid, bytes(_reachable_from_border(walls.tobytes(), *grid)))
    reached = reached.filter(ImageFilter.MaxFilter(3)).resize(image.size, Image.Resampling.NEAREST)
    background = ImageChops.darker(ImageOps.invert(subject), reached)
    return ImageOps.invert(background).filter(ImageFilter.GaussianBlur(1))


def render_replace_background(image: Image.Image, prompt: str, seed: int) -> Image.Image:
    """Keep the subject and paint the prompt's picture behind it.

    An input with transparent areas already says where the subject is, so its alpha is the cut-out.
    Otherwise the background is taken to be the colours dominating the image's border; this
    works for subjects on plain or simple backdrops and not for busy photographs.
    """
    rgba = image.convert("RGBA") if _has_alpha(image) else None
    if rgba is not None and rgba.getchannel("A").getextrema()[0] < 128:
        source, subject = rgba.convert("RGB"), rgba.getchannel("A")
    else:
        source = _rgb(image)
        subject = _subject_mask(source)
    backdrop = _blur_cheaply(_paint(prompt, source.width, source.height, seed), max(2.0, max(source.size) / 200))
    return Image.composite(source, backdrop, subject)


def render_remix(image: Image.Image, prompt: str, seed: int, image_weight: int) -> Image.Image:
    """Blend the input with the prompt's picture; image_weight (1..100) is the share of the input kept."""
    if isinstance(image_weight, bool) or not isinstance(image_weight, int) or not 1 <= image_weight <= 100:
        raise ValueError(f"image_weight must be a whole number from 1 to 100, got {image_weight!r}")
    source = _rgb(image)
    fresh = _paint(prompt, source.width, source.height, seed)
    return Image.blend(fresh, source, image_weight / 100)


def render_upscale(image: Image.Image, factor: int) -> Image.Image:
    """Lanczos enlargement by 2 or 4; transparency is kept, because a cut-out should stay one."""
    if isinstance(factor, bool) or factor not in UPSCALE_FACTORS:
        raise ValueError(f"the upscale factor must be 2 or 4, got {factor!r}")
    source = image.convert("RGBA") if _has_alpha(image) else _rgb(image)
    return source.resize((source.width * factor, source.height * factor), Image.Resampling.LANCZOS)


def colour_name(rgb: tuple[int, int, int]) -> str:
    """The everyday name, from a palette of twelve, that fits an RGB colour best."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(channel / 255 for channel in rgb))
    degrees = hue * 360
    if value < 0.18:
        return "black"
    if saturation < 0.18:
        return "white" if value > 0.85 else "grey"
    if degrees < 15 or degrees >= 345:
        if value > 0.8 and saturation < 0.5:
            return "pink"
        return "brown" if value < 0.45 and saturation < 0.7 else "red"
    if degrees < 45:
        return "brown" if value < 0.65 else "orange"
    if degrees < 70:
        return "brown" if value < 0.55 else "yellow"
    if degrees < 165:
        return "green"
    if degrees < 195:
        return "teal"
    if degrees < 255:
        return "blue"
    if degrees < 290:
        return "purple"
    return "pink" if value > 0.7 else "purple"


def _aspect(width: int, height: int) -> str:
    divisor = math.gcd(width, height)
    if width // divisor <= 32 and height // divisor <= 32:
        return f"{width // divisor}:{height // divisor}"
    if width >= height:
        return f"about {width / height:.2f}:1"
    return f"about 1:{height / width:.2f}"


def describe(image: Image.Image) -> str:
    """What the offline engine can honestly say about a picture: its size, colours and light.

    It measures pixels; it does not recognise objects, people or text, and says so.
    """
    width, height = image.size
    orientation = "square" if width == height else "landscape" if width > height else "portrait"
    sentences = [f"A {width}x{height} {orientation} image (aspect ratio {_aspect(width, height)})."]
    rgba = image.convert("RGBA")
    visible = rgba.getchannel("A").point(lambda v: 255 if v >= 128 else 0)
    transparent_share = 100 - round(100 * ImageStat.Stat(visible).mean[0] / 255)
    if visible.getbbox() is None:
        sentences.append("It is fully transparent, so there are no colours to describe.")
    else:
        if _has_alpha(image) and transparent_share:
            sentences.append(
                f"About {transparent_share}% of it is transparent; colours and brightness describe the visible part."
            )
        thumb = rgba.resize((64, 64), Image.Resampling.BOX)
        names = Counter(colour_name(p[:3]) for p in thumb.getdata() if p[3] >= 128)
        total = sum(names.values())
        shares = [(name, round(100 * count / total)) for name, count in names.most_common(4)]
        main = [(name, share) for name, share in shares if share >= 8] or shares[:1]
        listed = ", ".join(f"{name} (about {share}%)" for name, share in main)
        luminance = ImageStat.Stat(rgba.convert("L"), mask=visible)
        mean, spread = luminance.mean[0], luminance.stddev[0]
        brightness = "dark" if mean < 70 else "bright" if mean > 180 else "of medium brightness"
        if spread < 2 and len(main) == 1:
            sentences.append(f"It is one flat colour, {main[0][0]}, and {brightness} overall.")
        else:
            contrast = "low" if spread < 20 else "high" if spread > 60 else "moderate"
            sentences.append(f"Main colours: {listed}.")
            sentences.append(f"Overall it is {brightness}, with {contrast} contrast.")
    sentences.append(
        f"Described by the {LABEL}, which measures size, colour and brightness "
        "and does not recognise objects, people or text."
    )
    return " ".join(sentences)


def encode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
