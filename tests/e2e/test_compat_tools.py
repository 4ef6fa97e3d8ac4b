"""The daygen frontend's older per-tool routes (`/api/ideogram/*`, `/api/qwen/*`), through the real
app against the local provider fakes: what the fake received, what was answered, stored and charged."""

from __future__ import annotations

import io
import json
from base64 import b64decode
from decimal import Decimal

import httpx
import pytest
from PIL import Image

from tests.e2e.helpers import assert_api_error, bearer, set_balance, signup
from tests.e2e.test_providers import credits, mask_png, png


@pytest.fixture(autouse=True)
def fresh_fakes(fake_ideogram, fake_dashscope):
    fake_ideogram.reset()
    fake_dashscope.reset()


@pytest.fixture
async def user(client) -> dict:
    account = await signup(client)
    return {"headers": bearer(account["accessToken"]), "id": account["user"]["id"]}


@pytest.fixture
async def headers(user) -> dict:
    return user["headers"]


def png_file(data: bytes, name: str = "image.png") -> tuple[str, bytes, str]:
    return (name, data, "image/png")


async def gallery(client: httpx.AsyncClient, headers: dict) -> dict:
    response = await client.get("/api/r2files", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def downloaded(client: httpx.AsyncClient, url: str) -> Image.Image:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


async def assert_outputs_stored(client: httpx.AsyncClient, headers: dict, urls: list[str], operation: str) -> None:
    """Each URL downloads a stored image that the gallery lists as made by `operation`, at its size."""
    files = {f["fileUrl"]: f for f in (await gallery(client, headers))["items"]}
    for url in urls:
        assert not url.startswith("data:")
        response = await client.get(url)
        assert response.status_code == 200, response.text
        image = Image.open(io.BytesIO(response.content))
        assert image.format == "PNG"
        listed = files[url]
        assert listed["model"] == operation
        assert (listed["fileSize"], listed["mimeType"]) == (len(response.content), "image/png")
        assert (listed["width"], listed["height"]) == image.size


async def assert_nothing_kept(client: httpx.AsyncClient, headers: dict) -> None:
    assert (await gallery(client, headers))["totalCount"] == 0, "no upload was kept"
    assert await credits(client, headers) == 20, "no credit was spent"


# -- every route's success ------------------------------------------------------------------


async def test_generate_form_sends_the_fields_and_references_and_answers_storage_urls(client, headers, fake_ideogram):
    styles = [png(colour="yellow"), png(colour="blue")]
    response = await client.post(
        "/api/ideogram/generate",
        data={
            "prompt": "a lighthouse",
            "aspect_ratio": "16:9",
            "num_images": "2",
            "seed": "5",
            "rendering_speed": "TURBO",
            "magic_prompt": "",
            "somethingElse": "ignored",
        },
        files=[("style_reference_images", png_file(s, f"s{i}.png")) for i, s in enumerate(styles)],
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"dataUrls", "mimeType"} and body["mimeType"] == "image/png"
    [sent] = fake_ideogram.requests_to("generate")
    assert sent.fields == {
        "prompt": "a lighthouse",
        "aspect_ratio": "16x9",
        "num_images": "2",
        "seed": "5",
        "rendering_speed": "TURBO",
    }
    assert [f.data for f in sent.files_named("style_reference_images")] == styles
    assert len(body["dataUrls"]) == 2
    fake_ideogram.expire_urls()
    assert [(await downloaded(client, url)).size for url in body["dataUrls"]] == [(256, 144)] * 2
    await assert_outputs_stored(client, headers, body["dataUrls"], "ideogram.generate")
    assert await credits(client, headers) == 18


async def test_generate_takes_a_json_body_too(client, headers, fake_ideogram):
    response = await client.post(
        "/api/ideogram/generate",
        json={"prompt": "a koi", "aspect_ratio": "1x1", "style_type": "DESIGN", "negative_prompt": None, "x": 1},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    [sent] = fake_ideogram.requests_to("generate")
    assert (sent.fields["aspect_ratio"], sent.fields["style_type"]) == ("1x1", "DESIGN")
    assert "negative_prompt" not in sent.fields
    [url] = response.json()["dataUrls"]
    await assert_outputs_stored(client, headers, [url], "ideogram.generate")


async def test_edit_sends_the_uploaded_image_and_mask_and_answers_the_edited_image(client, headers, fake_ideogram):
    image, mask = png(), mask_png()
    response = await client.post(
        "/api/ideogram/edit",
        data={"prompt": "a blue door", "rendering_speed": "QUALITY", "seed": "7", "num_images": "1"},
        files={"image": png_file(image), "mask": png_file(mask, "mask.png")},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    [sent] = fake_ideogram.requests_to("edit")
    assert (sent.file("image").data, sent.file("mask").data) == (image, mask)
    assert (sent.fields["prompt"], sent.fields["rendering_speed"], sent.fields["seed"]) == (
        "a blue door",
        "QUALITY",
        "7",
    )
    [url] = response.json()["dataUrls"]
    assert (await downloaded(client, url)).size == (80, 60)
    await assert_outputs_stored(client, headers, [url], "ideogram.edit")
    uploads = [f for f in (await gallery(client, headers))["items"] if f["jobId"] is None]
    assert len(uploads) == 2, "the image and the mask are kept as the caller's uploads"


@pytest.mark.parametrize(
    ("route", "operation", "fields", "endpoint", "file_field", "size", "cost"),
    [
        (
            "reframe",
            "ideogram.reframe",
            {"resolution": "1312x736", "num_images": "1"},
            "reframe",
            "image",
            (1312, 736),
            1,
        ),
        (
            "replace-background",
            "ideogram.replace_background",
            {"prompt": "a beach", "magic_prompt": "OFF"},
            "replace-background",
            "image",
            (80, 60),
            1,
        ),
        ("upscale", "ideogram.upscale", {"resemblance": "55", "detail": "70"}, "upscale", "image_file", (160, 120), 2),
    ],
)
async def test_each_image_tool_reaches_its_endpoint_with_the_uploaded_image(
    client, headers, fake_ideogram, route, operation, fields, endpoint, file_field, size, cost
):
    image = png()
    response = await client.post(
        f"/api/ideogram/{route}", data=fields, files={"image": png_file(image)}, headers=headers
    )
    assert response.status_code == 200, response.text
    [sent] = fake_ideogram.requests_to(endpoint)
    assert sent.file(file_field).data == image
    # Upscale's options travel as one JSON field (test_upscale_passes_its_options_in_the_image_request).
    sent_fields = json.loads(sent.fields["image_request"]) if endpoint == "upscale" else sent.fields
    assert {name: str(sent_fields.get(name)) for name in fields} == fields
    [url] = response.json()["dataUrls"]
    assert (await downloaded(client, url)).size == size
    await assert_outputs_stored(client, headers, [url], operation)
    assert await credits(client, headers) == 20 - cost


async def test_upscale_passes_its_options_in_the_image_request(client, headers, fake_ideogram):
    response = await client.post(
        "/api/ideogram/upscale",
        data={"resemblance": "55", "detail": "70", "prompt": "sharper"},
        files={"image": png_file(png())},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    [sent] = fake_ideogram.requests_to("upscale")
    request = json.loads(sent.fields["image_request"])
    assert (request["resemblance"], request["detail"], request["prompt"]) == (55, 70, "sharper")


async def test_describe_sends_the_uploaded_image_and_answers_the_descriptions(client, headers, fake_ideogram):
    image = png()
    response = await client.post(
        "/api/ideogram/describe", data={"model_version": "V_2"}, files={"image": png_file(image)}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"descriptions": [{"text": "A solid-colour image, 80 by 60 pixels."}]}
    [sent] = fake_ideogram.requests_to("describe")
    assert sent.fields == {"describe_model_version": "V_2"}
    assert (sent.file("image_file").data, sent.file("image_file").content_type) == (image, "image/png")
    assert [f["jobId"] for f in (await gallery(client, headers))["items"]] == [None], "only the upload, no output"
    assert await credits(client, headers) == 19.5


async def test_qwen_image_sends_the_options_and_answers_url_and_usage(client, headers, fake_dashscope):
    response = await client.post(
        "/api/qwen/image",
        json={
            "prompt": "a koi pond",
            "size": "1664*928",
            "seed": 3,
            "negative_prompt": "blur",
            "prompt_extend": False,
            "watermark": False,
            "model": "qwen-image",
        },
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"dataUrl", "contentType", "usage"} and body["contentType"] == "image/png"
    assert body["usage"] == {"image_count": 1, "width": 1664, "height": 928}
    [sent] = fake_dashscope.requests_to("generation")
    assert sent.json["model"] == "qwen-image"
    assert sent.json["input"] == {"messages": [{"role": "user", "content": [{"text": "a koi pond"}]}]}
    params = sent.json["parameters"]
    assert (params["size"], params["seed"], params["negative_prompt"]) == ("1664*928", 3, "blur")
    assert (params["prompt_extend"], params["watermark"]) == (False, False)
    assert (await downloaded(client, body["dataUrl"])).size == (1664, 928)
    await assert_outputs_stored(client, headers, [body["dataUrl"]], "qwen.generate")
    assert await credits(client, headers) == 19


async def test_qwen_image_edit_sends_the_uploaded_image(client, headers, fake_dashscope):
    image = png()
    response = await client.post(
        "/api/qwen/image-edit",
        data={"prompt": "snow", "seed": "4", "watermark": "false", "negative_prompt": ""},
        files={"image": png_file(image)},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"] == {"image_count": 1, "width": 80, "height": 60}
    [sent] = fake_dashscope.requests_to("generation")
    assert sent.json["model"] == "qwen-image-edit"
    assert (sent.json["parameters"]["seed"], sent.json["parameters"]["watermark"]) == (4, False)
    parts = sent.json["input"]["messages"][0]["content"]
    assert b64decode(next(p["image"] for p in parts if "image" in p).split(",", 1)[1]) == image
    assert [p["text"] for p in parts if "text" in p] == ["snow"]
    assert (await downloaded(client, body["dataUrl"])).size == (80, 60)
    await assert_outputs_stored(client, headers, [body["dataUrl"]], "qwen.edit")


# -- refusals -------------------------------------------------------------------------------


async def test_a_missing_file_is_422_naming_it_and_keeps_nothing(client, headers, fake_ideogram):
    response = await client.post(
        "/api/ideogram/edit", data={"prompt": "a door"}, files={"image": png_file(png())}, headers=headers
    )
    assert "'mask'" in assert_api_error(response, 422)["message"]
    response = await client.post("/api/qwen/image-edit", data={"prompt": "snow"}, headers=headers)
    assert "'image'" in assert_api_error(response, 422)["message"]
    assert fake_ideogram.received == []
    await assert_nothing_kept(client, headers)


@pytest.mark.parametrize(
    ("fields", "named"),
    [({"num_images": "99"}, "num_images"), ({"rendering_speed": "FAST"}, "rendering_speed"), ({}, "resolution")],
)
async def test_bad_params_are_422_naming_the_field_before_anything_is_stored(
    client, headers, fake_ideogram, fields, named
):
    response = await client.post(
        "/api/ideogram/reframe",
        data={"resolution": "1312x736", **fields} if fields else {},
        files={"image": png_file(png())},
        headers=headers,
    )
    assert named in assert_api_error(response, 422)["message"]
    assert fake_ideogram.received == []
    await assert_nothing_kept(client, headers)


async def test_describe_names_a_bad_model_version_as_sent(client, headers):
    response = await client.post(
        "/api/ideogram/describe", data={"model_version": "V_9"}, files={"image": png_file(png())}, headers=headers
    )
    assert "model_version" in assert_api_error(response, 422)["message"]
    await assert_nothing_kept(client, headers)


async def test_a_file_that_is_not_an_image_is_415_and_earlier_uploads_go_too(client, headers, fake_ideogram):
    text = ("notes.txt", b"hello, I am a PNG honestly", "image/png")
    response = await client.post("/api/qwen/image-edit", data={"prompt": "x"}, files={"image": text}, headers=headers)
    assert_api_error(response, 415)
    response = await client.post(
        "/api/ideogram/edit", data={"prompt": "x"}, files={"image": png_file(png()), "mask": text}, headers=headers
    )
    assert_api_error(response, 415)
    assert fake_ideogram.received == []
    await assert_nothing_kept(client, headers)


async def test_a_mask_of_another_size_is_422_and_keeps_nothing(client, headers, fake_ideogram):
    response = await client.post(
        "/api/ideogram/edit",
        data={"prompt": "a door"},
        files={"image": png_file(png()), "mask": png_file(mask_png((40, 30)))},
        headers=headers,
    )
    assert "mask" in assert_api_error(response, 422)["message"]
    assert fake_ideogram.received == []
    await assert_nothing_kept(client, headers)


async def test_without_credits_it_is_402_and_keeps_no_upload(client, user, sessions, fake_dashscope):
    await set_balance(sessions, user["id"], Decimal(0))
    response = await client.post(
        "/api/qwen/image-edit", data={"prompt": "snow"}, files={"image": png_file(png())}, headers=user["headers"]
    )
    assert_api_error(response, 402)
    assert (await gallery(client, user["headers"]))["totalCount"] == 0
    assert fake_dashscope.received == []


async def test_no_token_or_a_bad_token_is_401(client, fake_ideogram):
    for headers in ({}, bearer("not-a-token")):
        response = await client.post(
            "/api/ideogram/reframe",
            data={"resolution": "1312x736"},
            files={"image": png_file(png())},
            headers=headers,
        )
        assert_api_error(response, 401)
        assert_api_error(await client.post("/api/qwen/image", json={"prompt": "x"}, headers=headers), 401)
    assert fake_ideogram.received == []


async def test_a_json_body_on_a_multipart_route_is_415(client, headers):
    response = await client.post("/api/ideogram/edit", json={"prompt": "x", "image": "abc"}, headers=headers)
    assert "multipart/form-data" in assert_api_error(response, 415)["message"]
    response = await client.post(
        "/api/qwen/image", content=b"prompt=x", headers={**headers, "Content-Type": "text/plain"}
    )
    assert_api_error(response, 415)
    assert_api_error(
        await client.post("/api/qwen/image", content=b"{", headers={**headers, "Content-Type": "application/json"}),
        400,
    )
    await assert_nothing_kept(client, headers)


# -- failed jobs ----------------------------------------------------------------------------


async def test_an_upstream_safety_refusal_is_422_and_releases_the_credit(client, headers, fake_ideogram):
    fake_ideogram.fail_next(422, endpoint="generate")
    response = await client.post("/api/ideogram/generate", data={"prompt": "refused"}, headers=headers)
    assert "safety" in assert_api_error(response, 422)["message"]
    assert len(fake_ideogram.requests_to("generate")) == 1
    assert await credits(client, headers) == 20


@pytest.mark.parametrize("status", [401, 402])
async def test_an_upstream_that_refuses_our_key_or_account_is_503_and_releases_the_credit(
    client, headers, fake_ideogram, status
):
    fake_ideogram.fail_next(status, endpoint="edit")
    response = await client.post(
        "/api/ideogram/edit",
        data={"prompt": "a door"},
        files={"image": png_file(png()), "mask": png_file(mask_png())},
        headers=headers,
    )
    body = assert_api_error(response, 503)
    assert fake_ideogram.api_key not in body["message"]
    assert await credits(client, headers) == 20


async def test_a_lasting_upstream_outage_is_502(client, headers, fake_dashscope):
    fake_dashscope.fail_next(500, times=10)
    response = await client.post("/api/qwen/image", json={"prompt": "down"}, headers=headers)
    assert_api_error(response, 502)
    assert await credits(client, headers) == 20


async def test_a_job_still_running_after_the_wait_is_504_naming_it_and_goes_on(client, headers, fake_ideogram):
    fake_ideogram.hang_next(endpoint="generate")
    response = await client.post("/api/ideogram/generate", params={"wait": 1}, data={"prompt": "slow"}, headers=headers)
    message = assert_api_error(response, 504)["message"]
    job_id = message.split()[1]
    assert f"/api/jobs/{job_id}" in message
    fake_ideogram.release_hung()
    job = (await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers)).json()
    assert job["status"] == "succeeded", job["error"]
    polled = (await client.get(f"/api/jobs/{job_id}", headers=headers)).json()
    assert polled["status"] == "COMPLETED" and polled["resultUrl"]
    assert await credits(client, headers) == 19


async def test_the_wait_is_bounded(client, headers):
    for wait in ("0", "121", "soon"):
        response = await client.post(
            "/api/ideogram/generate", params={"wait": wait}, data={"prompt": "x"}, headers=headers
        )
        assert_api_error(response, 422)
    await assert_nothing_kept(client, headers)
