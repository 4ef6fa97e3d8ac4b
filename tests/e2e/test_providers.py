"""Ideogram and Qwen operations end to end through the app, against the local fakes:
what the fake received, what was stored, what the job shows, and what was charged."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from decimal import Decimal

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.conftest import IDEOGRAM_INFLIGHT_LIMIT
from tests.e2e.helpers import bearer, set_balance, signup


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
    body = (await client.get(asset["url"])).content
    assert hashlib.sha256(body).hexdigest() == asset["sha256"]
    return Image.open(io.BytesIO(body))


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
    assert len(job["result"]["assets"]) == 2
    fake_ideogram.expire_urls()
    for asset in job["result"]["assets"]:
        assert (await fetch(client, asset)).format == "PNG", "outputs were copied at once, not linked"
    assert job["cost"] == 2
    assert await credits(client, user["headers"]) == 18


async def test_ideogram_generate_sends_reference_images_as_file_parts(client, user, fake_ideogram):
    style = png(colour="yellow")
    style_id = await upload(client, user["headers"], style)
    job = await run(
        client, user["headers"], "ideogram.generate", {"prompt": "in this style", "style_reference_images": [style_id]}
    )
    assert job["status"] == "succeeded", job["error"]
    [sent] = fake_ideogram.requests_to("generate")
    [part] = sent.files_named("style_reference_images")
    assert (part.data, part.content_type) == (style, "image/png")


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


@pytest.mark.parametrize(
    ("operation", "endpoint", "params", "file_field"),
    [
        ("ideogram.reframe", "reframe", {"resolution": "1312x736"}, "image"),
        ("ideogram.replace_background", "replace-background", {"prompt": "a beach"}, "image"),
        ("ideogram.remix", "remix", {"prompt": "at night", "image_weight": 70}, "image"),
        ("ideogram.upscale", "upscale", {"resemblance": 55}, "image_file"),
    ],
)
async def test_each_ideogram_image_operation_reaches_its_endpoint(
    client, user, fake_ideogram, operation, endpoint, params, file_field
):
    image = png()
    job = await run(
        client, user["headers"], operation, {"image": await upload(client, user["headers"], image), **params}
    )
    assert job["status"] == "succeeded", job["error"]
    [sent] = fake_ideogram.requests_to(endpoint)
    assert sent.file(file_field).data == image
    assert len(job["result"]["assets"]) == 1


async def test_ideogram_describe_stores_the_text_on_the_job(client, user, fake_ideogram):
    image_id = await upload(client, user["headers"], png())
    job = await run(client, user["headers"], "ideogram.describe", {"image": image_id})
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["assets"] == [] and job["result"]["text"]
    assert await credits(client, user["headers"]) == 19.5


async def test_qwen_generate_and_edit_send_the_dashscope_bodies(client, user, fake_dashscope):
    made = await run(client, user["headers"], "qwen.generate", {"prompt": "a koi pond", "size": "1664*928", "seed": 3})
    assert made["status"] == "succeeded", made["error"]
    [asset] = made["result"]["assets"]
    assert (asset["width"], asset["height"]) == (1664, 928)
    [sent] = fake_dashscope.requests_to("generation")
    assert sent.json["model"] == "qwen-image"
    assert sent.json["parameters"]["size"] == "1664*928"
    assert sent.headers["authorization"] == f"Bearer {fake_dashscope.api_key}"

    image = png()
    edited = await run(
        client, user["headers"], "qwen.edit", {"image": await upload(client, user["headers"], image), "prompt": "snow"}
    )
    assert edited["status"] == "succeeded", edited["error"]
    body = fake_dashscope.requests_to("generation")[-1].json
    assert body["model"] == "qwen-image-edit"
    parts = body["input"]["messages"][0]["content"]
    image_part = next(p["image"] for p in parts if "image" in p)
    assert base64.b64decode(image_part.split(",", 1)[1]) == image
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
    fake_ideogram.set_latency(0.05)
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
    assert len(fake_ideogram.requests_to("generate")) == 30, "no request was refused for the in-flight limit"
