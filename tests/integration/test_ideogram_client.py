"""IdeogramClient against FakeIdeogram on loopback: what goes over the wire, and what comes back."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daygen.errors import (
    ContentRejected,
    ProviderBadRequest,
    ProviderError,
    ProviderMisconfigured,
    ProviderOutOfFunds,
    ProviderRateLimited,
    ProviderUnavailable,
)
from daygen.settings import Settings
from pipelines.ideogram import IdeogramClient
from pipelines.pool_config import ProviderPools
from pipelines.providers import ImageFile, ProviderResult, provider_session, provider_timeout
from pipelines.steps import StepContext, run_step
from tests.fakes.ideogram import FakeIdeogram, ReceivedRequest
from tests.fakes.server import FakeServer
from tests.images import encoded, png_size

KEY = "sk-ideogram-7c1f0e9a-SECRET-do-not-leak"

PHOTO = ImageFile("photo.png", encoded("PNG", (40, 30), "teal"), "image/png")
MASK = ImageFile("mask.png", encoded("PNG", (40, 30), "black"), "image/png")
STYLE_WEBP = ImageFile("style-1.webp", encoded("WEBP", (20, 20), "orange"), "image/webp")
STYLE_PNG = ImageFile("style-2.png", encoded("PNG", (24, 16), "purple"), "image/png")
HERO_JPEG = ImageFile("hero.jpg", encoded("JPEG", (32, 48), "navy"), "image/jpeg")

Call = Callable[[IdeogramClient], Awaitable[ProviderResult]]

# One minimal valid call per operation, for the properties every operation shares.
OPERATIONS: dict[str, Call] = {
    "generate": lambda c: c.generate({"prompt": "a kite"}),
    "edit": lambda c: c.edit({"prompt": "a kite"}, image=PHOTO, mask=MASK),
    "reframe": lambda c: c.reframe({"resolution": "256x128"}, image=PHOTO),
    "replace-background": lambda c: c.replace_background({"prompt": "a beach"}, image=PHOTO),
    "remix": lambda c: c.remix({"prompt": "a kite"}, image=PHOTO),
    "upscale": lambda c: c.upscale({"resemblance": 60, "detail": 90}, image=PHOTO),
    "describe": lambda c: c.describe({"describe_model_version": "V_3"}, image=PHOTO),
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeIdeogram]:
    with FakeIdeogram(api_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_fake(fake: FakeIdeogram) -> None:
    fake.reset()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with provider_session(16) as client:
        yield client


@pytest.fixture
def ideogram(http: aiohttp.ClientSession, fake: FakeIdeogram) -> IdeogramClient:
    return IdeogramClient(http, base_url=fake.base_url, api_key=KEY)


def only_request(fake: FakeIdeogram, endpoint: str) -> ReceivedRequest:
    assert [r.endpoint for r in fake.received] == [endpoint]
    record = fake.received[0]
    assert record.headers["api-key"] == KEY
    assert record.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert record.status == 200
    return record


def sent_files(record: ReceivedRequest) -> list[tuple[str, str | None, str | None, bytes]]:
    return [(f.field, f.filename, f.content_type, f.data) for f in record.files]


def as_part(field: str, image: ImageFile) -> tuple[str, str, str, bytes]:
    return (field, image.filename, image.content_type, image.data)


def assert_key_hidden(exc: BaseException) -> None:
    for shown in (str(exc), repr(exc), str(exc.__cause__), repr(exc.__cause__)):
        assert KEY not in shown
    if isinstance(exc, ProviderError):
        assert KEY not in exc.message
        assert KEY not in repr(exc.details)


# -- the seven operations on the wire ---------------------------------------------------------


async def test_generate_sends_every_option_and_both_reference_kinds_and_returns_downloadable_pngs(
    ideogram: IdeogramClient, fake: FakeIdeogram, http: aiohttp.ClientSession
) -> None:
    params = {
        "prompt": "a lighthouse at dusk",
        "aspect_ratio": "16:9",  # a stray colon from the frontend is converted, not refused
        "resolution": None,
        "rendering_speed": "TURBO",
        "magic_prompt": "OFF",
        "num_images": 2,
        "seed": 1234,
        "style_type": "REALISTIC",
        "style_preset": "GOLDEN_HOUR",
        "negative_prompt": "fog",
        "style_reference_images": ["asset-style-1", "asset-style-2"],
        "character_reference_images": ["asset-hero"],
    }

    result = await ideogram.generate(params, style_references=[STYLE_WEBP, STYLE_PNG], character_references=[HERO_JPEG])

    record = only_request(fake, "generate")
    assert record.path == "/v1/ideogram-v3/generate"
    assert record.fields == {
        "prompt": "a lighthouse at dusk",
        "aspect_ratio": "16x9",
        "rendering_speed": "TURBO",
        "magic_prompt": "OFF",
        "num_images": "2",
        "seed": "1234",
        "style_type": "REALISTIC",
        "style_preset": "GOLDEN_HOUR",
        "negative_prompt": "fog",
    }
    assert sent_files(record) == [
        as_part("style_reference_images", STYLE_WEBP),
        as_part("style_reference_images", STYLE_PNG),
        as_part("character_reference_images", HERO_JPEG),
    ]
    assert len(result.image_urls) == 2 and len(set(result.image_urls)) == 2
    assert result.seeds == [1234, 1234]
    assert result.texts == []
    for url in result.image_urls:
        assert await png_size(http, url) == (256, 144)


async def test_a_text_only_generate_is_still_sent_as_multipart(
    ideogram: IdeogramClient, fake: FakeIdeogram, http: aiohttp.ClientSession
) -> None:
    result = await ideogram.generate({"prompt": "a red balloon"})

    record = only_request(fake, "generate")
    assert record.fields == {"prompt": "a red balloon"}
    assert record.files == []
    assert len(result.image_urls) == 1
    assert isinstance(result.seeds[0], int)
    assert await png_size(http, result.image_urls[0]) == (256, 256)


async def test_edit_sends_image_and_mask_as_files_and_returns_an_image_of_the_same_size(
    ideogram: IdeogramClient, fake: FakeIdeogram, http: aiohttp.ClientSession
) -> None:
    params = {
        "prompt": "add a red door",
        "magic_prompt": "AUTO",
        "rendering_speed": "QUALITY",
        "seed": 7,
        "num_images": 1,
        "style_type": "DESIGN",
        "style_preset": None,
        "image": "asset-photo",
        "mask": "asset-mask",
    }

    result = await ideogram.edit(params, image=PHOTO, mask=MASK)

    record = only_request(fake, "edit")
    assert record.path == "/v1/ideogram-v3/edit"
    assert record.fields == {
        "prompt": "add a red door",
        "magic_prompt": "AUTO",
        "rendering_speed": "QUALITY",
        "seed": "7",
        "num_images": "1",
        "style_type": "DESIGN",
    }
    assert sent_files(record) == [as_part("image", PHOTO), as_part("mask", MASK)]
    assert result.seeds == [7]
    assert await png_size(http, result.image_urls[0]) == (40, 30)


async def test_reframe_sends_the_target_resolution_and_returns_an_image_of_that_size(
    ideogram: IdeogramClient, fake: FakeIdeogram, http: aiohttp.ClientSession
) -> None:
    params = {
        "resolution": "512x256",
        "rendering_speed": "DEFAULT",
        "seed": 9,
        "num_images": 1,
        "style_preset": "VINTAGE",
        "image": "asset-photo",
    }

    result = await ideogram.reframe(params, image=PHOTO)

    record = only_request(fake, "reframe")
    assert record.path == "/v1/ideogram-v3/reframe"
    assert record.fields == {
        "resolution": "512x256",
        "rendering_speed": "DEFAULT",
        "seed": "9",
        "num_images": "1",
        "style_preset": "VINTAGE",
    }
    assert sent_files(record) == [as_part("image", PHOTO)]
    assert result.seeds == [9]
    assert await png_size(http, result.image_urls[0]) == (512, 256)


async def test_replace_background_returns_every_image_asked_for(
    ideogram: IdeogramClient, fake: FakeIdeogram, http: aiohttp.ClientSession
) -> None:
    params = {"prompt": "a snowy forest", "magic_prompt": "ON", "num_images": 3, "image": "asset-photo"}

    result = await ideogram.replace_background(params, image=PHOTO)

    record = only_request(fake, "replace-background")
    assert record.path == "/v1/ideogram-v3/replace-background"
    assert record.fields == {"prompt": "a snowy forest", "magic_prompt": "ON", "num_images": "3"}
    assert sent_files(record) == [as_part("image", PHOTO)]
    assert len(result.image_urls) == 3
    assert all(isinstance(seed, int) for seed in result.seeds) and len(result.seeds) == 3
    for url in result.image_urls:
        assert await png_size(http, url) == (40, 30)


async def test_remix_sends_image_weight_and_character_references(
    ideogram: IdeogramClient, fake: FakeIdeogram, http: aiohttp.ClientSession
) -> None:
    params = {
        "prompt": "the same scene in watercolour",
        "aspect_ratio": "4x3",
        "image_weight": 35,
        "rendering_speed": "TURBO",
        "style_type": "FICTION",
        "negative_prompt": "blur",
        "seed": 5,
        "image": "asset-photo",
        "character_reference_images": ["asset-hero"],
    }

    result = await ideogram.remix(params, image=PHOTO, character_references=[HERO_JPEG])

    record = only_request(fake, "remix")
    assert record.path == "/v1/ideogram-v3/remix"
    assert record.fields == {
        "prompt": "the same scene in watercolour",
        "aspect_ratio": "4x3",
        "image_weight": "35",
        "rendering_speed": "TURBO",
        "style_type": "FICTION",
        "negative_prompt": "blur",
        "seed": "5",
    }
    assert sent_files(record) == [as_part("image", PHOTO), as_part("character_reference_images", HERO_JPEG)]
    assert result.seeds == [5]
    assert await png_size(http, result.image_urls[0]) == (40, 30)


async def test_upscale_sends_its_options_as_one_json_image_request_and_the_image_as_image_file(
    ideogram: IdeogramClient, fake: FakeIdeogram, http: aiohttp.ClientSession
) -> None:
    params = {"resemblance": 55, "detail": 80, "prompt": "crisp", "magic_prompt": "OFF", "seed": None, "image": "a"}

    result = await ideogram.upscale(params, image=PHOTO)

    record = only_request(fake, "upscale")
    assert record.path == "/upscale"
    assert list(record.fields) == ["image_request"]
    assert json.loads(record.fields["image_request"]) == {
        "resemblance": 55,
        "detail": 80,
        "prompt": "crisp",
        "magic_prompt_option": "OFF",
    }
    assert sent_files(record) == [as_part("image_file", PHOTO)]
    assert len(result.image_urls) == 1
    assert await png_size(http, result.image_urls[0]) == (80, 60)


async def test_describe_returns_the_description_texts_and_no_images(
    ideogram: IdeogramClient, fake: FakeIdeogram
) -> None:
    result = await ideogram.describe({"describe_model_version": "V_3", "image": "asset-photo"}, image=PHOTO)

    record = only_request(fake, "describe")
    assert record.path == "/describe"
    assert record.fields == {"describe_model_version": "V_3"}
    assert sent_files(record) == [as_part("image_file", PHOTO)]
    assert result.texts == ["A solid-colour image, 40 by 30 pixels."]
    assert result.image_urls == [] and result.seeds == []


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("api_key", [None, "", "   "])
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_without_an_api_key_every_operation_is_misconfigured_and_nothing_is_sent(
    http: aiohttp.ClientSession, fake: FakeIdeogram, operation: str, api_key: str | None
) -> None:
    client = IdeogramClient(http, base_url=fake.base_url, api_key=api_key)

    with pytest.raises(ProviderMisconfigured):
        await OPERATIONS[operation](client)

    assert fake.received == []


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (400, ProviderBadRequest, "Ideogram answered 400: Scripted failure 400"),
        (401, ProviderMisconfigured, "Ideogram refused our API key"),
        (402, ProviderOutOfFunds, "Ideogram answered 402: Insufficient funds"),
        (404, ProviderBadRequest, "Ideogram answered 404: Scripted failure 404"),
        (422, ContentRejected, "Ideogram answered 422: Prompt or provided image failed the safety checks"),
        (500, ProviderUnavailable, "Ideogram answered 500: Internal server error"),
        (503, ProviderUnavailable, "Ideogram answered 503: Scripted failure 503"),
    ],
)
async def test_each_upstream_error_status_becomes_the_matching_provider_error(
    ideogram: IdeogramClient, fake: FakeIdeogram, status: int, error: type[ProviderError], message: str
) -> None:
    fake.fail_next(status, endpoint="generate")

    with pytest.raises(error) as raised:
        await ideogram.generate({"prompt": "a kite"})

    assert str(raised.value) == message
    assert type(raised.value) is error
    assert_key_hidden(raised.value)
    assert [r.status for r in fake.received] == [status]


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_every_operation_maps_an_upstream_outage_to_unavailable(
    ideogram: IdeogramClient, fake: FakeIdeogram, operation: str
) -> None:
    fake.fail_next(500, endpoint=operation)

    with pytest.raises(ProviderUnavailable) as raised:
        await OPERATIONS[operation](ideogram)

    assert_key_hidden(raised.value)
    assert [(r.endpoint, r.status) for r in fake.received] == [(operation, 500)]


async def test_a_scripted_429_is_rate_limited_with_the_retry_after_header(
    ideogram: IdeogramClient, fake: FakeIdeogram
) -> None:
    fake.fail_next(429, endpoint="generate", retry_after=7)

    with pytest.raises(ProviderRateLimited) as raised:
        await ideogram.generate({"prompt": "a kite"})

    assert raised.value.retry_after == 7.0
    assert raised.value.retryable
    assert "Too many images in flight" in str(raised.value)
    assert_key_hidden(raised.value)


async def test_asking_for_more_images_than_the_inflight_limit_is_rate_limited_not_failed(
    ideogram: IdeogramClient, fake: FakeIdeogram, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.inflight_limit = 2  # reset() restores it
    monkeypatch.setattr(fake, "retry_after", 3)

    with pytest.raises(ProviderRateLimited) as raised:
        await ideogram.generate({"prompt": "a kite", "num_images": 3})

    assert raised.value.retry_after == 3.0
    assert_key_hidden(raised.value)
    assert [r.status for r in fake.received] == [429]


async def test_a_refused_key_is_misconfigured_and_alerts_the_operator_without_the_key(
    http: aiohttp.ClientSession, fake: FakeIdeogram, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_key = "sk-ideogram-revoked-0000"
    client = IdeogramClient(http, base_url=fake.base_url, api_key=wrong_key)

    with caplog.at_level(logging.WARNING, logger="daygen.ideogram"), pytest.raises(ProviderMisconfigured) as raised:
        await client.generate({"prompt": "a kite"})

    assert str(raised.value) == "Ideogram refused our API key"
    assert wrong_key not in str(raised.value) and wrong_key not in repr(raised.value)
    assert [r.status for r in fake.received] == [401]
    warnings = [r for r in caplog.records if r.name == "daygen.ideogram" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Ideogram refused our API key" in warnings[0].getMessage()
    assert wrong_key not in caplog.text and KEY not in caplog.text


async def test_a_field_the_api_does_not_take_is_a_bad_request_with_upstreams_reason(
    ideogram: IdeogramClient, fake: FakeIdeogram
) -> None:
    with pytest.raises(ProviderBadRequest) as raised:
        await ideogram.generate({"prompt": "a kite", "colour": "red"})

    assert str(raised.value) == "Ideogram answered 400: Unknown field 'colour'"
    assert_key_hidden(raised.value)


async def test_an_upstream_error_that_echoes_our_key_back_is_redacted(
    ideogram: IdeogramClient, fake: FakeIdeogram
) -> None:
    # The fake quotes an invalid style_preset in its 400 message, as a careless upstream might quote a header.
    with pytest.raises(ProviderBadRequest) as raised:
        await ideogram.generate({"prompt": "a kite", "style_preset": KEY})

    assert "Invalid style_preset '<redacted>'" in str(raised.value)
    assert_key_hidden(raised.value)


async def test_a_hung_upstream_times_out_as_unavailable(http: aiohttp.ClientSession, fake: FakeIdeogram) -> None:
    client = IdeogramClient(
        http, base_url=fake.base_url, api_key=KEY, timeout=provider_timeout(connect_seconds=5.0, read_seconds=0.3)
    )
    fake.hang_next(endpoint="generate")

    try:
        with pytest.raises(ProviderUnavailable) as raised:
            await client.generate({"prompt": "a kite"})
    finally:
        fake.release_hung()

    assert "in time" in str(raised.value)
    assert isinstance(raised.value.__cause__, TimeoutError)
    assert_key_hidden(raised.value)
    assert [r.endpoint for r in fake.received] == ["generate"]


async def test_a_short_read_timeout_setting_fails_a_hung_upstream_as_unavailable_after_the_retries(
    fake: FakeIdeogram, tmp_path: Path, settings: Settings
) -> None:
    settings = settings.model_copy(
        update={
            "storage_url": f"file://{tmp_path}",
            "redis_namespace": f"timeouts-{tmp_path.name}",
            "ideogram_base_url": fake.base_url,
            "ideogram_api_key": SecretStr(KEY),
            "provider_read_timeout_seconds": 0.2,
            "provider_max_attempts": 3,
            "provider_backoff_seconds": 0.01,
            "provider_backoff_cap_seconds": 0.02,
        }
    )
    fake.hang_next(times=3, endpoint="generate")
    ctx = StepContext.from_settings(settings, ProviderPools.load(settings.providers_config))
    try:
        outcome = await run_step(ctx, "ideogram.generate", {"prompt": "a kite", "num_images": 1, "seed": 1}, {})
    finally:
        fake.release_hung()
        assert ctx.http is not None
        await ctx.http.close()

    assert outcome.error_code == "provider_unavailable"
    assert "in time" in (outcome.error_message or "")
    assert KEY not in (outcome.error_message or "")
    assert [r.endpoint for r in fake.received] == ["generate"] * 3, "each hung attempt was retried until none were left"
    assert outcome.assets == []


async def test_a_closed_port_is_unavailable(http: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = IdeogramClient(http, base_url=f"http://127.0.0.1:{port}", api_key=KEY)

    with pytest.raises(ProviderUnavailable) as raised:
        await client.generate({"prompt": "a kite"})

    assert isinstance(raised.value.__cause__, aiohttp.ClientConnectorError)
    assert_key_hidden(raised.value)


async def test_when_every_image_is_withheld_as_unsafe_the_content_is_rejected(
    ideogram: IdeogramClient, fake: FakeIdeogram
) -> None:
    fake.unsafe_next(endpoint="generate")

    with pytest.raises(ContentRejected) as raised:
        await ideogram.generate({"prompt": "a kite", "num_images": 2})

    assert "withheld all 2 images" in str(raised.value)
    assert_key_hidden(raised.value)
    assert [r.status for r in fake.received] == [200]


async def test_a_call_hung_before_images_were_scripted_unsafe_is_answered_safe_when_released(
    ideogram: IdeogramClient, fake: FakeIdeogram
) -> None:
    # A hung call from one test that finishes during the next must not use up that test's script.
    fake.hang_next(endpoint="generate")
    hung = asyncio.create_task(ideogram.generate({"prompt": "an early kite"}))
    await asyncio.to_thread(fake.wait_until_hung)
    fake.unsafe_next(endpoint="generate")
    fake.release_hung()

    early = await hung
    with pytest.raises(ContentRejected):
        await ideogram.generate({"prompt": "a later kite"})

    assert len(early.image_urls) == 1


def test_the_clients_repr_does_not_show_the_key(ideogram: IdeogramClient) -> None:
    assert KEY not in repr(ideogram)
    assert "configured" in repr(ideogram)


# -- answers FakeIdeogram cannot be scripted to give -------------------------------------------


async def _odd_generate(request: Request) -> Response:
    """Answers chosen by the prompt: the malformed and mixed replies a real upstream can give."""
    scenario = (await request.form()).get("prompt")
    if scenario == "not json":
        return Response("<html>gateway hiccup</html>", media_type="text/html")
    if scenario == "no images":
        return JSONResponse({"created": "2025-01-01T00:00:00Z", "data": []})
    if scenario == "half withheld":
        withheld = {"url": None, "is_image_safe": False, "seed": 1}
        kept = {"url": "https://ideogram.example/kept.png", "is_image_safe": True, "seed": 2}
        return JSONResponse({"created": "2025-01-01T00:00:00Z", "data": [withheld, kept]})
    return Response("Bad gateway from the edge", status_code=502)


@pytest.fixture(scope="module")
def odd_upstream() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/ideogram-v3/generate", _odd_generate, methods=["POST"])])
    with FakeServer(app) as base_url:
        yield base_url


@pytest.fixture
def odd_ideogram(http: aiohttp.ClientSession, odd_upstream: str) -> IdeogramClient:
    return IdeogramClient(http, base_url=odd_upstream, api_key=KEY)


async def test_only_the_safe_images_of_a_partly_withheld_answer_are_returned(odd_ideogram: IdeogramClient) -> None:
    result = await odd_ideogram.generate({"prompt": "half withheld"})

    assert result.image_urls == ["https://ideogram.example/kept.png"]
    assert result.seeds == [2]


@pytest.mark.parametrize("scenario", ["not json", "no images"])
async def test_a_200_that_is_not_a_usable_answer_is_unavailable(odd_ideogram: IdeogramClient, scenario: str) -> None:
    with pytest.raises(ProviderUnavailable) as raised:
        await odd_ideogram.generate({"prompt": scenario})

    assert_key_hidden(raised.value)


async def test_a_non_json_error_body_is_quoted_as_text(odd_ideogram: IdeogramClient) -> None:
    with pytest.raises(ProviderUnavailable) as raised:
        await odd_ideogram.generate({"prompt": "gateway"})

    assert str(raised.value) == "Ideogram answered 502: Bad gateway from the edge"
