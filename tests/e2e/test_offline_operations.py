"""Every offline operation as a job, with uploaded images as its inputs."""

from __future__ import annotations

import io

import httpx
from PIL import Image, ImageDraw

from tests.e2e.helpers import assert_v1_error, bearer, signup


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def subject() -> Image.Image:
    """A red square on white: something to edit around."""
    image = Image.new("RGB", (96, 64), "white")
    ImageDraw.Draw(image).rectangle((32, 16, 63, 47), fill="red")
    return image


def mask_for(size: tuple[int, int]) -> Image.Image:
    """Black (edit) over the left third, white (keep) elsewhere."""
    mask = Image.new("L", size, 255)
    ImageDraw.Draw(mask).rectangle((0, 0, size[0] // 3 - 1, size[1] - 1), fill=0)
    return mask


async def upload(client: httpx.AsyncClient, headers: dict, image: Image.Image) -> str:
    response = await client.post("/v1/assets", content=png(image), headers={**headers, "Content-Type": "image/png"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def run(client: httpx.AsyncClient, headers: dict, operation: str, params: dict) -> dict:
    accepted = await client.post("/v1/jobs", json={"operation": operation, "params": params}, headers=headers)
    assert accepted.status_code == 202, accepted.text
    job = (await client.get(f"/v1/jobs/{accepted.json()['jobId']}", params={"wait": 30}, headers=headers)).json()
    assert job["status"] == "succeeded", job["error"]
    return job


async def output_of(client: httpx.AsyncClient, job: dict) -> Image.Image:
    [asset] = job["result"]["assets"]
    image = Image.open(io.BytesIO((await client.get(asset["url"])).content))
    assert image.size == (asset["width"], asset["height"])
    return image.convert("RGB")


async def credits(client: httpx.AsyncClient, headers: dict) -> float:
    return (await client.get("/v1/auth/me", headers=headers)).json()["credits"]


async def account(client) -> dict:
    return bearer((await signup(client))["accessToken"])


async def test_edit_repaints_only_the_black_area_of_the_mask(client):
    headers = await account(client)
    original = subject()
    image_id = await upload(client, headers, original)
    mask_id = await upload(client, headers, mask_for(original.size))

    result = await output_of(
        client, await run(client, headers, "offline.edit", {"image": image_id, "mask": mask_id, "prompt": "blue sky"})
    )

    assert result.size == original.size
    kept = (original.width // 3, 0, original.width, original.height)
    assert result.crop(kept).tobytes() == original.crop(kept).tobytes()
    assert (
        result.crop((0, 0, original.width // 3, original.height)).tobytes()
        != original.crop((0, 0, original.width // 3, original.height)).tobytes()
    )
    assert await credits(client, headers) == 19


async def test_a_mask_of_another_size_is_422_before_anything_is_charged(client):
    headers = await account(client)
    image_id = await upload(client, headers, subject())
    mask_id = await upload(client, headers, mask_for((50, 50)))
    response = await client.post(
        "/v1/jobs",
        json={"operation": "offline.edit", "params": {"image": image_id, "mask": mask_id, "prompt": "x"}},
        headers=headers,
    )
    error = assert_v1_error(response, 422, "invalid_input")
    assert [d["field"] for d in error["details"]] == ["params.mask"]
    assert await credits(client, headers) == 20


async def test_reframe_outpaints_to_the_new_size(client):
    headers = await account(client)
    image_id = await upload(client, headers, subject())
    job = await run(client, headers, "offline.reframe", {"image": image_id, "width": 200, "height": 100})
    assert (await output_of(client, job)).size == (200, 100)


async def test_replace_background_keeps_the_subject(client):
    headers = await account(client)
    image_id = await upload(client, headers, subject())
    result = await output_of(
        client, await run(client, headers, "offline.replace_background", {"image": image_id, "prompt": "green field"})
    )
    assert result.size == (96, 64)
    red, green, blue = result.getpixel((48, 32))
    assert red > 200 and green < 60 and blue < 60, "the red square is still there"


async def test_remix_blends_the_input_with_the_prompt(client):
    headers = await account(client)
    image_id = await upload(client, headers, subject())
    result = await output_of(
        client, await run(client, headers, "offline.remix", {"image": image_id, "prompt": "night", "image_weight": 80})
    )
    assert result.size == (96, 64)


async def test_upscale_by_four_costs_two_credits_and_quadruples_each_side(client):
    headers = await account(client)
    image_id = await upload(client, headers, subject())
    job = await run(client, headers, "offline.upscale", {"image": image_id, "factor": 4})
    assert (await output_of(client, job)).size == (384, 256)
    assert job["cost"] == 2
    assert await credits(client, headers) == 18


async def test_an_upscale_that_would_be_too_large_is_422(client):
    headers = await account(client)
    image_id = await upload(client, headers, Image.new("RGB", (2048, 2048), "grey"))
    response = await client.post(
        "/v1/jobs", json={"operation": "offline.upscale", "params": {"image": image_id, "factor": 4}}, headers=headers
    )
    assert_v1_error(response, 422, "invalid_input")
    bad_factor = await client.post(
        "/v1/jobs", json={"operation": "offline.upscale", "params": {"image": image_id, "factor": 3}}, headers=headers
    )
    assert_v1_error(bad_factor, 422, "invalid_input")


async def test_describe_answers_text_and_no_image_for_half_a_credit(client):
    headers = await account(client)
    image_id = await upload(client, headers, Image.new("RGB", (120, 80), "red"))
    job = await run(client, headers, "offline.describe", {"image": image_id})
    assert job["result"]["assets"] == []
    text = job["result"]["text"]
    assert "120" in text and "80" in text and "red" in text.lower()
    assert await credits(client, headers) == 19.5


async def test_another_users_or_a_deleted_asset_is_404_naming_the_param(client):
    owner = await account(client)
    stranger = await account(client)
    image_id = await upload(client, owner, subject())

    response = await client.post(
        "/v1/jobs", json={"operation": "offline.describe", "params": {"image": image_id}}, headers=stranger
    )
    error = assert_v1_error(response, 404, "not_found")
    assert [d["field"] for d in error["details"]] == ["params.image"]
    assert await credits(client, stranger) == 20
    assert (await client.get("/v1/jobs", headers=stranger)).json()["items"] == []

    assert (await client.delete(f"/v1/assets/{image_id}", headers=owner)).status_code == 204
    gone = await client.post(
        "/v1/jobs", json={"operation": "offline.describe", "params": {"image": image_id}}, headers=owner
    )
    assert_v1_error(gone, 404, "not_found")
    not_a_uuid = await client.post(
        "/v1/jobs", json={"operation": "offline.describe", "params": {"image": "abc"}}, headers=owner
    )
    assert_v1_error(not_a_uuid, 422, "invalid_input")
