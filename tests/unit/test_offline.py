import pytest
from PIL import Image, ImageChops, ImageStat

from pipelines.offline import (
    LABEL,
    colour_name,
    describe,
    encode_png,
    palette_from_prompt,
    render_edit,
    render_generate,
    render_reframe,
    render_remix,
    render_replace_background,
    render_upscale,
)

_WHITE = (255, 255, 255)


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


def _red_square_on_white(size: int = 200) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste((220, 20, 20), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return image


def _left_half_black_mask(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 255)
    mask.paste(0, (0, 0, size[0] // 2, size[1]))
    return mask


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    return sum(ImageStat.Stat(diff).mean) / 3


def _share_of_pure_black(image: Image.Image) -> float:
    histogram = image.convert("L").histogram()
    return histogram[0] / sum(histogram)


def _photo() -> Image.Image:
    return render_generate("a quiet harbour at dawn", 160, 120, 4)


def test_every_operation_gives_the_same_bytes_for_the_same_request():
    photo = _photo()
    mask = _left_half_black_mask(photo.size)
    runs = [
        lambda: render_edit(photo, mask, "a boat", 7),
        lambda: render_reframe(photo, 300, 120, 7),
        lambda: render_replace_background(_red_square_on_white(), "a green meadow", 7),
        lambda: render_remix(photo, "stormy sea", 7, 40),
        lambda: render_upscale(photo, 2),
    ]
    for run in runs:
        assert encode_png(run()) == encode_png(run())
    assert describe(photo) == describe(photo)


def test_edit_repaints_only_the_black_area_of_the_mask():
    photo = _photo()
    edited = render_edit(photo, _left_half_black_mask(photo.size), "a red lighthouse", 9)
    assert edited.size == photo.size and edited.mode == "RGB"
    right = (photo.width // 2, 0, photo.width, photo.height)
    assert edited.crop(right).tobytes() == photo.crop(right).tobytes()
    inside = (10, 10, photo.width // 2 - 10, photo.height - 10)
    assert _mean_difference(edited.crop(inside), photo.crop(inside)) > 10


def test_edit_with_an_all_white_mask_changes_nothing():
    photo = _photo()
    untouched = render_edit(photo, Image.new("L", photo.size, 255), "anything", 1)
    assert untouched.tobytes() == photo.tobytes()


def test_edit_refuses_a_mask_of_another_size():
    photo = _photo()
    with pytest.raises(ValueError, match="same size"):
        render_edit(photo, Image.new("L", (10, 10), 0), "a boat", 1)


def test_edit_accepts_a_transparent_picture_and_an_rgb_mask():
    picture = Image.new("RGBA", (64, 64), (0, 0, 255, 0))
    mask = Image.new("RGB", (64, 64), (255, 255, 255))
    mask.paste((0, 0, 0), (0, 0, 32, 64))
    edited = render_edit(picture, mask, "green", 2)
    assert edited.mode == "RGB"
    assert edited.getpixel((60, 30)) == (255, 255, 255)


def test_reframe_fills_the_new_size_around_the_untouched_original():
    photo = _photo()
    wide = render_reframe(photo, 400, 120, 3)
    assert wide.size == (400, 120)
    assert wide.crop((120, 0, 280, 120)).tobytes() == photo.tobytes()
    for margin in (wide.crop((0, 0, 120, 120)), wide.crop((280, 0, 400, 120))):
        assert _share_of_pure_black(margin) == 0
        assert _mean_difference(margin, Image.new("RGB", margin.size)) > 20


def test_reframe_to_a_tall_size_scales_the_original_to_fit():
    photo = _photo()
    tall = render_reframe(photo, 100, 300, 3)
    assert tall.size == (100, 300)
    assert tall.crop((0, 112, 100, 187)).tobytes() == photo.resize((100, 75), Image.Resampling.LANCZOS).tobytes()
    for margin in (tall.crop((0, 0, 100, 112)), tall.crop((0, 187, 100, 300))):
        assert _share_of_pure_black(margin) == 0


def test_reframe_seed_changes_only_the_outpainted_margins():
    photo = _photo()
    first, second = render_reframe(photo, 300, 120, 1), render_reframe(photo, 300, 120, 2)
    assert first.tobytes() != second.tobytes()
    assert first.crop((70, 0, 230, 120)).tobytes() == second.crop((70, 0, 230, 120)).tobytes()


def test_reframe_refuses_an_empty_size():
    with pytest.raises(ValueError, match="at least 1x1"):
        render_reframe(_photo(), 0, 100, 1)


def test_replace_background_keeps_the_subject_and_swaps_the_white_backdrop():
    picture = _red_square_on_white()
    result = render_replace_background(picture, "a green meadow", 5)
    assert result.size == picture.size and result.mode == "RGB"
    for point in ((100, 100), (60, 60), (139, 139)):
        assert result.getpixel(point) == (220, 20, 20)
    changed = [p for p in ((2, 2), (197, 2), (2, 197), (197, 197), (100, 5), (5, 100)) if result.getpixel(p) != _WHITE]
    assert len(changed) >= 5


def test_replace_background_keeps_background_coloured_holes_inside_the_subject():
    picture = _red_square_on_white()
    picture.paste((255, 255, 255), (90, 90, 110, 110))
    result = render_replace_background(picture, "a blue sky", 5)
    assert result.getpixel((100, 100)) == _WHITE


def test_replace_background_uses_transparency_as_the_cut_out():
    picture = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    picture.paste((10, 200, 10, 255), (30, 30, 70, 70))
    result = render_replace_background(picture, "orange sunset", 2)
    assert result.mode == "RGB"
    assert result.getpixel((50, 50)) == (10, 200, 10)
    assert result.getpixel((5, 5)) != (0, 0, 0)


def test_remix_weight_100_keeps_the_input_and_weight_1_is_mostly_the_prompt():
    photo = _photo()
    generated = render_remix(photo, "purple storm over a city", 8, 1)
    picture = render_generate("purple storm over a city", photo.width, photo.height, 8)
    above_caption = (0, 0, photo.width, photo.height - 28)
    assert _mean_difference(render_remix(photo, "purple storm over a city", 8, 100), photo) < 1
    assert _mean_difference(generated.crop(above_caption), picture.crop(above_caption)) < 3
    assert _mean_difference(generated, photo) > 20
    half = render_remix(photo, "purple storm over a city", 8, 50)
    assert 0 < _mean_difference(half, photo) < _mean_difference(generated, photo)


@pytest.mark.parametrize("weight", [0, 101, 2.5, True])
def test_remix_refuses_a_weight_outside_1_to_100(weight):
    with pytest.raises(ValueError, match="image_weight"):
        render_remix(_photo(), "x", 1, weight)


@pytest.mark.parametrize("factor", [2, 4])
def test_upscale_multiplies_the_size_exactly(factor):
    photo = _photo()
    bigger = render_upscale(photo, factor)
    assert bigger.size == (photo.width * factor, photo.height * factor)
    assert _mean_difference(bigger.resize(photo.size, Image.Resampling.LANCZOS), photo) < 4


@pytest.mark.parametrize("factor", [3, 1, 8, True])
def test_upscale_refuses_other_factors(factor):
    with pytest.raises(ValueError, match="2 or 4"):
        render_upscale(_photo(), factor)


def test_replace_background_treats_an_opaque_alpha_channel_like_no_alpha():
    picture = _red_square_on_white().convert("RGBA")
    result = render_replace_background(picture, "a green meadow", 5)
    assert result.getpixel((100, 100)) == (220, 20, 20)
    assert result.getpixel((2, 2)) != _WHITE


def test_upscale_keeps_transparency():
    cut_out = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    assert render_upscale(cut_out, 2).mode == "RGBA"
    assert render_upscale(Image.new("L", (20, 10), 128), 4).mode == "RGB"


def test_describe_reports_size_orientation_colour_and_brightness_honestly():
    text = describe(Image.new("RGB", (640, 480), (230, 20, 20)))
    assert "640x480" in text and "landscape" in text and "4:3" in text
    assert "red" in text
    assert "offline engine" in text and "does not recognise objects" in text


def test_describe_calls_a_black_picture_dark_and_a_white_one_bright():
    assert "dark" in describe(Image.new("RGB", (100, 300), (0, 0, 0)))
    assert "portrait" in describe(Image.new("RGB", (100, 300), (0, 0, 0)))
    assert "about 1:45.00" in describe(Image.new("RGB", (2, 90), (0, 0, 0)))
    white = describe(Image.new("RGB", (256, 256), (255, 255, 255)))
    assert "bright" in white and "white" in white and "square" in white


def test_describe_names_the_main_colours_of_a_mixed_picture():
    text = describe(_red_square_on_white())
    assert "white (about 75%)" in text and "red (about 25%)" in text


def test_describe_says_how_much_of_a_picture_is_transparent():
    picture = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    picture.paste((0, 0, 255, 255), (0, 0, 100, 50))
    text = describe(picture)
    assert "50% of it is transparent" in text and "blue" in text


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((255, 0, 0), "red"),
        ((255, 165, 0), "orange"),
        ((255, 215, 0), "yellow"),
        ((34, 139, 34), "green"),
        ((0, 128, 128), "teal"),
        ((30, 60, 220), "blue"),
        ((128, 0, 128), "purple"),
        ((255, 192, 203), "pink"),
        ((139, 69, 19), "brown"),
        ((5, 5, 5), "black"),
        ((128, 128, 128), "grey"),
        ((250, 250, 250), "white"),
    ],
)
def test_colours_get_their_everyday_names(rgb, name):
    assert colour_name(rgb) == name
