"""Killing parts of the running app for real: a pool actor mid-call, the dispatcher mid-job, the
ledger or the dispatcher between a step's success upstream and its commit, the ledger while jobs are
submitted.

Afterwards every job ends exactly once, is charged exactly once, and a WebSocket subscriber and
a webhook endpoint each saw its end. (Stopping and restarting the whole app: tests/test_restart.py.)
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from decimal import Decimal

import psutil
import pytest
import ray
from sqlalchemy import func, select, text
from websockets.asyncio.client import connect

from actors.dispatcher import DISPATCHER_NAME
from actors.ledger import LEDGER_NAME
from actors.pools import pool_name
from daygen.runtime import RAY_NAMESPACE
from storage.models import Job, JobEvent, LedgerEntry
from tests.conftest import IDEOGRAM_INFLIGHT_LIMIT
from tests.e2e.helpers import bearer, set_balance, signup
from tests.e2e.test_providers import credits
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration.test_shared_limits import eventually

GENERATE = {"operation": "ideogram.generate", "params": {"prompt": "a survivor"}}
TERMINAL = {"job.succeeded", "job.failed", "job.canceled"}


@pytest.fixture(autouse=True)
def fresh_fakes(fake_ideogram):
    fake_ideogram.reset()
    yield
    fake_ideogram.release_hung()


@pytest.fixture(scope="module")
def receiver():
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
async def account(client, sessions, receiver) -> dict:
    created = await signup(client)
    headers = bearer(created["accessToken"])
    await set_balance(sessions, created["user"]["id"], Decimal(10))
    path = f"/recovery-{uuid.uuid4().hex[:8]}"
    response = await client.post("/v1/webhooks", json={"url": receiver.url(path)}, headers=headers)
    assert response.status_code == 201, response.text
    return {"headers": headers, "id": created["user"]["id"], "token": created["accessToken"], "hook": path}


async def watch(app_url: str, token: str, job_ids: set[str], frames: list[dict]) -> None:
    """A user:me subscriber that keeps every frame until each job's end has arrived."""
    url = app_url.replace("http://", "ws://") + f"/v1/ws?token={token}"
    async with connect(url) as socket:
        await socket.send(json.dumps({"action": "subscribe", "channel": "user:me", "lastEventId": 0}))
        ended: set[str] = set()
        while not job_ids <= ended:
            frame = json.loads(await socket.recv())
            frames.append(frame)
            if frame.get("type") in TERMINAL:
                ended.add(frame["jobId"])


async def submit_hung(client, headers, fake_ideogram, count: int) -> list[str]:
    fake_ideogram.hang_next(times=count, endpoint="generate")
    ids = []
    for _ in range(count):
        response = await client.post("/v1/jobs", json=GENERATE, headers=headers)
        assert response.status_code == 202, response.text
        ids.append(response.json()["jobId"])
    await asyncio.to_thread(fake_ideogram.wait_until_hung, count, 30)  # pool actors may be restarting
    return ids


async def kill(name: str) -> None:
    """`ray.kill` an actor (Ray restarts it) and wait until its process is gone: the kill itself
    returns before the actor dies, and a dying actor could still finish what it was doing."""
    handle = ray.get_actor(name, namespace=RAY_NAMESPACE)
    process = psutil.Process(await handle.__ray_call__.remote(lambda _: os.getpid()))
    ray.kill(handle, no_restart=False)
    _, alive = await asyncio.to_thread(psutil.wait_procs, [process], 30)
    assert not alive, f"{name} did not die"


async def assert_ended_once_and_charged_once(client, sessions, account, receiver, job_ids, frames, attempts):
    for job_id in job_ids:
        job = (await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=account["headers"])).json()
        assert job["status"] == "succeeded", job
        assert job["attempt"] >= attempts
    async with sessions() as session:
        for job_id in job_ids:
            ends = await session.scalar(
                select(func.count()).where(JobEvent.job_id == uuid.UUID(job_id), JobEvent.type.in_(TERMINAL))
            )
            assert ends == 1, f"job {job_id} ended {ends} times"
            kinds = sorted(
                (
                    await session.execute(select(LedgerEntry.kind).where(LedgerEntry.job_id == uuid.UUID(job_id)))
                ).scalars()
            )
            assert kinds == ["commit", "reserve"], f"job {job_id} was settled as {kinds}"
    assert await credits(client, account["headers"]) == 10 - len(job_ids), "each job charged exactly once"
    ended = [f for f in frames if f.get("type") in TERMINAL]
    assert sorted(f["jobId"] for f in ended) == sorted(job_ids), "the subscriber saw each end once"
    hooks = await asyncio.to_thread(receiver.wait_for, len(job_ids), account["hook"])
    assert {d.json["data"]["jobId"] for d in hooks} == set(job_ids), "the endpoint saw each end"


async def test_a_pool_actor_killed_mid_call_costs_a_retry_not_the_job(
    client, app_url, sessions, account, fake_ideogram, receiver
):
    job_ids = await submit_hung(client, account["headers"], fake_ideogram, IDEOGRAM_INFLIGHT_LIMIT - 1)
    frames: list[dict] = []
    watcher = asyncio.create_task(watch(app_url, account["token"], set(job_ids), frames))
    for index in range(2):  # both Ideogram actors: whichever holds the calls dies mid-call
        await kill(pool_name("ideogram", index))
    fake_ideogram.release_hung()  # answers nobody now; the retries find the restarted actors
    await asyncio.wait_for(watcher, 60)
    await assert_ended_once_and_charged_once(client, sessions, account, receiver, job_ids, frames, attempts=1)
    assert len(fake_ideogram.requests_to("generate")) == 2 * len(job_ids), "each job's call went out again"


@pytest.mark.parametrize("victim", [LEDGER_NAME, DISPATCHER_NAME])
async def test_a_worker_killed_between_the_providers_success_and_the_commit_charges_once(
    client, app_url, sessions, account, fake_ideogram, receiver, victim
):
    """The step succeeded upstream and its end waits to be written (this test holds the job's row):
    the ledger writing the end, or the dispatcher that asked for it, dies then. After recovery the job
    ended once and was charged once, and the provider was not called again."""
    [job_id] = await submit_hung(client, account["headers"], fake_ideogram, 1)
    frames: list[dict] = []
    watcher = asyncio.create_task(watch(app_url, account["token"], {job_id}, frames))
    async with sessions.begin() as session:  # the job's end waits for this transaction's lock on its row
        await session.execute(select(Job.id).where(Job.id == uuid.UUID(job_id)).with_for_update())
        fake_ideogram.release_hung()
        await eventually(lambda: ending_waits(sessions))
        await kill(victim)
    await asyncio.wait_for(watcher, 60)
    await assert_ended_once_and_charged_once(client, sessions, account, receiver, [job_id], frames, attempts=1)
    assert len(fake_ideogram.requests_to("generate")) == 1, "the provider was called (and paid) once"


async def ending_waits(sessions) -> bool:
    """Whether a statement that ends jobs (`storage.jobs.record_finishes`) waits for a row lock."""
    query = text(
        "select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
        " and wait_event_type = 'Lock' and query like '%finished_jobs%'"
    )
    async with sessions() as session:
        return await session.scalar(query) > 0


async def test_a_dispatcher_killed_mid_job_is_restarted_and_its_jobs_taken_over_once(
    client, app_url, sessions, account, fake_ideogram, receiver
):
    job_ids = await submit_hung(client, account["headers"], fake_ideogram, IDEOGRAM_INFLIGHT_LIMIT - 1)
    frames: list[dict] = []
    watcher = asyncio.create_task(watch(app_url, account["token"], set(job_ids), frames))
    await kill(DISPATCHER_NAME)
    fake_ideogram.release_hung()  # the pool answers a dispatcher that is gone
    # The restarted dispatcher re-claims the jobs once their leases (5 s here) run out.
    await asyncio.wait_for(watcher, 60)
    await assert_ended_once_and_charged_once(client, sessions, account, receiver, job_ids, frames, attempts=2)


async def test_steps_sent_together_survive_their_actor_dying_and_a_cancel_stops_only_its_own(
    client, app_url, sessions, account, fake_ideogram, receiver
):
    """A batch is claimed at once, so its steps go to one pool actor in one streamed call."""
    count = IDEOGRAM_INFLIGHT_LIMIT - 1
    fake_ideogram.hang_next(times=count, endpoint="generate")
    response = await client.post("/v1/jobs/batch", json={"jobs": [GENERATE] * count}, headers=account["headers"])
    assert response.status_code == 200, response.text
    job_ids = [item["jobId"] for item in response.json()["results"]]
    await asyncio.to_thread(fake_ideogram.wait_until_hung, count, 30)
    frames: list[dict] = []
    watcher = asyncio.create_task(watch(app_url, account["token"], set(job_ids), frames))

    canceled, *rest = job_ids
    response = await client.post(f"/v1/jobs/{canceled}/cancel", headers=account["headers"])
    assert response.status_code == 202, response.text
    job = (await client.get(f"/v1/jobs/{canceled}", params={"wait": 30}, headers=account["headers"])).json()
    assert job["status"] == "canceled", job
    await asyncio.to_thread(fake_ideogram.wait_until_hung, count - 1, 30)  # the others still wait upstream
    for index in range(2):
        await kill(pool_name("ideogram", index))
    fake_ideogram.release_hung()
    await asyncio.wait_for(watcher, 60)

    for job_id in rest:
        job = (await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=account["headers"])).json()
        assert job["status"] == "succeeded", job
    async with sessions() as session:
        for job_id in job_ids:
            ends = await session.scalar(
                select(func.count()).where(JobEvent.job_id == uuid.UUID(job_id), JobEvent.type.in_(TERMINAL))
            )
            assert ends == 1, f"job {job_id} ended {ends} times"
    assert await credits(client, account["headers"]) == 10 - len(rest), "the canceled job cost nothing"
    assert sorted(f["jobId"] for f in frames if f.get("type") in TERMINAL) == sorted(job_ids)
    calls = fake_ideogram.requests_to("generate")
    assert len(calls) == count + len(rest), "each job's call went out again after the kill, the canceled one's not"


async def test_a_ledger_killed_while_jobs_are_submitted_queues_each_once_and_loses_none(client, sessions, account):
    """Each submit is one call to the ledger, which holds the credits and inserts the job in one
    transaction; a call the dying ledger had taken is made again on the restarted one (Ray retries it),
    and a repeat of a call that had committed holds and inserts nothing more."""
    await set_balance(sessions, account["id"], Decimal(1000))
    offline = {"operation": "offline.generate", "params": {"prompt": "through a restart", "width": 64, "height": 64}}
    answers: list[int] = []
    job_ids: list[str] = []
    flowing, killed = asyncio.Event(), asyncio.Event()
    in_flight = 0

    async def keep_submitting() -> None:
        nonlocal in_flight
        after_kill = 0
        while after_kill < 20:  # until well after the restart
            in_flight += 1
            response = await client.post("/v1/jobs", json=offline, headers=account["headers"])
            in_flight -= 1
            answers.append(response.status_code)
            if response.status_code == 202:
                job_ids.append(response.json()["jobId"])
            if len(answers) >= 8:
                flowing.set()
            after_kill += killed.is_set()

    submitters = [asyncio.create_task(keep_submitting()) for _ in range(4)]
    await flowing.wait()
    submitting_at_kill = in_flight
    await kill(LEDGER_NAME)
    killed.set()
    await asyncio.gather(*submitters)

    assert submitting_at_kill > 0, "the ledger died with submits in flight"

    assert set(answers) == {202}, f"every submit was answered 202: {sorted(set(answers))}"
    owner = uuid.UUID(account["id"])
    async with sessions() as session:
        reserved = await session.scalar(
            select(func.count()).where(LedgerEntry.account_id == owner, LedgerEntry.kind == "reserve")
        )
        jobs = await session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == owner))
    assert reserved == jobs == len(job_ids) == len(set(job_ids)), "one job and one reservation per answer"
    for job_id in job_ids:
        job = (await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=account["headers"])).json()
        assert job["status"] == "succeeded", job
    assert await credits(client, account["headers"]) == 1000 - len(job_ids), "each job charged exactly once"
