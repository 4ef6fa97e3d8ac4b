"""The operations a job can run: which provider does it, what it costs, which params it takes,
and which params name input assets (resolved to stored objects at submit time)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

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


# -- Ideogram (v3) and Qwen: the upstream's own enums and ranges ------------------------------

RenderingSpeed = Literal["TURBO", "DEFAULT", "QUALITY"]
MagicPrompt = Literal["AUTO", "ON", "OFF"]
StyleType = Literal["AUTO", "GENERAL", "REALISTIC", "DESIGN", "FICTION"]
IDEOGRAM_ASPECT_RATIOS = (
    "1x3", "3x1", "1x2", "2x1", "9x16", "16x9", "10x16", "16x10",
    "2x3", "3x2", "3x4", "4x3", "4x5", "5x4", "1x1",
)  # fmt: skip
# Ideogram 3.0's `ResolutionV3` enum, which generate, reframe and remix share: the API reference's
# "Generate with Ideogram 3.0" (developer.ideogram.ai/api-reference/api-reference/generate-v3),
# components.schemas.ResolutionV3. Any other WxH is refused upstream.
IDEOGRAM_RESOLUTIONS = (
    "512x1536", "576x1408", "576x1472", "576x1536", "640x1344", "640x1408", "640x1472", "640x1536",
    "704x1152", "704x1216", "704x1280", "704x1344", "704x1408", "704x1472", "736x1312", "768x1088",
    "768x1216", "768x1280", "768x1344", "800x1280", "832x960", "832x1024", "832x1088", "832x1152",
    "832x1216", "832x1248", "864x1152", "896x960", "896x1024", "896x1088", "896x1120", "896x1152",
    "960x832", "960x896", "960x1024", "960x1088", "1024x832", "1024x896", "1024x960", "1024x1024",
    "1088x768", "1088x832", "1088x896", "1088x960", "1120x896", "1152x704", "1152x832", "1152x864",
    "1152x896", "1216x704", "1216x768", "1216x832", "1248x832", "1280x704", "1280x768", "1280x800",
    "1312x736", "1344x640", "1344x704", "1344x768", "1408x576", "1408x640", "1408x704", "1472x576",
    "1472x640", "1472x704", "1536x512", "1536x576", "1536x640",
)  # fmt: skip
QWEN_SIZES = ("1328*1328", "1664*928", "1472*1140", "1140*1472", "928*1664")
NumImages = Annotated[int, Field(ge=1, le=8)]
StylePreset = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9_]{1,64}$")]
NegativePrompt = Annotated[str, StringConstraints(max_length=4000)]


def _resolution(value: str) -> str:
    value = value.strip().lower()
    if value not in IDEOGRAM_RESOLUTIONS:
        raise ValueError("must be one of Ideogram 3.0's resolutions, such as 1024x1024, 1312x736 or 736x1312")
    return value


Resolution = Annotated[str, AfterValidator(_resolution)]
References = Annotated[list[uuid.UUID], Field(max_length=3)]


def _aspect_ratio(value: str | None) -> str | None:
    """The frontend sends `16:9`; Ideogram wants `16x9`."""
    if value is None:
        return None
    value = value.strip().replace(":", "x")
    if value not in IDEOGRAM_ASPECT_RATIOS:
        raise ValueError("must be one of " + ", ".join(IDEOGRAM_ASPECT_RATIOS))
    return value


AspectRatio = Annotated[str | None, AfterValidator(_aspect_ratio)]


class IdeogramCommon(Params):
    rendering_speed: RenderingSpeed = "DEFAULT"
    seed: Seed = None
    num_images: NumImages = 1
    style_preset: StylePreset | None = None


class IdeogramGenerateParams(IdeogramCommon):
    prompt: Prompt
    aspect_ratio: AspectRatio = None
    resolution: Resolution | None = None
    magic_prompt: MagicPrompt | None = None
    style_type: StyleType | None = None
    negative_prompt: NegativePrompt | None = None
    style_reference_images: References = []
    character_reference_images: Annotated[list[uuid.UUID], Field(max_length=1)] = []

    @model_validator(mode="after")
    def _one_shape(self) -> IdeogramGenerateParams:
        if self.aspect_ratio is not None and self.resolution is not None:
            raise ValueError("give aspect_ratio or resolution, not both")
        return self


class IdeogramEditParams(IdeogramCommon):
    image: uuid.UUID
    mask: uuid.UUID = Field(description="same size as the image; black marks the area to edit")
    prompt: Prompt
    magic_prompt: MagicPrompt | None = None
    style_type: StyleType | None = None


class IdeogramReframeParams(IdeogramCommon):
    image: uuid.UUID
    resolution: Resolution


class IdeogramReplaceBackgroundParams(IdeogramCommon):
    image: uuid.UUID
    prompt: Prompt
    magic_prompt: MagicPrompt | None = None


class IdeogramRemixParams(IdeogramCommon):
    image: uuid.UUID
    prompt: Prompt
    image_weight: int = Field(50, ge=1, le=100)
    aspect_ratio: AspectRatio = None
    style_type: StyleType | None = None
    magic_prompt: MagicPrompt | None = None
    character_reference_images: Annotated[list[uuid.UUID], Field(max_length=1)] = []


class IdeogramUpscaleParams(Params):
    image: uuid.UUID
    resemblance: int = Field(60, ge=1, le=100)
    detail: int = Field(90, ge=1, le=100)
    prompt: Annotated[str, StringConstraints(max_length=4000)] | None = None


class IdeogramDescribeParams(Params):
    image: uuid.UUID
    describe_model_version: Literal["V_2", "V_3"] = "V_3"


class QwenGenerateParams(Params):
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=800)]
    size: Literal["1328*1328", "1664*928", "1472*1140", "1140*1472", "928*1664"] = "1328*1328"
    seed: Seed = None
    negative_prompt: Annotated[str, StringConstraints(max_length=500)] | None = None
    prompt_extend: bool = True
    watermark: bool = False


class QwenEditParams(Params):
    image: uuid.UUID
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=800)]
    negative_prompt: Annotated[str, StringConstraints(max_length=500)] | None = None
    seed: Seed = None
    watermark: bool = False


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
    name: str  # "<provider>.<what it does>": the ledger reads a stored step's provider off its name
    params_model: type[Params]
    asset_params: tuple[str, ...] = ()
    check: Check | None = None

    @property
    def provider(self) -> str:
        return self.name.split(".", 1)[0]

    def units(self, params: dict[str, Any]) -> int:
        """What a request is priced by: the images it asks for (one upscale, one description)."""
        return params.get("num_images", 1)

    def images_in_flight(self, params: dict[str, Any]) -> int:
        """What one request holds of an upstream's in-flight limit: the images it makes."""
        return 0 if self.name.endswith(".describe") else params.get("num_images", 1)

    def asset_refs(self, params: dict[str, Any]) -> dict[str, str]:
        """The asset ids the params name; list params become `name.0`, `name.1`, ..."""
        refs: dict[str, str] = {}
        for name in self.asset_params:
            value = params.get(name)
            if isinstance(value, list):
                refs.update({f"{name}.{i}": item for i, item in enumerate(value)})
            elif value is not None:
                refs[name] = value
        return refs


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("offline.generate", OfflineGenerateParams),
        Operation("offline.edit", OfflineEditParams, ("image", "mask"), _mask_matches_image),
        Operation("offline.reframe", OfflineReframeParams, ("image",)),
        Operation("offline.replace_background", OfflineReplaceBackgroundParams, ("image",)),
        Operation("offline.remix", OfflineRemixParams, ("image",)),
        Operation("offline.upscale", OfflineUpscaleParams, ("image",), _upscaled_size_allowed),
        Operation("offline.describe", OfflineDescribeParams, ("image",)),
        Operation(
            "ideogram.generate",
            IdeogramGenerateParams,
            ("style_reference_images", "character_reference_images"),
        ),
        Operation("ideogram.edit", IdeogramEditParams, ("image", "mask"), _mask_matches_image),
        Operation("ideogram.reframe", IdeogramReframeParams, ("image",)),
        Operation("ideogram.replace_background", IdeogramReplaceBackgroundParams, ("image",)),
        Operation("ideogram.remix", IdeogramRemixParams, ("image", "character_reference_images")),
        Operation("ideogram.upscale", IdeogramUpscaleParams, ("image",)),
        Operation("ideogram.describe", IdeogramDescribeParams, ("image",)),
        Operation("qwen.generate", QwenGenerateParams),
        Operation("qwen.edit", QwenEditParams, ("image",)),
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
