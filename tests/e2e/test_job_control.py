"""Cancel and Idempotency-Key on the real app: what the user sees, what they are charged,
and that the event log records each job's end exactly once."""

from __future__ import annotations

import asyncio
import functools
import uuid

import httpx
import pytest
from sqlalchemy import func, select, update

from storage.events import events_after
from storage.models import Job, JobEvent
from tests.conftest import IDEOGRAM_INFLIGHT_LIMIT, IDEOGRAM_RUNNING_JOBS
from tests.e2e.helpers import assert_v1_error, bearer, signup
from tests.e2e.test_providers import credits
from tests.integration.test_job_lifecycle import someone_waits_for
from tests.integration.test_shared_limits import eventually


@pytest.fixture(autouse=True)
def fresh_fakes(fake_ideogram, fake_dashscope):
    fake_ideogram.reset()
    fake_dashscope.reset()
    yield
    fake_ideogram.release_hung()


@pytest.fixture
async def user(client) -> dict:
    account = await signup(client)
    return {"headers": bearer(account["accessToken"]), "id": account["user"]["id"]}


async def submit(client: httpx.AsyncClient, headers: dict, body: dict, key: str | None = None) -> httpx.Response:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return await client.post("/v1/jobs", json=body, headers={**headers, **extra})


async def finished(client: httpx.AsyncClient, headers: dict, job_id: str) -> dict:
    response = await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def event_types(sessions, owner: str, job_id: str) -> list[str]:
    async with sessions() as session:
        events = await events_after(session, owner_id=uuid.UUID(owner), after=0, job_id=uuid.UUID(job_id))
    return [e.type for e in events]


GENERATE = {"operation": "ideogram.generate", "params": {"prompt": "a slow lighthouse"}}
WAITERS = 60  # more than a replica's database connections (serve_app.services: 20, and 20 more for a burst)


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_stops_running_jobs_and_cancels_a_queued_one_at_once(client, user, fake_ideogram, sessions):
    headers = user["headers"]
    fake_ideogram.hang_next(times=IDEOGRAM_RUNNING_JOBS, endpoint="generate")
    running = []
    for _ in range(IDEOGRAM_RUNNING_JOBS):
        response = await submit(client, headers, GENERATE)
        assert response.status_code == 202, response.text
        running.append(response.json()["jobId"])
    await asyncio.to_thread(fake_ideogram.wait_until_hung, IDEOGRAM_INFLIGHT_LIMIT)
    # Every Ideogram slot of the dispatcher holds one of those, so this one stays queued.
    queued = (await submit(client, headers, GENERATE)).json()
    assert await credits(client, headers) == 20 - len(running) - 1

    response = await client.post(f"/v1/jobs/{queued['jobId']}/cancel", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"
    assert await credits(client, headers) == 20 - len(running), "the queued job's credit came back at once"

    for job_id in running:
        response = await client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
        assert response.status_code == 202, response.text
    for job_id in running:
        job = await finished(client, headers, job_id)
        assert (job["status"], job["error"], job["result"]) == ("canceled", None, None)
        assert job["steps"][0]["status"] == "canceled"
    assert await credits(client, headers) == 20
    for job_id in [*running, queued["jobId"]]:
        types = await event_types(sessions, user["id"], job_id)
        assert types.count("job.canceled") == 1 and types[-1] == "job.canceled", types


async def test_a_cancel_that_loses_the_race_with_a_claim_stops_the_job_it_finds_running(
    client, user, fake_ideogram, sessions
):
    headers = user["headers"]
    fake_ideogram.hang_next(times=IDEOGRAM_RUNNING_JOBS, endpoint="generate")
    for _ in range(IDEOGRAM_RUNNING_JOBS):
        assert (await submit(client, headers, GENERATE)).status_code == 202
    await asyncio.to_thread(fake_ideogram.wait_until_hung, IDEOGRAM_INFLIGHT_LIMIT)
    queued = uuid.UUID((await submit(client, headers, GENERATE)).json()["jobId"])

    # A claim holds the queued job's row while the cancel arrives, then takes it (its lease ran out
    # at once, as if its dispatcher had died): the cancel finds it running.
    async with sessions() as claimer:
        await claimer.execute(select(Job.id).where(Job.id == queued).with_for_update())
        canceling = asyncio.create_task(client.post(f"/v1/jobs/{queued}/cancel", headers=headers))
        await eventually(functools.partial(someone_waits_for, claimer))
        claim = update(Job).where(Job.id == queued)
        await claimer.execute(claim.values(status="running", attempt=Job.attempt + 1, lease_expires_at=func.now()))
        await claimer.commit()
    response = await canceling
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running"

    fake_ideogram.release_hung()  # room again: the attempt that takes the job over sees the cancel
    job = await finished(client, headers, str(queued))
    assert (job["status"], job["attempt"]) == ("canceled", 2)
    assert await credits(client, headers) == 20 - IDEOGRAM_RUNNING_JOBS, "the canceled job cost nothing"


async def test_waiters_hold_no_database_connection_while_they_wait(client, user, fake_ideogram):
    """More waiters than the replica has database connections: everyone else is still served, and
    the job's end wakes every waiter, even those that joined while the first one was still joining."""
    headers = user["headers"]
    fake_ideogram.hang_next(endpoint="generate")
    job_id = (await submit(client, headers, GENERATE)).json()["jobId"]
    await asyncio.to_thread(fake_ideogram.wait_until_hung, 1)
    waiters = [asyncio.create_task(finished(client, headers, job_id)) for _ in range(WAITERS)]
    response = await client.get("/v1/auth/me", headers=headers)
    assert response.status_code == 200, response.text
    fake_ideogram.release_hung()
    async with asyncio.timeout(20):  # well inside their 30 s wait: the end wakes them
        assert {job["status"] for job in await asyncio.gather(*waiters)} == {"succeeded"}


async def test_canceling_a_chain_mid_way_charges_only_the_steps_that_ran(client, user, fake_ideogram):
    headers = user["headers"]
    fake_ideogram.hang_next(endpoint="upscale")
    body = {
        "steps": [
            {"operation": "offline.generate", "params": {"prompt": "kept", "width": 64, "height": 64}},
            {"operation": "ideogram.upscale", "input": "previous"},
            {"operation": "offline.describe", "input": "previous"},
        ]
    }
    job_id = (await submit(client, headers, body)).json()["jobId"]
    await asyncio.to_thread(fake_ideogram.wait_until_hung, 1)

    assert (await client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)).status_code == 202
    job = await finished(client, headers, job_id)

    assert job["status"] == "canceled"
    assert [s["status"] for s in job["steps"]] == ["succeeded", "canceled", "canceled"]
    assert len(job["steps"][0]["assets"]) == 1
    assert await credits(client, headers) == 20 - 1


async def test_cancel_of_an_ended_job_is_409_and_of_another_users_job_404(client, user):
    headers = user["headers"]
    job_id = (await submit(client, headers, {"operation": "offline.generate", "params": {"prompt": "x"}})).json()[
        "jobId"
    ]
    assert (await finished(client, headers, job_id))["status"] == "succeeded"
    assert_v1_error(await client.post(f"/v1/jobs/{job_id}/cancel", headers=headers), 409, "conflict")
    assert await credits(client, headers) == 19

    stranger = bearer((await signup(client))["accessToken"])
    assert_v1_error(await client.post(f"/v1/jobs/{job_id}/cancel", headers=stranger), 404, "not_found")
    assert_v1_error(await client.post(f"/v1/jobs/{job_id}/cancel"), 401, "not_authenticated")
    assert_v1_error(await client.post("/v1/jobs/not-a-uuid/cancel", headers=headers), 422, "validation_error")


async def test_canceling_twice_answers_the_canceled_job(client, user, fake_ideogram):
    headers = user["headers"]
    fake_ideogram.hang_next(endpoint="generate")
    job_id = (await submit(client, headers, GENERATE)).json()["jobId"]
    await asyncio.to_thread(fake_ideogram.wait_until_hung, 1)
    await client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    await finished(client, headers, job_id)
    again = await client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    assert await credits(client, headers) == 20


# -- Idempotency-Key --------------------------------------------------------------------------

OFFLINE = {"operation": "offline.generate", "params": {"prompt": "once", "seed": 1}}


async def test_a_repeated_request_with_its_key_answers_the_same_job_and_charges_once(client, user):
    headers = user["headers"]
    first = await submit(client, headers, OFFLINE, key="order-1")
    again = await submit(client, headers, OFFLINE, key="order-1")
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["jobId"] == again.json()["jobId"]
    await finished(client, headers, first.json()["jobId"])
    later = await submit(client, headers, OFFLINE, key="order-1")
    assert later.json() == {"jobId": first.json()["jobId"], "status": "succeeded"}
    assert await credits(client, headers) == 19
    assert len((await client.get("/v1/jobs", headers=headers)).json()["items"]) == 1


async def test_the_same_key_with_another_body_is_409_and_costs_nothing(client, user):
    headers = user["headers"]
    await submit(client, headers, OFFLINE, key="k")
    other = {"operation": "offline.generate", "params": {"prompt": "different", "seed": 1}}
    error = assert_v1_error(await submit(client, headers, other, key="k"), 409, "conflict")
    assert error["details"][0]["field"] == "Idempotency-Key"
    assert await credits(client, headers) == 19


async def test_keys_belong_to_their_user(client, user):
    stranger = bearer((await signup(client))["accessToken"])
    mine = await submit(client, user["headers"], OFFLINE, key="shared-name")
    theirs = await submit(client, stranger, OFFLINE, key="shared-name")
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["jobId"] != theirs.json()["jobId"]


async def test_concurrent_duplicates_make_one_job_and_one_charge(client, user, sessions):
    headers = user["headers"]
    answers = await asyncio.gather(*(submit(client, headers, OFFLINE, key="burst") for _ in range(10)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 9 + [202], [a.text for a in answers]
    assert len({a.json()["jobId"] for a in answers}) == 1
    await finished(client, headers, answers[0].json()["jobId"])
    assert await credits(client, headers) == 19
    async with sessions() as session:
        count = await session.scalar(
            select(func.count()).where(JobEvent.owner_id == user["id"], JobEvent.type == "job.queued")
        )
    assert count == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there"])
async def test_a_bad_key_is_422_and_costs_nothing(client, user, key):
    response = await submit(client, user["headers"], OFFLINE, key=key)
    error = assert_v1_error(response, 422, response.json()["error"]["code"])
    assert "Idempotency-Key" in error["message"] or any("idempotency" in str(d).lower() for d in error["details"])
    assert await credits(client, user["headers"]) == 20
