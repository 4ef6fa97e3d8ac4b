"""Webhooks through the whole app: a job's own webhookUrl, account endpoints, signatures, retries,
410, the delivery log, redelivery, secret rotation, and the SSRF guard at the door."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from pipelines.webhooks import verify
from tests.e2e.helpers import assert_v1_error, bearer, signup
from tests.e2e.test_providers import credits
from tests.fakes.webhook_receiver import WebhookReceiver

OFFLINE = {"operation": "offline.generate", "params": {"prompt": "hooked", "width": 64, "height": 64}}


@pytest.fixture(scope="module")
def receiver():
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
async def user(client) -> dict:
    account = await signup(client)
    headers = bearer(account["accessToken"])
    secret = (await client.get("/v1/webhooks/secret", headers=headers)).json()["secret"]
    return {"headers": headers, "id": account["user"]["id"], "secret": secret}


def unique_path() -> str:
    return f"/hook-{uuid.uuid4().hex[:12]}"


async def run(client, headers, body=OFFLINE) -> str:
    response = await client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers)
    return job_id


async def arrived(receiver: WebhookReceiver, count: int, path: str):
    return await asyncio.to_thread(receiver.wait_for, count, path)


async def endpoint(client, headers, url: str, **fields) -> dict:
    response = await client.post("/v1/webhooks", json={"url": url, **fields}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def deliveries(client, headers, endpoint_id: str) -> list[dict]:
    response = await client.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def settled(client, headers, endpoint_id: str, status: str) -> dict:
    """The newest delivery once it reaches `status`. The log is written just after the receiver has
    answered and nothing announces it, so this looks again every 50 ms (for 20 s at most)."""
    async with asyncio.timeout(20):
        while True:
            [latest, *_] = await deliveries(client, headers, endpoint_id)
            if latest["status"] == status:
                return latest
            await asyncio.sleep(0.05)


# -- a job's own webhookUrl ----------------------------------------------------------------------


async def test_a_jobs_webhook_url_gets_its_end_signed_with_the_users_secret(client, user, receiver):
    path = unique_path()
    job_id = await run(client, user["headers"], {**OFFLINE, "webhookUrl": receiver.url(path)})
    [delivery] = await arrived(receiver, 1, path)

    verify(user["secret"], delivery.headers, delivery.body)
    assert delivery.headers["content-type"] == "application/json"
    body = delivery.json
    assert body["type"] == "job.succeeded"
    assert body["timestamp"].endswith("Z")
    data = body["data"]
    assert (data["jobId"], data["status"], data["progress"]) == (job_id, "succeeded", 100)
    [asset] = data["assets"]
    assert data["resultUrl"] == asset["url"]
    image = await client.get(asset["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert (asset["width"], asset["height"]) == (64, 64)
    assert len(receiver.to(path)) == 1, "only the end of the job, once"


async def test_a_webhook_url_no_delivery_could_reach_is_a_422_and_costs_nothing(client, user):
    for url in (
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "ftp://example.com/hook",
        "http://user:pw@127.0.0.1:9/hook",
        "not a url",
    ):
        response = await client.post("/v1/jobs", json={**OFFLINE, "webhookUrl": url}, headers=user["headers"])
        error = assert_v1_error(response, 422, "invalid_input")
        assert error["details"][0]["field"] == "webhookUrl", url
    assert await credits(client, user["headers"]) == 20


# -- endpoints ---------------------------------------------------------------------------------


async def test_an_endpoint_receives_the_event_types_it_asked_for_in_order(client, user, receiver):
    path = unique_path()
    created = await endpoint(client, user["headers"], receiver.url(path), eventTypes=["job.started", "job.succeeded"])
    job_id = await run(client, user["headers"])
    received = await arrived(receiver, 2, path)
    assert [d.json["type"] for d in received] == ["job.started", "job.succeeded"]
    assert {d.json["data"]["jobId"] for d in received} == {job_id}
    for delivery in received:
        verify(user["secret"], delivery.headers, delivery.body)
    assert received[0].json["data"]["assets"] == [] and received[0].json["data"]["status"] == "running"
    await settled(client, user["headers"], created["id"], "succeeded")
    log = await deliveries(client, user["headers"], created["id"])
    assert [(d["eventType"], d["status"], d["attempts"], d["lastStatusCode"]) for d in log] == [
        ("job.succeeded", "succeeded", 1, 200),
        ("job.started", "succeeded", 1, 200),
    ]


async def test_a_failed_delivery_is_retried_with_the_same_id_until_it_lands(client, user, receiver):
    path = unique_path()
    created = await endpoint(client, user["headers"], receiver.url(path))
    receiver.answer_next(500, times=2, path=path)
    await run(client, user["headers"])
    attempts = await arrived(receiver, 3, path)
    assert len({d.headers["webhook-id"] for d in attempts}) == 1, "every attempt is the same message"
    assert len({d.body for d in attempts}) == 1
    done = await settled(client, user["headers"], created["id"], "succeeded")
    assert (done["attempts"], done["lastStatusCode"], done["lastError"]) == (3, 200, None)


async def test_retry_after_is_waited_out_even_when_the_schedule_is_sooner(client, user, receiver):
    path = unique_path()
    await endpoint(client, user["headers"], receiver.url(path))
    receiver.answer_next(503, headers={"Retry-After": "1"}, path=path)
    await run(client, user["headers"])
    first, second = await arrived(receiver, 2, path)
    assert second.at - first.at >= 0.95, "the schedule says 0.3 s; the receiver asked for 1 s"


async def test_a_delivery_that_keeps_failing_is_given_up_and_can_be_sent_again_by_hand(client, user, receiver):
    path = unique_path()
    created = await endpoint(client, user["headers"], receiver.url(path))
    receiver.answer_next(500, times=4, path=path)  # the first attempt and the schedule's three retries
    await run(client, user["headers"])
    await arrived(receiver, 4, path)
    failed = await settled(client, user["headers"], created["id"], "failed")
    assert (failed["attempts"], failed["lastStatusCode"], failed["lastError"]) == (4, 500, "HTTP 500")

    again = await client.post(
        f"/v1/webhooks/{created['id']}/deliveries/{failed['id']}/redeliver", headers=user["headers"]
    )
    assert again.status_code == 202, again.text
    fifth = (await arrived(receiver, 5, path))[-1]
    assert fifth.headers["webhook-id"] == failed["id"]
    assert (await settled(client, user["headers"], created["id"], "succeeded"))["id"] == failed["id"]


async def test_a_410_turns_the_endpoint_off_until_it_is_turned_back_on(client, user, receiver):
    gone, control = unique_path(), unique_path()
    created = await endpoint(client, user["headers"], receiver.url(gone))
    await endpoint(client, user["headers"], receiver.url(control))
    receiver.answer_next(410, path=gone)
    await run(client, user["headers"])
    await arrived(receiver, 1, gone)
    assert (await settled(client, user["headers"], created["id"], "failed"))["attempts"] == 1
    off = (await client.get(f"/v1/webhooks/{created['id']}", headers=user["headers"])).json()
    assert off["enabled"] is False and "410" in off["disabledReason"]

    await run(client, user["headers"])
    await arrived(receiver, 2, control)
    assert len(receiver.to(gone)) == 1, "nothing more went to the endpoint that said 410"

    on = await client.patch(f"/v1/webhooks/{created['id']}", json={"enabled": True}, headers=user["headers"])
    assert on.json()["enabled"] is True and on.json()["disabledReason"] is None
    await run(client, user["headers"])
    await arrived(receiver, 2, gone)


async def test_after_a_rotation_deliveries_carry_both_signatures_for_the_overlap(client, user, receiver):
    path = unique_path()
    await endpoint(client, user["headers"], receiver.url(path))
    rotated = (await client.post("/v1/webhooks/secret/rotate", headers=user["headers"])).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != user["secret"]
    assert rotated["previousSecretValidUntil"] is not None
    assert (await client.get("/v1/webhooks/secret", headers=user["headers"])).json()["secret"] == rotated["secret"]
    await run(client, user["headers"])
    [delivery] = await arrived(receiver, 1, path)
    assert len(delivery.headers["webhook-signature"].split()) == 2
    verify(rotated["secret"], delivery.headers, delivery.body)
    verify(user["secret"], delivery.headers, delivery.body)


async def test_endpoints_can_be_listed_changed_and_deleted(client, user, receiver):
    headers = user["headers"]
    first = await endpoint(client, headers, receiver.url(unique_path()), description="staging")
    second = await endpoint(client, headers, receiver.url(unique_path()))
    assert first["eventTypes"] == ["job.succeeded", "job.failed", "job.canceled"]
    listed = (await client.get("/v1/webhooks", params={"limit": 1}, headers=headers)).json()
    assert [e["id"] for e in listed["items"]] == [second["id"]]
    rest = (await client.get("/v1/webhooks", params={"cursor": listed["nextCursor"]}, headers=headers)).json()
    assert [e["id"] for e in rest["items"]] == [first["id"]] and rest["nextCursor"] is None

    changed = await client.patch(
        f"/v1/webhooks/{first['id']}",
        json={"description": None, "eventTypes": ["job.failed", "job.failed"]},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["description"], changed.json()["eventTypes"]) == (None, ["job.failed"])

    assert (await client.delete(f"/v1/webhooks/{first['id']}", headers=headers)).status_code == 204
    assert_v1_error(await client.get(f"/v1/webhooks/{first['id']}", headers=headers), 404, "not_found")


async def test_bad_endpoint_requests_are_422_naming_the_field(client, user, receiver):
    headers = user["headers"]
    cases = [
        ({"url": "http://192.168.1.1/hook"}, "url"),
        ({"url": "gopher://example.com"}, "url"),
        ({"url": receiver.url(), "eventTypes": []}, "eventTypes"),
        ({"url": receiver.url(), "eventTypes": ["job.exploded"]}, "eventTypes.0"),
        ({"url": receiver.url(), "secret": "mine"}, "secret"),
        ({"url": 42}, "url"),
        ({}, "url"),
        ({"url": receiver.url(), "description": "x" * 501}, "description"),
    ]
    for body, field in cases:
        response = await client.post("/v1/webhooks", json=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["details"][0]["field"] == field, body
    created = await endpoint(client, headers, receiver.url())
    for body, field in (({}, "body"), ({"url": None}, "url"), ({"enabled": None}, "enabled")):
        response = await client.patch(f"/v1/webhooks/{created['id']}", json=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["details"][0]["field"] == field
    assert_v1_error(
        await client.post("/v1/webhooks", content=b"url=x", headers={**headers, "Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )


async def test_another_users_endpoint_is_not_found_and_a_token_is_needed(client, user, receiver):
    mine = await endpoint(client, user["headers"], receiver.url())
    other = bearer((await signup(client))["accessToken"])
    base = f"/v1/webhooks/{mine['id']}"
    assert_v1_error(await client.get(base, headers=other), 404, "not_found")
    assert_v1_error(await client.patch(base, json={"enabled": False}, headers=other), 404, "not_found")
    assert_v1_error(await client.delete(base, headers=other), 404, "not_found")
    assert_v1_error(await client.get(f"{base}/deliveries", headers=other), 404, "not_found")
    assert_v1_error(await client.post(f"{base}/deliveries/{uuid.uuid4()}/redeliver", headers=other), 404, "not_found")
    assert (await client.get(base, headers=user["headers"])).json()["enabled"] is True
    for method, path in (
        ("GET", "/v1/webhooks"),
        ("GET", "/v1/webhooks/secret"),
        ("POST", "/v1/webhooks/secret/rotate"),
    ):
        assert_v1_error(await client.request(method, path), 401, "not_authenticated")
