"""`POST /v1/jobs/batch`: up to 100 jobs in one request, each answered on its own."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.e2e.helpers import assert_v1_error, bearer, set_balance, signup
from tests.e2e.test_providers import credits
from tests.images import encoded

OFFLINE = {"operation": "offline.generate", "params": {"prompt": "batch", "width": 64, "height": 64}}


@pytest.fixture
async def user(client) -> dict:
    account = await signup(client)
    return {"headers": bearer(account["accessToken"]), "id": account["user"]["id"]}


async def batch(client, headers, jobs) -> list[dict]:
    response = await client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=headers)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(jobs)
    return results


async def finished(client, headers, job_id: str) -> dict:
    return (await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers)).json()


async def test_every_job_of_a_batch_is_queued_runs_and_is_charged_once(client, user):
    results = await batch(client, user["headers"], [OFFLINE] * 5)
    assert [r["status"] for r in results] == [202] * 5
    ids = [r["jobId"] for r in results]
    assert len(set(ids)) == 5
    for job_id in ids:
        assert (await finished(client, user["headers"], job_id))["status"] == "succeeded"
    assert await credits(client, user["headers"]) == 15


async def test_each_bad_item_gets_its_own_error_and_the_good_ones_still_run(client, user):
    other = bearer((await signup(client))["accessToken"])
    upload = await client.post(
        "/v1/assets", content=encoded("PNG", (16, 16), "red"), headers={**other, "Content-Type": "image/png"}
    )
    theirs = upload.json()["id"]
    results = await batch(
        client,
        user["headers"],
        [
            OFFLINE,
            {"operation": "offline.generate", "params": {"prompt": "x", "width": "wide"}},
            {"operation": "no.such.thing", "params": {}},
            {"operation": "offline.describe", "params": {"image": theirs}},
            "not an object",
            {"operation": "offline.generate", "params": {"prompt": "x"}, "surprise": True},
            OFFLINE,
        ],
    )
    assert [r["status"] for r in results] == [202, 422, 422, 404, 422, 422, 202]
    assert results[1]["error"]["details"][0]["field"] == "params.width"
    assert results[2]["error"]["details"][0]["field"] == "operation"
    assert results[3]["error"]["code"] == "not_found"
    assert results[5]["error"]["details"][0]["field"] == "surprise"
    assert all(r["jobId"] is None for r in results[1:6])
    assert await credits(client, user["headers"]) == 18, "only the two good jobs are charged"


async def test_a_batch_bigger_than_the_balance_is_accepted_up_to_the_balance(client, user, sessions):
    await set_balance(sessions, user["id"], Decimal(3))
    results = await batch(client, user["headers"], [OFFLINE] * 5)
    assert [r["status"] for r in results] == [202, 202, 202, 402, 402]
    assert results[3]["error"]["code"] == "insufficient_credits"
    assert results[3]["error"]["details"] == {"required": 1.0, "balance": 0.0}


async def test_item_idempotency_keys_repeat_the_same_job_and_refuse_another_body(client, user):
    keyed = {**OFFLINE, "idempotencyKey": "photo-42"}
    [first, twin] = await batch(client, user["headers"], [keyed, keyed])
    assert (first["status"], twin["status"]) == (202, 200)
    assert twin["jobId"] == first["jobId"]
    [again, clash] = await batch(
        client,
        user["headers"],
        [keyed, {"operation": "offline.generate", "params": {"prompt": "other"}, "idempotencyKey": "photo-42"}],
    )
    assert (again["status"], again["jobId"]) == (200, first["jobId"])
    assert clash["status"] == 409 and clash["error"]["code"] == "conflict"
    assert await credits(client, user["headers"]) == 19, "charged once for the one job"


async def test_the_batch_itself_must_hold_one_to_a_hundred_jobs_and_be_json_with_a_token(client, user):
    headers = user["headers"]
    for body in ({"jobs": []}, {"jobs": [OFFLINE] * 101}, {}, {"jobs": OFFLINE}, {"jobs": [OFFLINE], "more": 1}):
        assert_v1_error(await client.post("/v1/jobs/batch", json=body, headers=headers), 422, "validation_error")
    assert_v1_error(
        await client.post("/v1/jobs/batch", content=b"jobs=1", headers={**headers, "Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert_v1_error(await client.post("/v1/jobs/batch", json={"jobs": [OFFLINE]}), 401, "not_authenticated")
    assert await credits(client, headers) == 20
