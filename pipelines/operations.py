"""The operations a job can run: which provider does it, what it costs, which params it takes,
and which params name input assets (resolved to stored objects at submit time)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from daygen.errors import InvalidInput

MAX_SEED = 2**31 - 1
MAX_OUTPUT_PIXELS = 4096 * 4096

Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED)]
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=4000)]
Side = Annotated[int, Field(ge=64, le=2048)]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OfflineGenerateParams(Params):
    prompt: Prompt
    width: Side = 1024
    height: Side = 1024
    seed: Seed = None


class OfflineEditParams(Params):
    image: uuid.UUID
    mask: uuid.UUID = Field(description="same size as the image; black marks the area to edit")
    prompt: Prompt
    seed: Seed = None


class OfflineReframeParams(Params):
    image: uuid.UUID
    width: Side
    height: Side
    seed: Seed = None


class OfflineReplaceBackgroundParams(Params):
    image: uuid.UUID
    prompt: Prompt
    seed: Seed = None


class OfflineRemixParams(Params):
    image: uuid.UUID
    prompt: Prompt
    image_weight: int = Field(50, ge=1, le=100, description="how much of the input image stays")
    seed: Seed = None


class OfflineUpscaleParams(Params):
    image: uuid.UUID
    factor: Literal[2, 4] = 2


class OfflineDescribeParams(Params):
    image: uuid.UUID


Inputs = dict[str, dict[str, Any]]
Check = Callable[[dict[str, Any], Inputs], None]


def _mask_matches_image(params: dict[str, Any], inputs: Inputs) -> None:
    image, mask = inputs["image"], inputs["mask"]
    if (image["width"], image["height"]) != (mask["width"], mask["height"]):
        raise InvalidInput(
            f"the mask is {mask['width']}x{mask['height']} but the image is {image['width']}x{image['height']}",
            details=[{"field": "params.mask", "message": "must be the same size as the image"}],
        )


def _upscaled_size_allowed(params: dict[str, Any], inputs: Inputs) -> None:
    image = inputs["image"]
    pixels = image["width"] * image["height"] * params["factor"] ** 2
    if pixels > MAX_OUTPUT_PIXELS:
        raise InvalidInput(
            f"a {params['factor']}x upscale of {image['width']}x{image['height']} is over {MAX_OUTPUT_PIXELS} pixels",
            details=[{"field": "params.factor", "message": "the result would be too large"}],
        )


@dataclass(frozen=True)
class Operation:
    name: str
    provider: str
    params_model: type[Params]
    cost: Decimal
    asset_params: tuple[str, ...] = ()
    check: Check | None = None


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("offline.generate", "offline", OfflineGenerateParams, Decimal(1)),
        Operation("offline.edit", "offline", OfflineEditParams, Decimal(1), ("image", "mask"), _mask_matches_image),
        Operation("offline.reframe", "offline", OfflineReframeParams, Decimal(1), ("image",)),
        Operation("offline.replace_background", "offline", OfflineReplaceBackgroundParams, Decimal(1), ("image",)),
        Operation("offline.remix", "offline", OfflineRemixParams, Decimal(1), ("image",)),
        Operation("offline.upscale", "offline", OfflineUpscaleParams, Decimal(2), ("image",), _upscaled_size_allowed),
        Operation("offline.describe", "offline", OfflineDescribeParams, Decimal("0.5"), ("image",)),
    )
}


def validate_request(operation: str, params: dict[str, Any]) -> tuple[Operation, dict[str, Any]]:
    """Check the params against the operation's model; a missing seed is drawn now so a job can be re-run."""
    op = OPERATIONS.get(operation)
    if op is None:
        raise InvalidInput(
            f"unknown operation {operation!r}",
            details=[{"field": "operation", "message": "must be one of: " + ", ".join(sorted(OPERATIONS))}],
        )
    try:
        model = op.params_model.model_validate(params)
    except ValidationError as exc:
        raise InvalidInput(
            "invalid params",
            details=[{"field": ".".join(["params", *map(str, e["loc"])]), "message": e["msg"]} for e in exc.errors()],
        ) from None
    values = model.model_dump(mode="json")
    if "seed" in values and values["seed"] is None:
        values["seed"] = secrets.randbelow(MAX_SEED + 1)
    return op, values


def check_inputs(op: Operation, params: dict[str, Any], inputs: Inputs) -> None:
    """Checks that need the input images' sizes, done before anything is charged."""
    if op.check is not None:
        op.check(params, inputs)
