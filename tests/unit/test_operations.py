import pytest

from daygen.errors import InvalidInput
from pipelines.operations import MAX_SEED, check_inputs, validate_request


def fields_of(exc: pytest.ExceptionInfo) -> list[str]:
    return [d["field"] for d in exc.value.details]


def test_offline_generate_fills_defaults_and_draws_a_seed():
    op, params = validate_request("offline.generate", {"prompt": "a lighthouse"})
    assert (op.provider, op.units(params)) == ("offline", 1)
    assert (params["width"], params["height"]) == (1024, 1024)
    assert 0 <= params["seed"] <= MAX_SEED


def test_a_given_seed_is_kept():
    assert validate_request("offline.generate", {"prompt": "x", "seed": 7})[1]["seed"] == 7


def test_unknown_operation_names_the_operation_field_and_lists_known_ones():
    with pytest.raises(InvalidInput) as exc:
        validate_request("offline.paint", {})
    assert fields_of(exc) == ["operation"]
    assert "offline.generate" in exc.value.details[0]["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "params.prompt"),
        ({"prompt": "x", "width": 63}, "params.width"),
        ({"prompt": "x", "height": 4096}, "params.height"),
        ({"prompt": "x", "seed": -1}, "params.seed"),
        ({"prompt": "x", "colour": "red"}, "params.colour"),
        ({"prompt": "x" * 4001}, "params.prompt"),
    ],
)
def test_bad_params_name_the_field(params, field):
    with pytest.raises(InvalidInput) as exc:
        validate_request("offline.generate", params)
    assert field in fields_of(exc)


def test_input_images_are_named_by_asset_id():
    with pytest.raises(InvalidInput) as exc:
        validate_request("offline.describe", {"image": "not-an-id"})
    assert fields_of(exc) == ["params.image"]
    _, params = validate_request("offline.describe", {"image": "01a210f9-5de1-77e2-af3f-e2170dde6049"})
    assert params == {"image": "01a210f9-5de1-77e2-af3f-e2170dde6049"}


def image_ref(width: int, height: int) -> dict:
    return {"assetId": "x", "key": "assets/ab/ab.png", "contentType": "image/png", "width": width, "height": height}


def test_the_mask_must_match_the_image_size():
    op, params = validate_request(
        "offline.edit",
        {
            "image": "01a210f9-5de1-77e2-af3f-e2170dde6049",
            "mask": "01a210f9-5de1-77e2-af3f-e2170dde604a",
            "prompt": "x",
        },
    )
    check_inputs(op, params, {"image": image_ref(100, 50), "mask": image_ref(100, 50)})
    with pytest.raises(InvalidInput) as exc:
        check_inputs(op, params, {"image": image_ref(100, 50), "mask": image_ref(50, 100)})
    assert fields_of(exc) == ["params.mask"]


def test_an_upscale_may_not_pass_the_output_pixel_limit():
    op, params = validate_request("offline.upscale", {"image": "01a210f9-5de1-77e2-af3f-e2170dde6049", "factor": 4})
    check_inputs(op, params, {"image": image_ref(1024, 1024)})
    with pytest.raises(InvalidInput):
        check_inputs(op, params, {"image": image_ref(1025, 1024)})


# -- Ideogram and Qwen params: the upstreams' own enums and ranges ------------------------------

IMAGE_ID = "01a210f9-5de1-77e2-af3f-e2170dde6049"
OTHER_IDS = [f"01a210f9-5de1-77e2-af3f-e2170dde60{i:02x}" for i in range(0x4A, 0x50)]


def accepted(operation: str, params: dict, field: str):
    """The value the operation keeps for `field` once the params are validated."""
    return validate_request(operation, params)[1][field]


def refused(operation: str, params: dict) -> list[str]:
    with pytest.raises(InvalidInput) as exc:
        validate_request(operation, params)
    return fields_of(exc)


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        ("style_type", ["AUTO", "GENERAL", "REALISTIC", "DESIGN", "FICTION"], ["ANIME", "general", ""]),
        ("magic_prompt", ["AUTO", "ON", "OFF"], ["YES", "on", True]),
        ("rendering_speed", ["TURBO", "DEFAULT", "QUALITY"], ["FAST", "turbo"]),
        ("num_images", [1, 4, 8], [0, 9, -1]),
    ],
)
def test_ideogram_generate_takes_only_the_documented_values(field, good, bad):
    for value in good:
        assert accepted("ideogram.generate", {"prompt": "x", field: value}, field) == value
    for value in bad:
        assert refused("ideogram.generate", {"prompt": "x", field: value}) == [f"params.{field}"]


def test_the_frontends_colon_aspect_ratio_becomes_ideograms_x():
    assert accepted("ideogram.generate", {"prompt": "x", "aspect_ratio": "16:9"}, "aspect_ratio") == "16x9"
    assert accepted("ideogram.remix", {"image": IMAGE_ID, "prompt": "x", "aspect_ratio": " 4:5 "}, "aspect_ratio") == (
        "4x5"
    )
    assert refused("ideogram.generate", {"prompt": "x", "aspect_ratio": "7:5"}) == ["params.aspect_ratio"]


def test_aspect_ratio_and_resolution_are_exclusive():
    with pytest.raises(InvalidInput) as exc:
        validate_request("ideogram.generate", {"prompt": "x", "aspect_ratio": "1:1", "resolution": "1024x1024"})
    assert "not both" in exc.value.details[0]["message"]
    assert accepted("ideogram.generate", {"prompt": "x", "resolution": "1024x1024"}, "aspect_ratio") is None


@pytest.mark.parametrize("resolution", ["5000x5000", "1024x576", "1025x1024", "1024*1024", "big"])
def test_a_resolution_ideogram_does_not_offer_is_refused_naming_the_field(resolution):
    assert refused("ideogram.generate", {"prompt": "x", "resolution": resolution}) == ["params.resolution"]
    assert refused("ideogram.reframe", {"image": IMAGE_ID, "resolution": resolution}) == ["params.resolution"]


@pytest.mark.parametrize("resolution", ["1024x1024", "1312x736", "736x1312", "512x1536", "1536x640"])
def test_each_documented_resolution_is_taken(resolution):
    assert accepted("ideogram.generate", {"prompt": "x", "resolution": resolution}, "resolution") == resolution
    assert accepted("ideogram.reframe", {"image": IMAGE_ID, "resolution": resolution}, "resolution") == resolution


def test_a_reframe_needs_a_resolution():
    assert refused("ideogram.reframe", {"image": IMAGE_ID}) == ["params.resolution"]


def test_reference_images_are_limited_to_what_ideogram_takes():
    params = {"prompt": "x", "style_reference_images": OTHER_IDS[:3], "character_reference_images": OTHER_IDS[3:4]}
    assert accepted("ideogram.generate", params, "style_reference_images") == OTHER_IDS[:3]
    assert refused("ideogram.generate", {"prompt": "x", "style_reference_images": OTHER_IDS[:4]}) == [
        "params.style_reference_images"
    ]
    # Ideogram "currently only supports 1 character reference image".
    assert refused("ideogram.generate", {"prompt": "x", "character_reference_images": OTHER_IDS[:2]}) == [
        "params.character_reference_images"
    ]
    remix = {"image": IMAGE_ID, "prompt": "x", "character_reference_images": OTHER_IDS[:2]}
    assert refused("ideogram.remix", remix) == ["params.character_reference_images"]


def test_remix_image_weight_is_1_to_100():
    assert accepted("ideogram.remix", {"image": IMAGE_ID, "prompt": "x"}, "image_weight") == 50
    for weight in (0, 101):
        assert refused("ideogram.remix", {"image": IMAGE_ID, "prompt": "x", "image_weight": weight}) == [
            "params.image_weight"
        ]


@pytest.mark.parametrize("size", ["1328*1328", "1664*928", "1472*1140", "1140*1472", "928*1664"])
def test_qwen_generate_takes_each_documented_size(size):
    assert accepted("qwen.generate", {"prompt": "x", "size": size}, "size") == size


@pytest.mark.parametrize("size", ["1024*1024", "1328x1328", "1664*928 "])
def test_qwen_generate_refuses_any_other_size(size):
    assert refused("qwen.generate", {"prompt": "x", "size": size}) == ["params.size"]


def test_qwen_prompts_are_limited_as_dashscope_limits_them():
    assert refused("qwen.generate", {"prompt": "x" * 801}) == ["params.prompt"]
    assert refused("qwen.edit", {"image": IMAGE_ID, "prompt": ""}) == ["params.prompt"]
    assert refused("qwen.generate", {"prompt": "x", "negative_prompt": "n" * 501}) == ["params.negative_prompt"]
    assert refused("qwen.edit", {"image": IMAGE_ID, "prompt": "x", "size": "1328*1328"}) == ["params.size"]
