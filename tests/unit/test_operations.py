from decimal import Decimal

import pytest

from daygen.errors import InvalidInput
from pipelines.operations import MAX_SEED, check_inputs, validate_request


def fields_of(exc: pytest.ExceptionInfo) -> list[str]:
    return [d["field"] for d in exc.value.details]


def test_offline_generate_fills_defaults_and_draws_a_seed():
    op, params = validate_request("offline.generate", {"prompt": "a lighthouse"})
    assert (op.provider, op.cost) == ("offline", Decimal(1))
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


def test_every_offline_operation_is_offered_with_its_price():
    from pipelines.operations import OPERATIONS

    prices = {name: op.cost for name, op in OPERATIONS.items() if op.provider == "offline"}
    assert prices == {
        "offline.generate": Decimal(1),
        "offline.edit": Decimal(1),
        "offline.reframe": Decimal(1),
        "offline.replace_background": Decimal(1),
        "offline.remix": Decimal(1),
        "offline.upscale": Decimal(2),
        "offline.describe": Decimal("0.5"),
    }


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
