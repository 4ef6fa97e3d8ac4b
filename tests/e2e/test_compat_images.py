"""The daygen frontend's generation calls: `POST /api/image/{provider}` and `GET /api/jobs`,
through the real app against the local provider fakes."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.conftest import IDEOGRAM_RUNNING_JOBS
from tests.e2e.helpers import assert_api_error, bearer, signup


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
async def headers(client) -> dict:
    return bearer((await signup(client))["accessToken"])


async def upload(client: httpx.AsyncClient, headers: dict, data: bytes) -> dict:
    response = await client.post("/v1/assets", content=data, headers={**headers, "Content-Type": "image/png"})
    assert response.status_code == 201, response.text
    return response.json()


async def submit(client: httpx.AsyncClient, headers: dict, provider: str, body: dict) -> str:
    response = await client.post(f"/api/image/{provider}", json=body, headers=headers)
    assert response.status_code == 202, response.text
    assert set(response.json()) == {"jobId"}
    return response.json()["jobId"]


async def finished(client: httpx.AsyncClient, headers: dict, job_id: str) -> dict:
    """Wait for the end through /v1's long poll, then read the job the way the frontend does."""
    waited = await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers)
    assert waited.status_code == 200, waited.text
    response = await client.get(f"/api/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_ideogram_generate_merges_top_level_options_and_completes(client, headers, fake_ideogram):
    job_id = await submit(
        client,
        headers,
        "ideogram",
        {
            "prompt": "a lighthouse",
            "model": "ideogram-v3",
            "providerOptions": {"aspect_ratio": "1:1", "rendering_speed": "TURBO", "not_an_option": True},
            "aspect_ratio": "16:9",
            "seed": 5,
            "somethingElse": "ignored",
        },
    )
    job = await finished(client, headers, job_id)
    assert job["status"] == "COMPLETED", job["error"]
    assert set(job) == {"id", "status", "progress", "resultUrl", "error", "createdAt", "completedAt", "metadata"}
    assert job["id"] == job_id and job["error"] is None and job["completedAt"]
    [sent] = fake_ideogram.requests_to("generate")
    assert sent.fields["prompt"] == "a lighthouse"
    assert (sent.fields["aspect_ratio"], sent.fields["rendering_speed"]) == ("16x9", "TURBO")
    assert job["metadata"]["operation"] == "ideogram.generate"
    assert job["metadata"]["params"]["seed"] == 5
    assert "not_an_option" not in job["metadata"]["params"]
    assert job["metadata"]["assets"] == [job["resultUrl"]]
    fake_ideogram.expire_urls()
    result = await client.get(job["resultUrl"])
    assert result.status_code == 200
    assert Image.open(io.BytesIO(result.content)).format == "PNG"


async def test_qwen_generate(client, headers, fake_dashscope):
    job_id = await submit(client, headers, "qwen", {"prompt": "a koi pond", "size": "1664*928", "style": "x"})
    job = await finished(client, headers, job_id)
    assert job["status"] == "COMPLETED", job["error"]
    [sent] = fake_dashscope.requests_to("generation")
    assert sent.json["model"] == "qwen-image"
    assert sent.json["parameters"]["size"] == "1664*928"
    image = Image.open(io.BytesIO((await client.get(job["resultUrl"])).content))
    assert image.size == (1664, 928)


async def test_qwen_with_a_reference_url_is_an_edit(client, headers, fake_dashscope):
    image = png()
    asset = await upload(client, headers, image)
    job_id = await submit(client, headers, "qwen", {"prompt": "snow", "references": [asset["url"]]})
    job = await finished(client, headers, job_id)
    assert job["status"] == "COMPLETED", job["error"]
    assert job["metadata"]["operation"] == "qwen.edit"
    assert job["metadata"]["params"]["image"] == asset["id"]
    body = fake_dashscope.requests_to("generation")[-1].json
    assert body["model"] == "qwen-image-edit"


async def test_ideogram_edit_with_mask_and_reference_asset_ids(client, headers, fake_ideogram):
    image, mask = png(), mask_png()
    image_asset, mask_asset = await upload(client, headers, image), await upload(client, headers, mask)
    job_id = await submit(
        client,
        headers,
        "ideogram",
        {"prompt": "a blue door", "references": [image_asset["id"]], "mask": mask_asset["id"], "jobType": "IMAGE_EDIT"},
    )
    job = await finished(client, headers, job_id)
    assert job["status"] == "COMPLETED", job["error"]
    assert job["metadata"]["operation"] == "ideogram.edit"
    [sent] = fake_ideogram.requests_to("edit")
    assert (sent.file("image").data, sent.file("mask").data) == (image, mask)


async def test_ideogram_edit_with_a_data_url_mask_and_an_asset_url(client, headers, fake_ideogram):
    image, mask = png(), mask_png()
    image_asset = await upload(client, headers, image)
    data_url = "data:image/png;base64," + base64.b64encode(mask).decode()
    job_id = await submit(
        client, headers, "ideogram", {"prompt": "a door", "imageUrl": image_asset["url"], "mask": data_url}
    )
    job = await finished(client, headers, job_id)
    assert job["status"] == "COMPLETED", job["error"]
    [sent] = fake_ideogram.requests_to("edit")
    assert (sent.file("image").data, sent.file("mask").data) == (image, mask)


async def test_resize_is_a_reframe(client, headers, fake_ideogram):
    asset = await upload(client, headers, png())
    job_id = await submit(
        client,
        headers,
        "ideogram",
        {"prompt": "", "references": [asset["id"]], "jobType": "IMAGE_RESIZE", "resolution": "1312x736"},
    )
    job = await finished(client, headers, job_id)
    assert job["status"] == "COMPLETED", job["error"]
    assert job["metadata"]["operation"] == "ideogram.reframe"
    assert len(fake_ideogram.requests_to("reframe")) == 1


async def downloaded(client: httpx.AsyncClient, url: str) -> Image.Image:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


async def test_recreate_image_is_a_remix_of_the_first_reference(client, headers, fake_ideogram):
    image = png(size=(96, 64))
    asset = await upload(client, headers, image)
    job_id = await submit(
        client,
        headers,
        "ideogram",
        {"prompt": "the same, at dusk", "references": [asset["id"]], "jobType": "RECREATE_IMAGE", "image_weight": 30},
    )
    job = await finished(client, headers, job_id)
    assert job["status"] == "COMPLETED", job["error"]
    assert job["metadata"]["operation"] == "ideogram.remix"
    assert job["metadata"]["params"]["image"] == asset["id"]
    [sent] = fake_ideogram.requests_to("remix")
    assert sent.file("image").data == image
    assert (sent.fields["prompt"], sent.fields["image_weight"]) == ("the same, at dusk", "30")
    assert (await downloaded(client, job["resultUrl"])).size == (96, 64)


async def test_an_image_url_alone_is_a_remix_of_it(client, headers, fake_ideogram):
    image = png()
    asset = await upload(client, headers, image)
    job_id = await submit(client, headers, "ideogram", {"prompt": "as a poster", "imageUrl": asset["url"]})
    job = await finished(client, headers, job_id)
    assert job["status"] == "COMPLETED", job["error"]
    assert job["metadata"]["operation"] == "ideogram.remix"
    [sent] = fake_ideogram.requests_to("remix")
    assert (sent.file("image").data, sent.fields["prompt"]) == (image, "as a poster")
    assert fake_ideogram.requests_to("generate") == []


async def test_references_on_a_plain_generate_are_style_references(client, headers, fake_ideogram):
    styles = [png(colour="yellow"), png(size=(40, 40), colour="blue")]
    first, second = [await upload(client, headers, s) for s in styles]
    job_id = await submit(
        client, headers, "ideogram", {"prompt": "a kite in these styles", "references": [first["id"], second["url"]]}
    )
    job = await finished(client, headers, job_id)
    assert job["status"] == "COMPLETED", job["error"]
    assert job["metadata"]["operation"] == "ideogram.generate"
    assert job["metadata"]["params"]["style_reference_images"] == [first["id"], second["id"]]
    [sent] = fake_ideogram.requests_to("generate")
    assert [p.data for p in sent.files_named("style_reference_images")] == styles
    assert sent.files_named("character_reference_images") == []
    assert (await downloaded(client, job["resultUrl"])).size == (256, 256)


async def test_a_mask_with_a_reference_is_an_edit_even_without_a_job_type(client, headers, fake_ideogram):
    image, mask = png(), mask_png()
    image_asset, mask_asset = await upload(client, headers, image), await upload(client, headers, mask)
    body = {"prompt": "a red door", "references": [image_asset["id"]], "mask": mask_asset["url"]}
    job_id = await submit(client, headers, "ideogram", body)
    job = await finished(client, headers, job_id)
    assert job["status"] == "COMPLETED", job["error"]
    assert job["metadata"]["operation"] == "ideogram.edit"
    [sent] = fake_ideogram.requests_to("edit")
    assert (sent.file("image").data, sent.file("mask").data, sent.fields["prompt"]) == (image, mask, "a red door")
    assert (await downloaded(client, job["resultUrl"])).size == (80, 60)


async def status_of(client: httpx.AsyncClient, headers: dict, job_id: str) -> dict:
    response = await client.get(f"/api/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def cancel(client: httpx.AsyncClient, headers: dict, job_id: str) -> None:
    response = await client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert response.status_code in (200, 202), response.text


async def test_the_frontend_sees_pending_processing_and_cancelled(client, headers, fake_ideogram):
    fake_ideogram.hang_next(times=IDEOGRAM_RUNNING_JOBS, endpoint="generate")
    try:
        running = [
            await submit(client, headers, "ideogram", {"prompt": f"slow {i}"}) for i in range(IDEOGRAM_RUNNING_JOBS)
        ]
        await asyncio.to_thread(fake_ideogram.wait_until_hung, 1)
        # Every Ideogram slot of the dispatcher holds one of those, so this one waits its turn.
        waiting = await submit(client, headers, "ideogram", {"prompt": "queued"})

        pending = await status_of(client, headers, waiting)
        assert (pending["status"], pending["progress"], pending["resultUrl"]) == ("PENDING", 0, None)
        assert pending["completedAt"] is None
        processing = await status_of(client, headers, running[0])
        assert (processing["status"], processing["resultUrl"], processing["error"]) == ("PROCESSING", None, None)

        for job_id in [waiting, *running]:
            await cancel(client, headers, job_id)
            job = await finished(client, headers, job_id)
            assert (job["status"], job["resultUrl"]) == ("CANCELLED", None)
            assert job["completedAt"]
    finally:
        fake_ideogram.release_hung()
    listed = {j["id"]: j["status"] for j in (await client.get("/api/jobs", headers=headers)).json()["jobs"]}
    assert listed == dict.fromkeys([waiting, *running], "CANCELLED")
    assert (await client.get("/v1/auth/me", headers=headers)).json()["credits"] == 20


async def test_the_frontend_sees_a_failed_job_with_its_reason(client, headers, fake_ideogram):
    fake_ideogram.fail_next(422, endpoint="generate")
    job = await finished(client, headers, await submit(client, headers, "ideogram", {"prompt": "refused"}))
    assert (job["status"], job["resultUrl"], job["metadata"]["assets"]) == ("FAILED", None, [])
    assert "safety" in job["error"]
    assert job["completedAt"]
    assert (await client.get("/v1/auth/me", headers=headers)).json()["credits"] == 20


async def test_another_users_images_and_jobs_are_not_found(client, headers):
    other = bearer((await signup(client))["accessToken"])
    theirs = await upload(client, other, png())
    for ref in (theirs["id"], theirs["url"]):
        response = await client.post(
            "/api/image/qwen", json={"prompt": "mine now", "references": [ref]}, headers=headers
        )
        assert_api_error(response, 404)
    job_id = await submit(client, other, "qwen", {"prompt": "theirs"})
    assert_api_error(await client.get(f"/api/jobs/{job_id}", headers=headers), 404)
    assert (await client.get("/api/jobs", headers=headers)).json()["jobs"] == []


async def test_bad_requests_answer_in_the_api_shape(client, headers):
    assert_api_error(await client.post("/api/image/midjourney", json={"prompt": "x"}, headers=headers), 404)
    assert_api_error(await client.post("/api/image/ideogram", json={"aspect_ratio": "16:9"}, headers=headers), 422)
    assert_api_error(
        await client.post("/api/image/ideogram", json={"prompt": "x", "aspect_ratio": "7:5"}, headers=headers), 422
    )
    assert_api_error(
        await client.post(
            "/api/image/ideogram", json={"prompt": "x", "imageUrl": "https://elsewhere.example/a.png"}, headers=headers
        ),
        422,
    )
    assert_api_error(await client.post("/api/image/ideogram", json={"prompt": "x"}), 401)


async def test_list_pages_and_filters_by_provider(client, headers):
    ideogram = await submit(client, headers, "ideogram", {"prompt": "one"})
    qwen_ids = [await submit(client, headers, "qwen", {"prompt": p}) for p in ("two", "three")]
    for job_id in (ideogram, *qwen_ids):
        await finished(client, headers, job_id)
    first = (await client.get("/api/jobs", params={"limit": 2}, headers=headers)).json()
    assert [j["id"] for j in first["jobs"]] == qwen_ids[::-1]
    assert first["hasNextPage"] is True and first["nextCursor"]
    second = (await client.get("/api/jobs", params={"limit": 2, "cursor": first["nextCursor"]}, headers=headers)).json()
    assert [j["id"] for j in second["jobs"]] == [ideogram]
    assert (second["hasNextPage"], second["nextCursor"]) == (False, None)
    only_qwen = (await client.get("/api/jobs", params={"type": "qwen"}, headers=headers)).json()
    assert {j["id"] for j in only_qwen["jobs"]} == set(qwen_ids)
    by_operation = (await client.get("/api/jobs", params={"type": "ideogram.generate"}, headers=headers)).json()
    assert [j["id"] for j in by_operation["jobs"]] == [ideogram]
    assert all(j["status"] == "COMPLETED" and j["resultUrl"] for j in first["jobs"])
