"""Ideogram and Qwen operations end to end through the app, against the local fakes:
what the fake received, what was stored, what the job shows, and what was charged."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from decimal import Decimal

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.conftest import IDEOGRAM_INFLIGHT_LIMIT
from tests.e2e.helpers import assert_v1_error, bearer, set_balance, signup


def png(size=(80, 60), colour="white") -> bytes:
    image = Image.new("RGB", size, colour)
    ImageDraw.Draw(image).rectangle((10, 10, 30, 30), fill="red")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def mask_png(size=(80, 60)) -> bytes:
    mask = Image.new("L", size, 255)
    ImageDraw.Draw(mask).rectangle((0, 0, 20, 20), fill=0)
    out = io.BytesIO()
    mask.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(autouse=True)
def fresh_fakes(fake_ideogram, fake_dashscope):
    fake_ideogram.reset()
    fake_dashscope.reset()


@pytest.fixture
async def user(client) -> dict:
    account = await signup(client)
    return {"headers": bearer(account["accessToken"]), "id": account["user"]["id"]}


async def upload(client: httpx.AsyncClient, headers: dict, data: bytes) -> str:
    response = await client.post("/v1/assets", content=data, headers={**headers, "Content-Type": "image/png"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def run(client: httpx.AsyncClient, headers: dict, operation: str, params: dict) -> dict:
    accepted = await client.post("/v1/jobs", json={"operation": operation, "params": params}, headers=headers)
    assert accepted.status_code == 202, accepted.text
    response = await client.get(f"/v1/jobs/{accepted.json()['jobId']}", params={"wait": 30}, headers=headers)
    return response.json()


async def credits(client: httpx.AsyncClient, headers: dict) -> float:
    return (await client.get("/v1/auth/me", headers=headers)).json()["credits"]


async def fetch(client: httpx.AsyncClient, asset: dict) -> Image.Image:
    """The stored image behind a job's asset: exactly the bytes, size and dimensions the job reports."""
    response = await client.get(asset["url"])
    assert response.status_code == 200, response.text
    body = response.content
    assert hashlib.sha256(body).hexdigest() == asset["sha256"]
    assert len(body) == asset["size"]
    image = Image.open(io.BytesIO(body))
    assert image.size == (asset["width"], asset["height"])
    return image


async def gallery(client: httpx.AsyncClient, headers: dict) -> dict[str, dict]:
    response = await client.get("/api/r2files", headers=headers)
    assert response.status_code == 200, response.text
    return {item["id"]: item for item in response.json()["items"]}


async def test_ideogram_generate_sends_the_upstream_form_and_keeps_every_image(client, user, fake_ideogram):
    job = await run(
        client,
        user["headers"],
        "ideogram.generate",
        {"prompt": "a lighthouse", "aspect_ratio": "16:9", "num_images": 2, "seed": 5, "rendering_speed": "TURBO"},
    )
    assert job["status"] == "succeeded", job["error"]
    [sent] = fake_ideogram.requests_to("generate")
    assert sent.headers["api-key"] == fake_ideogram.api_key
    assert sent.fields["prompt"] == "a lighthouse"
    assert (sent.fields["aspect_ratio"], sent.fields["num_images"], sent.fields["rendering_speed"]) == (
        "16x9",
        "2",
        "TURBO",
    )
    assert (sent.fields["seed"], job["params"]["seed"]) == ("5", 5)
    assert len(job["result"]["assets"]) == 2
    fake_ideogram.expire_urls()
    for asset in job["result"]["assets"]:
        image = await fetch(client, asset)
        assert image.format == "PNG", "outputs were copied at once, not linked"
        assert image.size == (256, 144), "the fake's 16x9 answer"
    assert [s["status"] for s in job["steps"]] == ["succeeded"]
    assert job["cost"] == 2
    assert await credits(client, user["headers"]) == 18


async def test_ideogram_generate_sends_style_and_character_references_as_file_parts(client, user, fake_ideogram):
    styles = [png(colour="yellow"), png(size=(64, 64), colour="blue")]
    hero = png(size=(48, 64), colour="green")
    params = {
        "prompt": "this hero in these styles",
        "style_reference_images": [await upload(client, user["headers"], s) for s in styles],
        "character_reference_images": [await upload(client, user["headers"], hero)],
    }
    job = await run(client, user["headers"], "ideogram.generate", params)
    assert job["status"] == "succeeded", job["error"]
    [sent] = fake_ideogram.requests_to("generate")
    assert [(p.data, p.content_type) for p in sent.files_named("style_reference_images")] == [
        (s, "image/png") for s in styles
    ]
    [character] = sent.files_named("character_reference_images")
    assert (character.data, character.content_type) == (hero, "image/png")
    assert "style_reference_images" not in sent.fields and "character_reference_images" not in sent.fields
    [asset] = job["result"]["assets"]
    assert (await fetch(client, asset)).size == (256, 256)


async def test_ideogram_edit_sends_the_exact_image_and_mask_bytes(client, user, fake_ideogram):
    image, mask = png(), mask_png()
    params = {
        "image": await upload(client, user["headers"], image),
        "mask": await upload(client, user["headers"], mask),
        "prompt": "a blue door",
    }
    job = await run(client, user["headers"], "ideogram.edit", params)
    assert job["status"] == "succeeded", job["error"]
    [sent] = fake_ideogram.requests_to("edit")
    assert (sent.file("image").data, sent.file("mask").data) == (image, mask)
    assert sent.fields["prompt"] == "a blue door"
    [asset] = job["result"]["assets"]
    assert (await fetch(client, asset)).size == (80, 60), "an edit keeps the image's size"
    assert job["cost"] == 1


@pytest.mark.parametrize(
    ("operation", "endpoint", "params", "file_field", "sent_fields", "size", "cost"),
    [
        (
            "ideogram.reframe",
            "reframe",
            {"resolution": "1312x736", "rendering_speed": "TURBO"},
            "image",
            {"resolution": "1312x736", "rendering_speed": "TURBO"},
            (1312, 736),
            1,
        ),
        (
            "ideogram.replace_background",
            "replace-background",
            {"prompt": "a beach", "magic_prompt": "OFF"},
            "image",
            {"prompt": "a beach", "magic_prompt": "OFF"},
            (80, 60),
            1,
        ),
        (
            "ideogram.remix",
            "remix",
            {"prompt": "at night", "image_weight": 70, "aspect_ratio": "16:9"},
            "image",
            {"prompt": "at night", "image_weight": "70", "aspect_ratio": "16x9"},
            (80, 45),
            1,
        ),
        ("ideogram.upscale", "upscale", {"resemblance": 55}, "image_file", {}, (160, 120), 2),
    ],
)
async def test_each_ideogram_image_operation_sends_its_form_and_stores_the_answer(
    client, user, fake_ideogram, operation, endpoint, params, file_field, sent_fields, size, cost
):
    image = png()
    image_id = await upload(client, user["headers"], image)
    job = await run(client, user["headers"], operation, {"image": image_id, **params})
    assert job["status"] == "succeeded", job["error"]
    assert (job["operation"], job["params"]["image"], job["cost"]) == (operation, image_id, cost)
    [sent] = fake_ideogram.requests_to(endpoint)
    assert (sent.file(file_field).data, sent.file(file_field).content_type) == (image, "image/png")
    assert {name: sent.fields.get(name) for name in sent_fields} == sent_fields
    [asset] = job["result"]["assets"]
    fake_ideogram.expire_urls()
    assert (await fetch(client, asset)).size == size
    assert await credits(client, user["headers"]) == 20 - cost


async def test_upscale_sends_its_options_as_the_json_image_request(client, user, fake_ideogram):
    image_id = await upload(client, user["headers"], png())
    job = await run(
        client, user["headers"], "ideogram.upscale", {"image": image_id, "resemblance": 55, "prompt": "crisper"}
    )
    assert job["status"] == "succeeded", job["error"]
    [sent] = fake_ideogram.requests_to("upscale")
    assert json.loads(sent.fields["image_request"]) == {"resemblance": 55, "detail": 90, "prompt": "crisper"}


async def test_remix_sends_prompt_weight_and_character_reference_and_its_output_is_in_the_gallery(
    client, user, fake_ideogram
):
    image, hero = png(size=(96, 64)), png(size=(32, 48), colour="green")
    params = {
        "image": await upload(client, user["headers"], image),
        "prompt": "the same harbour at night",
        "image_weight": 25,
        "character_reference_images": [await upload(client, user["headers"], hero)],
    }
    job = await run(client, user["headers"], "ideogram.remix", params)
    assert job["status"] == "succeeded", job["error"]
    [sent] = fake_ideogram.requests_to("remix")
    assert (sent.fields["prompt"], sent.fields["image_weight"]) == ("the same harbour at night", "25")
    assert sent.file("image").data == image
    assert [p.data for p in sent.files_named("character_reference_images")] == [hero]
    [asset] = job["result"]["assets"]
    assert (await fetch(client, asset)).size == (96, 64), "a remix without a shape keeps the input's"
    listed = (await gallery(client, user["headers"]))[asset["id"]]
    assert (listed["model"], listed["prompt"], listed["jobId"]) == ("ideogram.remix", params["prompt"], job["id"])
    assert (listed["fileUrl"], listed["fileSize"], listed["mimeType"]) == (asset["url"], asset["size"], "image/png")


async def test_ideogram_describe_sends_the_image_and_stores_the_text_on_the_job(client, user, fake_ideogram):
    image = png(size=(72, 40))
    image_id = await upload(client, user["headers"], image)
    job = await run(client, user["headers"], "ideogram.describe", {"image": image_id, "describe_model_version": "V_2"})
    assert job["status"] == "succeeded", job["error"]
    [sent] = fake_ideogram.requests_to("describe")
    assert (sent.file("image_file").data, sent.file("image_file").content_type) == (image, "image/png")
    assert sent.fields == {"describe_model_version": "V_2"}
    assert job["result"] == {"assets": [], "text": "A solid-colour image, 72 by 40 pixels."}
    assert job["steps"][0]["text"] == job["result"]["text"]
    assert (await gallery(client, user["headers"])).keys() == {image_id}, "a description makes no image"
    assert await credits(client, user["headers"]) == 19.5


async def test_qwen_generate_and_edit_send_the_dashscope_bodies(client, user, fake_dashscope):
    made = await run(
        client,
        user["headers"],
        "qwen.generate",
        {"prompt": "a koi pond", "size": "1664*928", "seed": 3, "negative_prompt": "blur", "prompt_extend": False},
    )
    assert made["status"] == "succeeded", made["error"]
    [sent] = fake_dashscope.requests_to("generation")
    assert sent.json == {
        "model": "qwen-image",
        "input": {"messages": [{"role": "user", "content": [{"text": "a koi pond"}]}]},
        "parameters": {
            "size": "1664*928",
            "seed": 3,
            "negative_prompt": "blur",
            "prompt_extend": False,
            "watermark": False,
        },
    }
    assert sent.headers["authorization"] == f"Bearer {fake_dashscope.api_key}"
    [asset] = made["result"]["assets"]
    fake_dashscope.expire_urls()
    assert (await fetch(client, asset)).size == (1664, 928)

    image = png()
    edited = await run(
        client,
        user["headers"],
        "qwen.edit",
        {"image": await upload(client, user["headers"], image), "prompt": "snow", "seed": 4},
    )
    assert edited["status"] == "succeeded", edited["error"]
    body = fake_dashscope.requests_to("generation")[-1].json
    assert body["model"] == "qwen-image-edit"
    parts = body["input"]["messages"][0]["content"]
    image_part = next(p["image"] for p in parts if "image" in p)
    assert image_part.startswith("data:image/png;base64,")
    assert base64.b64decode(image_part.split(",", 1)[1]) == image
    assert [p["text"] for p in parts if "text" in p] == ["snow"]
    assert body["parameters"] == {"seed": 4, "watermark": False}
    [edited_asset] = edited["result"]["assets"]
    assert (await fetch(client, edited_asset)).size == (80, 60), "an edit comes back at the input's size"
    listed = await gallery(client, user["headers"])
    assert (listed[asset["id"]]["model"], listed[asset["id"]]["prompt"]) == ("qwen.generate", "a koi pond")
    assert (listed[edited_asset["id"]]["model"], listed[edited_asset["id"]]["prompt"]) == ("qwen.edit", "snow")
    assert await credits(client, user["headers"]) == 18


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "provider_misconfigured"), (402, "provider_out_of_funds"), (422, "content_rejected")],
)
async def test_final_upstream_errors_fail_the_job_and_release_the_credit(client, user, fake_ideogram, status, code):
    fake_ideogram.fail_next(status, times=5)
    job = await run(client, user["headers"], "ideogram.generate", {"prompt": "refused"})
    assert job["status"] == "failed"
    assert job["error"]["code"] == code
    assert fake_ideogram.api_key not in job["error"]["message"]
    assert len(fake_ideogram.requests_to("generate")) == 1, "a 4xx is never retried"
    assert await credits(client, user["headers"]) == 20


async def test_an_ideogram_outage_that_outlasts_the_retries_is_provider_unavailable_and_costs_nothing(
    client, user, fake_ideogram, settings
):
    fake_ideogram.fail_next(500, times=settings.provider_max_attempts, endpoint="generate")
    job = await run(client, user["headers"], "ideogram.generate", {"prompt": "down"})
    assert job["status"] == "failed"
    assert job["error"]["code"] == "provider_unavailable"
    assert "500" in job["error"]["message"]
    assert [r.status for r in fake_ideogram.requests_to("generate")] == [500] * settings.provider_max_attempts
    assert job["result"] is None and job["steps"][0]["status"] == "failed"
    assert await credits(client, user["headers"]) == 20


async def test_an_ideogram_in_flight_refusal_is_waited_out_and_then_succeeds(client, user, fake_ideogram):
    fake_ideogram.fail_next(429, times=2, endpoint="generate", retry_after=0)
    job = await run(client, user["headers"], "ideogram.generate", {"prompt": "patience", "num_images": 2})
    assert job["status"] == "succeeded", job["error"]
    assert [r.status for r in fake_ideogram.requests_to("generate")] == [429, 429, 200]
    assert len(job["result"]["assets"]) == 2
    assert await credits(client, user["headers"]) == 18, "charged once, for the images made"


@pytest.mark.parametrize(
    ("status", "code"),
    [(422, None), (400, "DataInspectionFailed")],
    ids=["422", "moderation"],
)
async def test_a_qwen_safety_refusal_fails_as_content_rejected_and_costs_nothing(
    client, user, fake_dashscope, status, code
):
    fake_dashscope.fail_next(status, code=code, message="Input data may contain inappropriate content.")
    job = await run(client, user["headers"], "qwen.generate", {"prompt": "something refused"})
    assert job["status"] == "failed"
    assert job["error"]["code"] == "content_rejected"
    assert "inappropriate content" in job["error"]["message"]
    assert len(fake_dashscope.requests_to("generation")) == 1, "a refusal is never retried"
    assert await credits(client, user["headers"]) == 20


async def test_a_dashscope_error_echoing_our_key_reaches_the_job_redacted(client, user, fake_dashscope):
    fake_dashscope.fail_next(400, message="Bad request.", echo_auth=True)
    job = await run(client, user["headers"], "qwen.generate", {"prompt": "echo"})
    assert job["status"] == "failed"
    assert "Bad request. (Authorization: Bearer <redacted>)" in job["error"]["message"]
    assert fake_dashscope.api_key not in json.dumps(job)


@pytest.mark.parametrize(
    ("operation", "params", "field"),
    [
        ("ideogram.generate", {"prompt": "x", "resolution": "5000x5000"}, "params.resolution"),
        ("ideogram.generate", {"prompt": "x", "style_type": "ANIME"}, "params.style_type"),
        ("qwen.generate", {"prompt": "x", "size": "1024*1024"}, "params.size"),
        ("qwen.generate", {"prompt": "x", "watermark": "maybe"}, "params.watermark"),
    ],
)
async def test_a_bad_provider_param_is_422_naming_it_and_costs_nothing(
    client, user, fake_ideogram, fake_dashscope, operation, params, field
):
    response = await client.post("/v1/jobs", json={"operation": operation, "params": params}, headers=user["headers"])
    error = assert_v1_error(response, 422, response.json()["error"]["code"])
    assert [d["field"] for d in error["details"]] == [field]
    assert (fake_ideogram.received, fake_dashscope.received) == ([], [])
    assert (await client.get("/v1/jobs", headers=user["headers"])).json()["items"] == []
    assert await credits(client, user["headers"]) == 20


async def test_rate_limits_and_brief_outages_are_retried_until_they_pass(client, user, fake_ideogram):
    fake_ideogram.fail_next(429, times=1, retry_after=0)
    fake_ideogram.fail_next(500, times=1)
    job = await run(client, user["headers"], "ideogram.generate", {"prompt": "patience"})
    assert job["status"] == "succeeded", job["error"]
    assert len(fake_ideogram.requests_to("generate")) == 3
    assert await credits(client, user["headers"]) == 19


async def test_a_lasting_outage_fails_as_provider_unavailable_after_the_retries(client, user, fake_dashscope):
    fake_dashscope.fail_next(500, times=10)
    job = await run(client, user["headers"], "qwen.generate", {"prompt": "down"})
    assert job["status"] == "failed"
    assert job["error"]["code"] == "provider_unavailable"
    assert len(fake_dashscope.requests_to("generation")) == 4
    assert await credits(client, user["headers"]) == 20


async def test_thirty_concurrent_ideogram_jobs_stay_under_the_in_flight_limit(client, user, fake_ideogram, sessions):
    await set_balance(sessions, user["id"], Decimal(30))
    fake_ideogram.set_latency(0.2)  # long enough that the calls overlap however slowly they arrive
    try:
        accepted = await asyncio.gather(
            *(
                client.post(
                    "/v1/jobs",
                    json={"operation": "ideogram.generate", "params": {"prompt": f"crowd {i}"}},
                    headers=user["headers"],
                )
                for i in range(30)
            )
        )
        assert [a.status_code for a in accepted] == [202] * 30
        jobs = [
            (await client.get(f"/v1/jobs/{a.json()['jobId']}", params={"wait": 30}, headers=user["headers"])).json()
            for a in accepted
        ]
    finally:
        fake_ideogram.set_latency(0)
    assert [j["status"] for j in jobs] == ["succeeded"] * 30
    assert fake_ideogram.peak_inflight_images <= IDEOGRAM_INFLIGHT_LIMIT
    assert fake_ideogram.peak_inflight_images == IDEOGRAM_INFLIGHT_LIMIT, "the pool's two actors use all of it"
    assert len(fake_ideogram.requests_to("generate")) == 30, "no request was refused for the in-flight limit"
