"""The Ideogram fake speaks the documented wire format over real loopback HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from PIL import Image

from tests.fakes.ideogram import FakeIdeogram
from tests.images import encoded

GENERATE = "/v1/ideogram-v3/generate"
EDIT = "/v1/ideogram-v3/edit"
REFRAME = "/v1/ideogram-v3/reframe"
REPLACE_BACKGROUND = "/v1/ideogram-v3/replace-background"
REMIX = "/v1/ideogram-v3/remix"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def running_fake(clock: Clock) -> Iterator[FakeIdeogram]:
    with FakeIdeogram(url_ttl=60, clock=clock) as fake:
        yield fake


@pytest.fixture
def fake(running_fake: FakeIdeogram) -> FakeIdeogram:
    running_fake.reset()
    return running_fake


@pytest.fixture
async def client(fake: FakeIdeogram) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"Api-Key": fake.api_key}, timeout=10) as http:
        yield http


def form(fields: dict[str, str] | None = None, **files: bytes) -> list[tuple[str, tuple[str | None, bytes | str, str]]]:
    """A multipart body for httpx: text parts without a filename, file parts as PNG uploads."""
    parts = [(key, (None, value, "text/plain")) for key, value in (fields or {}).items()]
    parts += [(key, (f"{key}.png", data, "image/png")) for key, data in files.items()]
    return parts


async def png_size(http: httpx.AsyncClient, url: str) -> tuple[int, int]:
    answer = await http.get(url)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(answer.content)) as image:
        assert image.format == "PNG"
        return image.size


def assert_image_reply(body: dict, count: int, resolution: str) -> None:
    assert isinstance(body["created"], str) and body["created"].endswith("Z")
    assert len(body["data"]) == count
    for item in body["data"]:
        assert set(item) == {"url", "prompt", "resolution", "is_image_safe", "seed", "style_type"}
        assert item["resolution"] == resolution
        assert item["is_image_safe"] is True
        assert isinstance(item["seed"], int)


# -- happy paths ---------------------------------------------------------------------------


async def test_generate_returns_num_images_pngs_at_the_requested_resolution(client):
    fields = {"prompt": "a red fox", "resolution": "320x192", "num_images": "3", "seed": "42", "style_type": "DESIGN"}
    answer = await client.post(GENERATE, files=form(fields))

    assert answer.status_code == 200
    body = answer.json()
    assert_image_reply(body, 3, "320x192")
    assert {item["seed"] for item in body["data"]} == {42}
    assert {item["style_type"] for item in body["data"]} == {"DESIGN"}
    assert body["data"][0]["prompt"] == "a red fox"
    for item in body["data"]:
        assert await png_size(client, item["url"]) == (320, 192)


@pytest.mark.parametrize(
    ("fields", "size"),
    [({}, (256, 256)), ({"aspect_ratio": "16x9"}, (256, 144)), ({"aspect_ratio": "9x16"}, (144, 256))],
)
async def test_generate_without_resolution_makes_small_images_in_the_asked_aspect_ratio(client, fields, size):
    answer = await client.post(GENERATE, files=form({"prompt": "dunes", **fields}))

    assert answer.status_code == 200
    item = answer.json()["data"][0]
    assert item["resolution"] == f"{size[0]}x{size[1]}"
    assert item["style_type"] == "GENERAL"
    assert await png_size(client, item["url"]) == size


async def test_edit_keeps_the_input_size(client):
    picture, mask = encoded(size=(40, 30)), encoded(size=(40, 30), colour="black")
    answer = await client.post(EDIT, files=form({"prompt": "add a hat", "num_images": "2"}, image=picture, mask=mask))

    assert answer.status_code == 200
    body = answer.json()
    assert_image_reply(body, 2, "40x30")
    assert await png_size(client, body["data"][1]["url"]) == (40, 30)


async def test_reframe_answers_at_the_requested_resolution(client):
    answer = await client.post(REFRAME, files=form({"resolution": "128x64"}, image=encoded(size=(40, 30))))

    assert answer.status_code == 200
    assert_image_reply(answer.json(), 1, "128x64")
    assert await png_size(client, answer.json()["data"][0]["url"]) == (128, 64)


async def test_replace_background_keeps_the_input_size(client):
    answer = await client.post(REPLACE_BACKGROUND, files=form({"prompt": "a beach"}, image=encoded(size=(50, 20))))

    assert answer.status_code == 200
    assert_image_reply(answer.json(), 1, "50x20")
    assert await png_size(client, answer.json()["data"][0]["url"]) == (50, 20)


@pytest.mark.parametrize(
    ("fields", "size"), [({}, (40, 30)), ({"aspect_ratio": "1x1", "image_weight": "70"}, (40, 40))]
)
async def test_remix_follows_the_input_or_the_asked_aspect_ratio(client, fields, size):
    answer = await client.post(
        REMIX, files=form({"prompt": "as a watercolour", **fields}, image=encoded(size=(40, 30)))
    )

    assert answer.status_code == 200
    assert_image_reply(answer.json(), 1, f"{size[0]}x{size[1]}")
    assert await png_size(client, answer.json()["data"][0]["url"]) == size


async def test_upscale_doubles_the_input_size(client):
    request = json.dumps({"resemblance": 60, "detail": 90, "prompt": "sharper"})
    answer = await client.post("/upscale", files=form({"image_request": request}, image_file=encoded(size=(40, 30))))

    assert answer.status_code == 200
    assert_image_reply(answer.json(), 1, "80x60")
    assert answer.json()["data"][0]["prompt"] == "sharper"
    assert await png_size(client, answer.json()["data"][0]["url"]) == (80, 60)


async def test_describe_answers_a_list_of_descriptions(client):
    answer = await client.post(
        "/describe", files=form({"describe_model_version": "V_3"}, image_file=encoded(size=(40, 30)))
    )

    assert answer.status_code == 200
    descriptions = answer.json()["descriptions"]
    assert len(descriptions) == 1 and isinstance(descriptions[0]["text"], str) and descriptions[0]["text"]


async def test_magic_prompt_on_answers_a_rewritten_prompt(client):
    answer = await client.post(GENERATE, files=form({"prompt": "a boat", "magic_prompt": "ON"}))

    assert answer.json()["data"][0]["prompt"] != "a boat"
    assert answer.json()["data"][0]["prompt"].startswith("a boat")


# -- expiring URLs -------------------------------------------------------------------------


async def test_image_urls_stop_working_once_their_ttl_has_passed(client, fake, clock):
    answer = await client.post(GENERATE, files=form({"prompt": "a lighthouse"}))
    url = answer.json()["data"][0]["url"]
    assert url.startswith(fake.base_url + "/files/")
    assert (await client.get(url)).status_code == 200

    clock.now += fake.url_ttl + 1

    expired = await client.get(url)
    assert expired.status_code == 403
    assert expired.json() == {"error": "expired"}


async def test_expire_urls_ends_every_url_at_once_and_unknown_ones_are_404(client, fake):
    answer = await client.post(GENERATE, files=form({"prompt": "a lighthouse", "num_images": "2"}))
    fake.expire_urls()

    for item in answer.json()["data"]:
        assert (await client.get(item["url"])).status_code == 403
    assert (await client.get("/files/nothing-here.png")).status_code == 404
    assert len(fake.downloads) == 3


# -- auth and recording --------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{"Api-Key": "wrong"}, {}])
async def test_a_missing_or_wrong_api_key_is_refused_with_401(fake, headers):
    async with httpx.AsyncClient(base_url=fake.base_url, headers=headers) as http:
        answer = await http.post(GENERATE, files=form({"prompt": "a cat"}))

    assert answer.status_code == 401
    assert "error" in answer.json()


async def test_every_request_is_recorded_with_its_exact_fields_and_file_bytes(client, fake):
    picture = encoded(size=(40, 30))
    await client.post(
        REMIX,
        files=[("prompt", (None, "as ink", "text/plain")), ("image", ("cat.png", picture, "image/png"))],
    )

    [seen] = fake.received
    assert (seen.method, seen.path, seen.endpoint, seen.status) == ("POST", REMIX, "remix", 200)
    assert seen.fields == {"prompt": "as ink"}
    image = seen.file("image")
    assert (image.filename, image.content_type, image.data) == ("cat.png", "image/png", picture)
    assert seen.headers["api-key"] == fake.api_key
    assert fake.api_key not in repr(seen)


# -- validation ----------------------------------------------------------------------------

PICTURE = encoded(size=(40, 30))


@pytest.mark.parametrize(
    ("path", "fields", "files", "error"),
    [
        pytest.param(GENERATE, {"num_images": "1"}, {}, "'prompt' is required", id="missing-prompt"),
        pytest.param(GENERATE, {"prompt": "  "}, {}, "'prompt' is required", id="blank-prompt"),
        pytest.param(GENERATE, {"prompt": "x", "rendering_speed": "FAST"}, {}, "rendering_speed", id="bad-speed"),
        pytest.param(GENERATE, {"prompt": "x", "magic_prompt": "MAYBE"}, {}, "magic_prompt", id="bad-magic-prompt"),
        pytest.param(GENERATE, {"prompt": "x", "style_type": "ANIME"}, {}, "style_type", id="bad-style-type"),
        pytest.param(GENERATE, {"prompt": "x", "aspect_ratio": "16:9"}, {}, "e.g. 16x9", id="colon-aspect-ratio"),
        pytest.param(GENERATE, {"prompt": "x", "aspect_ratio": "7x3"}, {}, "aspect_ratio", id="unknown-aspect-ratio"),
        pytest.param(
            GENERATE,
            {"prompt": "x", "aspect_ratio": "1x1", "resolution": "512x512"},
            {},
            "mutually exclusive",
            id="aspect-ratio-and-resolution",
        ),
        pytest.param(GENERATE, {"prompt": "x", "resolution": "1024*1024"}, {}, "resolution", id="bad-resolution"),
        pytest.param(GENERATE, {"prompt": "x", "num_images": "9"}, {}, "between 1 and 8", id="nine-images"),
        pytest.param(GENERATE, {"prompt": "x", "num_images": "0"}, {}, "between 1 and 8", id="zero-images"),
        pytest.param(GENERATE, {"prompt": "x", "num_images": "two"}, {}, "integer", id="non-integer-images"),
        pytest.param(GENERATE, {"prompt": "x", "seed": "-1"}, {}, "seed", id="negative-seed"),
        pytest.param(GENERATE, {"prompt": "x", "magic_prompt_option": "ON"}, {}, "Unknown field", id="unknown-field"),
        pytest.param(
            GENERATE,
            {"prompt": "x"},
            {"style_reference_images": b"not an image"},
            "not a readable image",
            id="reference-not-an-image",
        ),
        pytest.param(GENERATE, {"prompt": "x"}, {"prompt": PICTURE}, "must be a text field", id="prompt-as-a-file"),
        pytest.param(EDIT, {"prompt": "x"}, {"image": PICTURE}, "'mask' file is required", id="edit-without-mask"),
        pytest.param(
            EDIT,
            {"prompt": "x"},
            {"image": PICTURE, "mask": encoded(size=(20, 15))},
            "same size",
            id="mask-size-mismatch",
        ),
        pytest.param(EDIT, {}, {"image": PICTURE, "mask": PICTURE}, "'prompt' is required", id="edit-without-prompt"),
        pytest.param(
            REFRAME, {"seed": "1"}, {"image": PICTURE}, "'resolution' is required", id="reframe-no-resolution"
        ),
        pytest.param(
            REFRAME, {"resolution": "128x64"}, {"image": b"GIF89a junk"}, "not a readable image", id="undecodable"
        ),
        pytest.param(REFRAME, {"resolution": "128x64"}, {"image": encoded("GIF")}, "PNG, JPEG or WebP", id="gif"),
        pytest.param(REPLACE_BACKGROUND, {"prompt": "x"}, {}, "'image' file is required", id="background-no-image"),
        pytest.param(
            REMIX, {"prompt": "x", "image_weight": "101"}, {"image": PICTURE}, "image_weight", id="weight-101"
        ),
        pytest.param("/upscale", {}, {"image_file": PICTURE}, "'image_request' is required", id="no-image-request"),
        pytest.param("/upscale", {"image_request": "{nope"}, {"image_file": PICTURE}, "not valid JSON", id="bad-json"),
        pytest.param(
            "/upscale", {"image_request": '{"resemblance": 101}'}, {"image_file": PICTURE}, "resemblance", id="r-101"
        ),
        pytest.param(
            "/describe", {"describe_model_version": "V_9"}, {"image_file": PICTURE}, "describe_model", id="bad-version"
        ),
        pytest.param("/describe", {}, {"image": PICTURE}, "Unknown file field 'image'", id="describe-wrong-file-name"),
    ],
)
async def test_requests_the_docs_rule_out_are_refused_with_400(client, fake, path, fields, files, error):
    answer = await client.post(path, files=form(fields, **files))

    assert answer.status_code == 400
    assert error in answer.json()["error"]
    assert fake.peak_inflight_images == 0


async def test_a_url_encoded_body_is_refused_but_still_recorded(client, fake):
    answer = await client.post(GENERATE, data={"prompt": "a cat"})

    assert answer.status_code == 400
    assert "multipart" in answer.json()["error"]
    assert fake.received[0].fields == {"prompt": "a cat"}


# -- scripted failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "details", "expected"),
    [
        (401, {}, {}),
        (402, {}, {"reject_reason": "insufficient_funds"}),
        (402, {"reject_reason": "daily_limit"}, {"reject_reason": "daily_limit"}),
        (422, {}, {}),
        (500, {}, {}),
    ],
)
async def test_a_scripted_failure_answers_once_then_the_fake_recovers(client, fake, status, details, expected):
    fake.fail_next(status, **details)

    failed = await client.post(GENERATE, files=form({"prompt": "a cat"}))
    recovered = await client.post(GENERATE, files=form({"prompt": "a cat"}))

    assert failed.status_code == status
    assert isinstance(failed.json()["error"], str)
    assert expected.items() <= failed.json().items()
    assert recovered.status_code == 200


async def test_a_scripted_429_looks_like_the_inflight_limit_with_retry_after(client, fake):
    fake.fail_next(429, times=2, retry_after=7)

    answers = [await client.post(GENERATE, files=form({"prompt": "a cat"})) for _ in range(3)]

    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "7"
    body = answers[0].json()
    assert body["reject_reason"] == "inflight_limit"
    assert body["max_inflight_requests"] == 10


async def test_a_failure_scripted_for_one_endpoint_leaves_the_others_alone(client, fake):
    fake.fail_next(500, endpoint="upscale")

    generated = await client.post(GENERATE, files=form({"prompt": "a cat"}))
    upscaled = await client.post("/upscale", files=form({"image_request": "{}"}, image_file=PICTURE))

    assert (generated.status_code, upscaled.status_code) == (200, 500)


async def test_an_unsafe_result_has_no_url(client, fake):
    fake.unsafe_next()

    answer = await client.post(GENERATE, files=form({"prompt": "something dubious", "num_images": "2"}))

    assert answer.status_code == 200
    assert [(i["is_image_safe"], i["url"]) for i in answer.json()["data"]] == [(False, None), (False, None)]


async def test_a_hung_request_answers_only_after_release(client, fake):
    fake.hang_next()
    pending = asyncio.create_task(client.post(GENERATE, files=form({"prompt": "a cat", "num_images": "3"})))

    await asyncio.to_thread(fake.wait_until_hung, 1)
    assert not pending.done()
    assert fake.inflight_images == 3
    fake.release_hung()
    answer = await pending

    assert answer.status_code == 200
    assert fake.inflight_images == 0


async def test_a_hung_request_ends_when_the_server_stops():
    fake = FakeIdeogram()
    fake.start()
    fake.hang_next()
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"Api-Key": fake.api_key}) as http:
        pending = asyncio.create_task(http.post(GENERATE, files=form({"prompt": "a cat"})))
        await asyncio.to_thread(fake.wait_until_hung, 1)
        await asyncio.to_thread(fake.stop)
        answer = await pending

    assert answer.status_code == 503


async def test_a_slow_request_takes_at_least_the_scripted_delay(client, fake):
    fake.slow_next(0.3)

    started = time.monotonic()
    slow = await client.post(GENERATE, files=form({"prompt": "a cat"}))
    slow_took = time.monotonic() - started
    started = time.monotonic()
    await client.post(GENERATE, files=form({"prompt": "a cat"}))
    fast_took = time.monotonic() - started

    assert slow.status_code == 200
    assert slow_took >= 0.29 and fast_took < 0.3


# -- the in-flight limit -------------------------------------------------------------------


async def test_twelve_concurrent_single_images_over_a_limit_of_ten_get_two_429s(client, fake):
    fake.set_latency(0.5)

    answers = await asyncio.gather(*(client.post(GENERATE, files=form({"prompt": f"cat {i}"})) for i in range(12)))

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 10 + [429] * 2
    refused = [a for a in answers if a.status_code == 429]
    assert all(a.headers["Retry-After"] == "1" for a in refused)
    assert all(a.json()["reject_reason"] == "inflight_limit" for a in refused)
    assert all(a.json()["max_inflight_requests"] == 10 for a in refused)
    assert fake.peak_inflight_images == 10
    assert fake.inflight_images == 0


async def test_a_four_image_request_takes_four_places(client, fake):
    fake.set_latency(0.5)

    answers = await asyncio.gather(
        *(client.post(GENERATE, files=form({"prompt": "cats", "num_images": "4"})) for _ in range(3))
    )

    assert sorted(a.status_code for a in answers) == [200, 200, 429]
    assert fake.peak_inflight_images == 8


async def test_places_free_up_when_requests_finish(client, fake):
    fake.inflight_limit = 2
    fake.set_latency(0.05)

    answers = [await client.post(GENERATE, files=form({"prompt": "a cat", "num_images": "2"})) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert fake.peak_inflight_images == 2
