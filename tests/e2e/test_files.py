"""/files serves local storage the way a CDN would; private assets need a valid, unexpired signature."""

from __future__ import annotations

import hashlib
import time
from email.utils import parsedate_to_datetime

import pytest

from serve_app import signing
from tests.e2e.helpers import api_without_actors, assert_v1_error, bearer, signup, user_headers
from tests.images import encoded


@pytest.fixture
async def stored(client) -> tuple[dict, bytes]:
    """An uploaded PNG of a few kilobytes: its asset body and its bytes."""
    headers = await user_headers(client)
    data = encoded("PNG", (120, 90), "crimson")
    response = await client.post("/v1/assets", content=data, headers={**headers, "Content-Type": "image/png"})
    return response.json(), data


async def test_whole_file_has_every_cdn_header(client, stored):
    asset, data = stored
    response = await client.get(asset["url"])
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert int(response.headers["content-length"]) == len(data)
    assert parsedate_to_datetime(response.headers["last-modified"]).tzinfo is not None


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-9", 0, 9), ("bytes=10-", 10, None), ("bytes=-16", -16, None), ("bytes=5-100000000", 5, None)],
)
async def test_a_single_range_is_206_with_content_range(client, stored, header, start, end):
    asset, data = stored
    response = await client.get(asset["url"], headers={"Range": header})
    first = start % len(data)
    last = len(data) - 1 if end is None else end
    assert response.status_code == 206
    assert response.content == data[first : last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
    assert int(response.headers["content-length"]) == last - first + 1


async def test_an_unsatisfiable_range_is_416_naming_the_size(client, stored):
    asset, data = stored
    response = await client.get(asset["url"], headers={"Range": f"bytes={len(data)}-"})
    assert_v1_error(response, 416, "range_not_satisfiable")
    assert response.headers["content-range"] == f"bytes */{len(data)}"


async def test_several_or_malformed_ranges_get_the_whole_file(client, stored):
    asset, data = stored
    for header in ("bytes=0-1,4-5", "bytes=abc", "lines=1-2", "bytes=9-3"):
        response = await client.get(asset["url"], headers={"Range": header})
        assert (response.status_code, response.content) == (200, data), header


async def test_if_none_match_with_the_etag_is_304_without_a_body(client, stored):
    asset, _ = stored
    etag = (await client.get(asset["url"])).headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = await client.get(asset["url"], headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == etag
    assert (await client.get(asset["url"], headers={"If-None-Match": '"other"'})).status_code == 200


async def test_head_answers_the_headers_without_the_body(client, stored):
    asset, data = stored
    response = await client.head(asset["url"])
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) == len(data)


@pytest.fixture
async def private_app(settings):
    """The same database and store, served with private_assets on, in-process."""
    private = settings.model_copy(update={"private_assets": True, "signed_url_ttl_seconds": 120})
    async with api_without_actors(private) as (app_client, services):
        yield app_client, services


async def test_private_assets_get_expiring_signed_urls(private_app):
    app_client, _ = private_app
    account = await signup(app_client)
    data = encoded("PNG", (16, 16), "black")
    asset = (
        await app_client.post(
            "/v1/assets", content=data, headers={**bearer(account["accessToken"]), "Content-Type": "image/png"}
        )
    ).json()
    assert "signature=" in asset["url"] and "expires=" in asset["url"]
    response = await app_client.get(asset["url"])
    assert response.status_code == 200 and response.content == data
    assert response.headers["cache-control"] == "private, max-age=120"


async def test_a_wrong_missing_or_expired_signature_is_403(private_app, stored):
    app_client, services = private_app
    asset, _ = stored
    path = "/files/" + asset["url"].split("/files/", 1)[1]
    key = path.removeprefix("/files/")
    past = signing.signed_query(services.files_secret, key, time.time() - 3600, 60)
    forged = signing.signed_query(b"not the secret", key, time.time(), 60)
    for url in (path, f"{path}?{past}", f"{path}?{forged}", f"{path}?expires=9999999999&signature=abc"):
        assert_v1_error(await app_client.get(url), 403, "forbidden")
    good = signing.signed_query(services.files_secret, key, time.time(), 60)
    assert (await app_client.get(f"{path}?{good}")).status_code == 200
