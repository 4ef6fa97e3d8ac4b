"""Uploads and the asset library, as the studio and the daygen frontend use them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from storage.assets import prune_expired
from storage.models import Asset
from storage.objects import ObjectStore
from tests.e2e.helpers import assert_api_error, assert_v1_error, bearer, signup, user_headers
from tests.images import encoded, png_header_only

RAW = {"Content-Type": "application/octet-stream"}


async def upload(client, headers, data: bytes, content_type: str = "image/png"):
    return await client.post("/v1/assets", content=data, headers={**headers, "Content-Type": content_type})


def stored_path(settings, key: str) -> Path:
    return Path(settings.storage_url.removeprefix("file://")) / key


async def test_a_raw_png_upload_is_stored_verified_and_served(client):
    headers = await user_headers(client)
    data = encoded("PNG", (40, 30))

    response = await upload(client, headers, data)

    assert response.status_code == 201, response.text
    asset = response.json()
    assert asset["contentType"] == "image/png"
    assert (asset["size"], asset["width"], asset["height"]) == (len(data), 40, 30)
    assert asset["sha256"] == hashlib.sha256(data).hexdigest()
    assert asset["source"] == "upload" and asset["jobId"] is None
    download = await client.get(asset["url"])
    assert download.content == data
    assert (await client.get(f"/v1/assets/{asset['id']}", headers=headers)).json() == asset


async def test_multipart_uploads_take_the_file_part_and_ignore_other_fields(client):
    headers = await user_headers(client)
    data = encoded("JPEG", (64, 48))
    response = await client.post(
        "/v1/assets", data={"caption": "ignored"}, files={"file": ("photo.jpg", data, "image/jpeg")}, headers=headers
    )
    assert response.status_code == 201, response.text
    assert (response.json()["contentType"], response.json()["size"]) == ("image/jpeg", len(data))


async def test_the_type_comes_from_the_bytes_not_the_header(client):
    headers = await user_headers(client)
    webp = await upload(client, headers, encoded("WEBP"), "image/png")
    assert webp.status_code == 201 and webp.json()["contentType"] == "image/webp"
    for data, claimed in ((encoded("GIF"), "image/gif"), (b"hello, I am a PNG honestly", "image/png")):
        assert_v1_error(await upload(client, headers, data, claimed), 415, "unsupported_media_type")


async def test_empty_broken_and_bomb_images_are_422(client):
    headers = await user_headers(client)
    assert_v1_error(await upload(client, headers, b""), 422, "invalid_input")
    truncated = encoded("PNG", (200, 200), "blue")[:-40]
    assert_v1_error(await upload(client, headers, truncated), 422, "invalid_image")
    bomb = await upload(client, headers, png_header_only(100_000, 100_000))
    assert "pixels" in assert_v1_error(bomb, 422, "invalid_image")["message"]


async def test_a_declared_size_over_the_limit_is_413_before_the_body_is_sent(client, app_url, settings):
    token = (await user_headers(client))["Authorization"]
    host, port = app_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /v1/assets HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {settings.max_upload_bytes + 1024 * 1024}\r\n\r\n"
    )
    writer.write(head.encode() + b"\x89PNG\r\n\x1a\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    assert status_line.split()[1] == b"413"


async def test_a_streamed_upload_over_the_limit_is_413_and_leaves_nothing_behind(client, settings, sessions):
    account = await signup(client)
    headers = bearer(account["accessToken"])
    objects = Path(settings.storage_url.removeprefix("file://"))
    before = set((objects / "tmp").glob("*")) if (objects / "tmp").exists() else set()

    async def endless_png():
        yield b"\x89PNG\r\n\x1a\n"
        block = b"\0" * (1 << 20)
        for _ in range(settings.max_upload_bytes // len(block) + 2):
            yield block

    response = await client.post("/v1/assets", content=endless_png(), headers={**headers, **RAW})

    assert_v1_error(response, 413, "payload_too_large")
    after = set((objects / "tmp").glob("*")) if (objects / "tmp").exists() else set()
    assert after <= before
    async with sessions() as session:
        owned = (await session.execute(select(Asset).where(Asset.owner_id == uuid.UUID(account["user"]["id"])))).all()
    assert owned == []


async def test_same_bytes_twice_share_one_object_which_goes_with_the_last_row(client, settings):
    headers = await user_headers(client)
    data = encoded("PNG", (33, 33), "green")
    first = (await upload(client, headers, data)).json()
    second = (await upload(client, headers, data)).json()
    assert first["id"] != second["id"]
    assert first["url"] == second["url"]
    path = stored_path(settings, first["url"].split("/files/", 1)[1])

    assert (await client.delete(f"/v1/assets/{first['id']}", headers=headers)).status_code == 204
    assert path.exists(), "another live row still references the bytes"
    assert (await client.get(first["url"])).status_code == 200
    assert (await client.get(f"/v1/assets/{first['id']}", headers=headers)).status_code == 404

    assert (await client.delete(f"/v1/assets/{second['id']}", headers=headers)).status_code == 204
    assert not path.exists()
    assert (await client.get(second["url"])).status_code == 404
    assert (await client.delete(f"/v1/assets/{second['id']}", headers=headers)).status_code == 404


async def test_another_users_asset_is_404_and_stays(client):
    owner = await user_headers(client)
    stranger = await user_headers(client)
    asset = (await upload(client, owner, encoded("PNG", (10, 10), "purple"))).json()

    assert_v1_error(await client.get(f"/v1/assets/{asset['id']}", headers=stranger), 404, "not_found")
    assert_v1_error(await client.delete(f"/v1/assets/{asset['id']}", headers=stranger), 404, "not_found")
    assert (await client.get("/v1/assets", headers=stranger)).json() == {"items": [], "nextCursor": None}
    assert (await client.get(f"/v1/assets/{asset['id']}", headers=owner)).status_code == 200


async def test_the_library_pages_newest_first_and_filters_by_source_and_job(client):
    headers = await user_headers(client)
    uploads = [(await upload(client, headers, encoded("PNG", (8, 8 + i)))).json()["id"] for i in range(3)]
    job = await client.post(
        "/v1/jobs",
        json={"operation": "offline.generate", "params": {"prompt": "library", "width": 64, "height": 64}},
        headers=headers,
    )
    done = (await client.get(f"/v1/jobs/{job.json()['jobId']}", params={"wait": 30}, headers=headers)).json()
    [output] = done["result"]["assets"]

    first = (await client.get("/v1/assets", params={"limit": 2}, headers=headers)).json()
    assert [a["id"] for a in first["items"]] == [output["id"], uploads[2]]
    rest = (await client.get("/v1/assets", params={"limit": 2, "cursor": first["nextCursor"]}, headers=headers)).json()
    assert [a["id"] for a in rest["items"]] == [uploads[1], uploads[0]] and rest["nextCursor"] is None

    only_uploads = (await client.get("/v1/assets", params={"source": "upload"}, headers=headers)).json()
    assert [a["id"] for a in only_uploads["items"]] == uploads[::-1]
    by_job = (await client.get("/v1/assets", params={"jobId": done["id"]}, headers=headers)).json()
    assert [(a["id"], a["source"], a["jobId"]) for a in by_job["items"]] == [(output["id"], "job", done["id"])]
    assert (await client.get("/v1/assets", params={"source": "stolen"}, headers=headers)).status_code == 422


async def test_expired_assets_vanish_at_once_and_are_pruned_later(client, settings, sessions):
    headers = await user_headers(client)
    asset = (await upload(client, headers, encoded("PNG", (21, 21), "orange"))).json()
    async with sessions.begin() as session:
        await session.execute(
            update(Asset)
            .where(Asset.id == uuid.UUID(asset["id"]))
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )

    assert (await client.get(f"/v1/assets/{asset['id']}", headers=headers)).status_code == 404
    assert (await client.get("/v1/assets", headers=headers)).json()["items"] == []

    path = stored_path(settings, asset["url"].split("/files/", 1)[1])
    assert path.exists()
    await prune_expired(sessions, ObjectStore.from_settings(settings), datetime.now(UTC))
    assert not path.exists()
    async with sessions() as session:
        row = await session.get(Asset, uuid.UUID(asset["id"]))
    assert row.deleted_at is not None


async def test_assets_need_a_token(client):
    assert_v1_error(await client.get("/v1/assets"), 401, "not_authenticated")
    assert_v1_error(await upload(client, {}, encoded()), 401, "not_authenticated")


async def test_multipart_without_a_file_part_or_boundary_is_refused(client):
    headers = await user_headers(client)
    no_file = await client.post(
        "/v1/assets", data={"caption": "no file"}, files={"other": ("x", b"1")}, headers=headers
    )
    assert_v1_error(no_file, 422, "invalid_input")
    no_boundary = await client.post(
        "/v1/assets", content=b"--x\r\n", headers={**headers, "Content-Type": "multipart/form-data"}
    )
    assert_v1_error(no_boundary, 400, "malformed_body")


async def test_the_frontend_upload_routes_answer_storage_urls(client):
    headers = await user_headers(client)
    data = encoded("PNG", (12, 12), "teal")
    as_file = await client.post("/api/upload/file", files={"file": ("a.png", data, "image/png")}, headers=headers)
    assert as_file.status_code == 201, as_file.text
    body = as_file.json()
    assert body["success"] is True and body["mimeType"] == "image/png" and body["url"].startswith("http")

    encoded_png = base64.b64encode(encoded("PNG", (13, 13), "navy")).decode()
    for value in (encoded_png, "data:image/png;base64," + encoded_png):
        sent = await client.post(
            "/api/upload/base64", json={"base64Data": value, "mimeType": "image/png"}, headers=headers
        )
        assert sent.status_code == 201, sent.text
        assert (sent.json()["width"], sent.json()["height"]) == (13, 13)

    assert_api_error(await client.post("/api/upload/base64", json={"base64Data": "%%%"}, headers=headers), 422)
    assert_api_error(await client.post("/api/upload/file", content=data, headers={**headers, **RAW}), 422)

    gallery = (await client.get("/api/r2files", headers=headers)).json()
    assert (len(gallery["items"]), gallery["totalCount"], gallery["nextCursor"]) == (3, 3, None)
    oldest = gallery["items"][-1]
    assert (oldest["id"], oldest["fileUrl"], oldest["fileSize"]) == (body["id"], body["url"], body["size"])
    assert (oldest["prompt"], oldest["model"], oldest["jobId"], oldest["isPublic"]) == (None, None, None, True)

    assert (await client.delete(f"/api/r2files/{body['id']}", headers=headers)).status_code == 204
    assert_api_error(await client.delete(f"/api/r2files/{body['id']}", headers=headers), 404)
    assert (await client.get("/api/r2files", headers=headers)).json()["totalCount"] == 2


async def test_the_gallery_lists_job_outputs_with_their_prompt_and_pages_with_a_cursor(client):
    headers = await user_headers(client)
    upload_id = (await upload(client, headers, encoded("PNG", (9, 9), "gold"))).json()["id"]
    job = await client.post(
        "/v1/jobs",
        json={"operation": "offline.generate", "params": {"prompt": "a gallery piece", "width": 64, "height": 64}},
        headers=headers,
    )
    done = (await client.get(f"/v1/jobs/{job.json()['jobId']}", params={"wait": 30}, headers=headers)).json()

    first = (await client.get("/api/r2files", params={"limit": 1}, headers=headers)).json()
    [newest] = first["items"]
    assert (newest["jobId"], newest["prompt"], newest["model"]) == (done["id"], "a gallery piece", "offline.generate")
    assert newest["id"] == done["result"]["assets"][0]["id"] and first["totalCount"] == 2
    rest = (
        await client.get("/api/r2files", params={"limit": 1, "cursor": first["nextCursor"]}, headers=headers)
    ).json()
    assert [i["id"] for i in rest["items"]] == [upload_id] and rest["nextCursor"] is None

    stranger = await user_headers(client)
    assert (await client.get("/api/r2files", headers=stranger)).json() == {
        "items": [],
        "totalCount": 0,
        "nextCursor": None,
    }
    assert_api_error(await client.delete(f"/api/r2files/{upload_id}", headers=stranger), 404)
