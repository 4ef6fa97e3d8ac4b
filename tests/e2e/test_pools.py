"""Provider pools through the API: requests that could never start, and the queue depth users see."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import IDEOGRAM_INFLIGHT_LIMIT, IDEOGRAM_RUNNING_JOBS
from tests.e2e.helpers import api_without_actors, assert_v1_error, bearer, signup
from tests.e2e.test_providers import credits

GENERATE = {"operation": "ideogram.generate", "params": {"prompt": "a queue at dawn"}}


@pytest.fixture(autouse=True)
def fresh_fakes(fake_ideogram):
    fake_ideogram.reset()
    yield
    fake_ideogram.release_hung()


@pytest.fixture
async def headers(client) -> dict:
    return bearer((await signup(client))["accessToken"])


async def test_more_images_than_may_be_in_flight_is_a_422_naming_the_field_and_costs_nothing(client, headers):
    too_many = IDEOGRAM_INFLIGHT_LIMIT + 1
    body = {"operation": "ideogram.generate", "params": {"prompt": "crowd", "num_images": too_many}}
    error = assert_v1_error(await client.post("/v1/jobs", json=body, headers=headers), 422, "invalid_input")
    assert error["details"] == [{"field": "params.num_images", "message": f"must be at most {IDEOGRAM_INFLIGHT_LIMIT}"}]
    chain = {"steps": [{"operation": "ideogram.generate", "params": {"prompt": "x", "num_images": too_many}}]}
    error = assert_v1_error(await client.post("/v1/jobs", json=chain, headers=headers), 422, "invalid_input")
    assert error["details"][0]["field"] == "steps.0.params.num_images"
    assert await credits(client, headers) == 20


async def test_queue_depth_per_provider_shows_waiting_and_running_jobs(client, headers, fake_ideogram):
    fake_ideogram.hang_next(times=IDEOGRAM_RUNNING_JOBS + 2, endpoint="generate")
    jobs = []
    for _ in range(IDEOGRAM_RUNNING_JOBS + 2):
        response = await client.post("/v1/jobs", json=GENERATE, headers=headers)
        assert response.status_code == 202, response.text
        jobs.append(response.json()["jobId"])
    await asyncio.to_thread(fake_ideogram.wait_until_hung, IDEOGRAM_INFLIGHT_LIMIT)

    response = await client.get("/v1/providers", headers=headers)
    assert response.status_code == 200, response.text
    pools = {p["provider"]: p for p in response.json()["items"]}
    assert set(pools) == {"ideogram", "qwen", "offline"}
    ideogram = pools["ideogram"]
    assert ideogram["running"] == IDEOGRAM_RUNNING_JOBS, "the dispatcher runs as many as the pool may"
    assert ideogram["queued"] == 2, "the rest wait their turn"
    assert ideogram["maxInflightImages"] == IDEOGRAM_INFLIGHT_LIMIT and ideogram["pausedForSeconds"] == 0
    assert ideogram["actors"] == 2 and ideogram["maxRunningJobs"] == IDEOGRAM_RUNNING_JOBS

    for job_id in jobs:
        await client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    for job_id in jobs:
        job = (await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers)).json()
        assert job["status"] == "canceled"
    assert await credits(client, headers) == 20


async def test_queue_depth_needs_a_token(client):
    assert_v1_error(await client.get("/v1/providers"), 401, "not_authenticated")


@pytest.mark.parametrize(("status", "code"), [(401, "provider_misconfigured"), (402, "provider_out_of_funds")])
async def test_after_the_provider_refuses_our_key_or_account_new_jobs_are_503_before_any_charge(
    client, headers, fake_ideogram, status, code
):
    fake_ideogram.fail_next(status)
    first = await client.post("/v1/jobs", json=GENERATE, headers=headers)
    job = (await client.get(f"/v1/jobs/{first.json()['jobId']}", params={"wait": 30}, headers=headers)).json()
    assert (job["status"], job["error"]["code"]) == ("failed", code)

    refused = await client.post("/v1/jobs", json=GENERATE, headers=headers)
    error = assert_v1_error(refused, 503, code)
    assert fake_ideogram.api_key not in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    chain = {"steps": [{**OFFLINE_STEP}, {"operation": "ideogram.upscale", "input": "previous"}]}
    assert_v1_error(await client.post("/v1/jobs", json=chain, headers=headers), 503, code)
    compat = await client.post("/api/image/ideogram", json={"prompt": "still down"}, headers=headers)
    assert compat.status_code == 503 and compat.json()["statusCode"] == 503
    assert await credits(client, headers) == 20, "neither the failed job nor the refused ones cost anything"
    assert len(fake_ideogram.requests_to("generate")) == 1

    pools = {p["provider"]: p for p in (await client.get("/v1/providers", headers=headers)).json()["items"]}
    assert pools["ideogram"]["unavailable"]["code"] == code and pools["ideogram"]["unavailableForSeconds"] > 0
    assert pools["offline"]["unavailable"] is None
    offline = await client.post(
        "/v1/jobs", json={"operation": "offline.generate", "params": OFFLINE_STEP["params"]}, headers=headers
    )
    assert offline.status_code == 202, "other providers keep working"


OFFLINE_STEP = {"operation": "offline.generate", "params": {"prompt": "fine", "width": 64, "height": 64}}


async def test_a_provider_without_a_key_on_this_server_is_503_at_submit(settings):
    keyless = settings.model_copy(update={"ideogram_api_key": None, "dashscope_api_key": None})
    async with api_without_actors(keyless) as (app_client, _):
        headers = bearer((await signup(app_client))["accessToken"])
        for body in (GENERATE, {"operation": "qwen.generate", "params": {"prompt": "x"}}):
            error = assert_v1_error(
                await app_client.post("/v1/jobs", json=body, headers=headers), 503, "provider_misconfigured"
            )
            assert "not configured" in error["message"]
        assert await credits(app_client, headers) == 20
