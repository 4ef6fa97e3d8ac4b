from decimal import Decimal

import pytest

from daygen.errors import InvalidInput
from pipelines.operations import MAX_SEED, validate_request


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
