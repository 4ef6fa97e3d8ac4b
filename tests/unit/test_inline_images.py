"""The suite's guard against image bytes in JSON answers must itself catch them."""

import base64
import io

from PIL import Image

from tests.inline_images import inline_image_in


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), "blue").save(out, "PNG")
    return out.getvalue()


def test_a_data_url_anywhere_is_found():
    body = {"items": [{"url": "https://cdn.example.com/a.png"}, {"thumb": "data:image/png;base64,AAAA"}]}
    assert inline_image_in(body) == "$.items[1].thumb"


def test_base64_image_bytes_are_found_even_without_a_data_prefix():
    assert inline_image_in({"image": base64.b64encode(png_bytes()).decode()}) == "$.image"
    assert inline_image_in({"image": base64.urlsafe_b64encode(png_bytes()).decode()}) == "$.image"


def test_ordinary_answers_pass():
    body = {
        "accessToken": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "sha256": "9ff616cae1d48c451f102669f0882484fb3e7e47ddb9a81271bf9972831a65c4",
        "url": "http://127.0.0.1/files/assets/9f/9ff6.png",
        "prompt": "a red fox in white snow",
        "count": 3,
    }
    assert inline_image_in(body) is None
