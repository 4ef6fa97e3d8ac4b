from PIL import Image

from pipelines.offline import LABEL, encode_png, palette_from_prompt, render_generate


def test_same_prompt_and_seed_give_the_same_bytes():
    first = encode_png(render_generate("a quiet harbour at dawn", 320, 200, 11))
    second = encode_png(render_generate("a quiet harbour at dawn", 320, 200, 11))
    assert first == second


def test_another_seed_or_prompt_gives_another_picture():
    base = render_generate("a quiet harbour", 128, 128, 1)
    assert base.tobytes() != render_generate("a quiet harbour", 128, 128, 2).tobytes()
    assert base.tobytes() != render_generate("a loud harbour", 128, 128, 1).tobytes()


def test_picture_has_the_requested_size_and_is_a_png():
    image = render_generate("size check", 300, 150, 5)
    assert image.size == (300, 150)
    assert encode_png(image).startswith(b"\x89PNG\r\n\x1a\n")


def test_colour_words_in_the_prompt_steer_the_palette():
    assert palette_from_prompt("a Red fox in white snow.") == [(255, 0, 0), (255, 255, 255)]
    assert palette_from_prompt("no colours here") == []


def test_a_red_prompt_makes_a_reddish_picture():
    image = render_generate("red red", 256, 256, 3)
    red, _, blue = (sum(band.getdata()) for band in image.split())
    assert red > blue


def test_the_engine_labels_itself_honestly():
    assert "offline" in LABEL
    assert isinstance(render_generate("x", 64, 64, 0), Image.Image)
