"""The offline engine: real pictures drawn locally with Pillow, no API key, no network.

It is not an AI model and says so on every image: it paints a deterministic composition
derived from the prompt and seed, so the same request always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import random

from PIL import Image, ImageColor, ImageDraw, ImageFont, ImageOps

LABEL = "daygen offline engine"


def _rng(prompt: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def palette_from_prompt(prompt: str) -> list[tuple[int, int, int]]:
    """Colour words in the prompt ("a red fox in snow") steer the palette."""
    words = [w.strip(".,;:!?\"'()").lower() for w in prompt.split()]
    return [ImageColor.getrgb(w) for w in words if w in ImageColor.colormap][:2]


def render_generate(prompt: str, width: int, height: int, seed: int) -> Image.Image:
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
    font = ImageFont.load_default()
    caption = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    draw.rectangle((0, height - 28, width, height), fill=(0, 0, 0, 150))
    draw.text((6, height - 24), caption, fill=(255, 255, 255, 255), font=font)
    draw.text((6, height - 12), f"{LABEL} · seed {seed}", fill=(200, 200, 200, 255), font=font)
    return image


def encode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
