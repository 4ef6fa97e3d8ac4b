"""`POST /v1/jobs/quote`: what a submit would hold, checked as the submit checks it, holding nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import jwt
import pytest
import yaml
from PIL import Image

from pipelines.operations import OPERATIONS
from tests.e2e.helpers import api_without_actors, assert_v1_error, bearer, set_balance, signup
from tests.e2e.test_offline_operations import upload
from tests.e2e.test_providers import credits

GENERATE = {"operation": "offline.generate", "params": {"prompt": "a quote", "width": 64, "height": 64}}
IDEOGRAM = {"operation": "ideogram.generate", "params": {"prompt": "three of them", "num_images": 3}}
CHAIN = {
    "steps": [
        {"operation": "offline.generate", "params": {"prompt": "a chain", "width": 64, "height": 64}},
        {"operation": "offline.upscale", "input": "previous", "params": {"factor": 2}},
        {"operation": "offline.describe", "input": "previous"},
    ]
}


@pytest.fixture
async def user(client) -> dict:
    created = await signup(client)
    return {"headers": bearer(created["accessToken"]), "id": created["user"]["id"]}


async def jobs_of(client, headers) -> list:
    return (await client.get("/v1/jobs", headers=headers)).json()["items"]


async def test_a_quote_prices_the_images_asked_for_and_holds_nothing(client, user):
    response = await client.post("/v1/jobs/quote", json=IDEOGRAM, headers=user["headers"])
    assert response.status_code == 200, response.text
    assert response.json() == {
        "credits": 3.0,
        "balance": 20.0,
        "enough": True,
        "steps": [
            {"operation": "ideogram.generate", "provider": "ideogram", "units": 3, "unitCredits": 1.0, "credits": 3.0}
        ],
    }
    assert await credits(client, user["headers"]) == 20, "nothing held"
    assert await jobs_of(client, user["headers"]) == [], "nothing queued"


async def test_a_chain_is_quoted_step_by_step_and_submitting_it_holds_exactly_the_quote(client, user):
    quoted = (await client.post("/v1/jobs/quote", json=CHAIN, headers=user["headers"])).json()
    assert [(s["operation"], s["credits"]) for s in quoted["steps"]] == [
        ("offline.generate", 1.0),
        ("offline.upscale", 2.0),
        ("offline.describe", 0.5),
    ]
    assert quoted["credits"] == 3.5
    submitted = await client.post("/v1/jobs", json=CHAIN, headers=user["headers"])
    assert submitted.status_code == 202, submitted.text
    url = f"/v1/jobs/{submitted.json()['jobId']}"
    job = (await client.get(url, params={"wait": 30}, headers=user["headers"])).json()
    assert job["status"] == "succeeded", job
    assert await credits(client, user["headers"]) == 20 - quoted["credits"]


async def test_a_quote_beyond_the_balance_is_answered_not_refused(client, sessions, user):
    await set_balance(sessions, user["id"], Decimal(2))
    quoted = await client.post("/v1/jobs/quote", json=IDEOGRAM, headers=user["headers"])
    assert quoted.status_code == 200, quoted.text
    assert (quoted.json()["credits"], quoted.json()["balance"], quoted.json()["enough"]) == (3.0, 2.0, False)
    assert_v1_error(await client.post("/v1/jobs", json=IDEOGRAM, headers=user["headers"]), 402, "insufficient_credits")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "operation"),
        ({**GENERATE, "colour": "red"}, "colour"),
        ({"operation": "offline.generate", "params": "a prompt"}, "params"),
        ({"operation": "offline.paint", "params": {}}, "operation"),
        ({"operation": "offline.generate", "params": {"prompt": "x", "width": 4096}}, "params.width"),
        ({"operation": "ideogram.generate", "params": {"prompt": "x", "num_images": 11}}, "params.num_images"),
        ({**CHAIN, "operation": "offline.generate"}, "steps"),
        ({"steps": [{"operation": "offline.upscale", "input": "previous", "params": {"factor": 2}}]}, "steps.0.input"),
    ],
    ids=["empty", "extra-field", "params-not-object", "unknown-operation", "bad-param", "over-limit", "both", "link"],
)
async def test_a_body_the_submit_would_refuse_is_the_same_422(client, user, body, field):
    quoted = await client.post("/v1/jobs/quote", json=body, headers=user["headers"])
    submitted = await client.post("/v1/jobs", json=body, headers=user["headers"])
    error = assert_v1_error(quoted, 422, submitted.json()["error"]["code"])
    assert submitted.status_code == 422 and quoted.json() == submitted.json()
    assert field in [d["field"] for d in error["details"]]


async def test_another_users_image_is_404_naming_the_param(client, user):
    owner = bearer((await signup(client))["accessToken"])
    image_id = await upload(client, owner, Image.new("RGB", (64, 64), "white"))
    body = {"operation": "offline.describe", "params": {"image": image_id}}
    error = assert_v1_error(await client.post("/v1/jobs/quote", json=body, headers=user["headers"]), 404, "not_found")
    assert [d["field"] for d in error["details"]] == ["params.image"]
    quoted = (await client.post("/v1/jobs/quote", json=body, headers=owner)).json()
    assert (quoted["credits"], quoted["steps"][0]["units"]) == (0.5, 1)


async def test_a_quote_needs_a_valid_token(client, settings, user):
    assert_v1_error(await client.post("/v1/jobs/quote", json=GENERATE), 401, "not_authenticated")
    secret = settings.jwt_secret.get_secret_value()
    now = datetime.now(UTC)
    claims = {"sub": user["id"], "iat": now - timedelta(hours=2), "exp": now - timedelta(hours=1)}
    expired = jwt.encode(claims, secret, algorithm="HS256")
    forged = jwt.encode({**claims, "exp": now + timedelta(hours=1)}, "x" * 32 + " not the secret", algorithm="HS256")
    stranger = jwt.encode({**claims, "sub": str(uuid.uuid4()), "exp": now + timedelta(hours=1)}, secret, "HS256")
    for token in (expired, forged, stranger, "not-a-token"):
        response = await client.post("/v1/jobs/quote", json=GENERATE, headers=bearer(token))
        assert_v1_error(response, 401, "not_authenticated")


async def test_a_quote_must_be_json_and_not_huge(client, user):
    plain = {**user["headers"], "Content-Type": "text/plain"}
    text = await client.post("/v1/jobs/quote", content=b"operation=offline.generate", headers=plain)
    assert_v1_error(text, 415, "unsupported_media_type")
    huge = {"operation": "offline.generate", "params": {"prompt": "x" * 1_100_000}}
    assert_v1_error(await client.post("/v1/jobs/quote", json=huge, headers=user["headers"]), 413, "payload_too_large")


async def test_prices_come_from_the_billing_config(settings, tmp_path):
    """Another price list, another quote: the prices are the operator's, not the code's."""
    prices = {name: 1 for name in OPERATIONS} | {"ideogram.generate": 2.5, "offline.upscale": 0.75}
    path = tmp_path / "billing.yaml"
    path.write_text(yaml.safe_dump({"prices": prices}))
    async with api_without_actors(settings.model_copy(update={"billing_config": path})) as (app_client, _):
        headers = bearer((await signup(app_client))["accessToken"])
        generate = (await app_client.post("/v1/jobs/quote", json=IDEOGRAM, headers=headers)).json()
        assert (generate["credits"], generate["steps"][0]["unitCredits"]) == (7.5, 2.5)
        chain = (await app_client.post("/v1/jobs/quote", json=CHAIN, headers=headers)).json()
        assert [s["credits"] for s in chain["steps"]] == [1.0, 0.75, 1.0]
        assert chain["credits"] == 2.75


async def test_a_provider_without_a_key_here_is_503_at_quote_as_at_submit(settings):
    async with api_without_actors(settings.model_copy(update={"ideogram_api_key": None})) as (app_client, _):
        headers = bearer((await signup(app_client))["accessToken"])
        response = await app_client.post("/v1/jobs/quote", json=IDEOGRAM, headers=headers)
        assert_v1_error(response, 503, "provider_misconfigured")
