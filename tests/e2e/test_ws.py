"""`/v1/ws` through the Serve proxy: authentication, subscriptions, replay by lastEventId and
live delivery — each event exactly once, in order."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from serve_app.live import PAGE as REPLAY_PAGE
from serve_app.security import issue_token
from storage.events import NewEvent, append_events
from tests.e2e.helpers import bearer, signup

TERMINAL = {"job.succeeded", "job.failed", "job.canceled"}
OFFLINE = {"operation": "offline.generate", "params": {"prompt": "live", "width": 64, "height": 64}}


@pytest.fixture
def ws_url(app_url: str) -> str:
    return app_url.replace("http://", "ws://") + "/v1/ws"


@pytest.fixture
async def account(client) -> dict:
    created = await signup(client)
    return {"token": created["accessToken"], "headers": bearer(created["accessToken"]), "id": created["user"]["id"]}


async def frames_until(socket: ClientConnection, done, within: float = 30) -> list[dict]:
    """Frames (heartbeats left out) up to and including the first for which `done` is true."""
    seen = []
    async with asyncio.timeout(within):
        while True:
            frame = json.loads(await socket.recv())
            if frame["type"] == "heartbeat":
                continue
            seen.append(frame)
            if done(frame):
                return seen


def ends(job_id: str):
    return lambda f: f["type"] in TERMINAL and f.get("jobId") == job_id


async def submit(client: httpx.AsyncClient, headers: dict, body: dict = OFFLINE) -> str:
    response = await client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["jobId"]


async def subscribe(socket: ClientConnection, channel: str, last: int | None = None) -> list[dict]:
    """Subscribe and return the replayed events (everything before the `subscribed` answer)."""
    message = {"action": "subscribe", "channel": channel}
    if last is not None:
        message["lastEventId"] = last
    await socket.send(json.dumps(message))
    frames = await frames_until(socket, lambda f: f["type"] in ("subscribed", "error"))
    assert frames[-1]["type"] == "subscribed", frames[-1]
    return frames[:-1]


async def test_a_job_channel_replays_then_streams_every_event_once_in_order(client, ws_url, account):
    job_id = await submit(client, account["headers"])
    async with connect(f"{ws_url}?token={account['token']}") as socket:
        frames = await subscribe(socket, f"job:{job_id}")
        if not any(f["type"] in TERMINAL for f in frames):
            frames += await frames_until(socket, ends(job_id))
    types = [f["type"] for f in frames]
    assert types == ["job.queued", "job.started", "job.step_succeeded", "job.succeeded"]
    ids = [f["id"] for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {f["channel"] for f in frames} == {f"job:{job_id}"}
    assert frames[-1]["data"]["status"] == "succeeded" and len(frames[-1]["data"]["assetIds"]) == 1


async def test_user_me_streams_every_job_of_the_user_live(client, ws_url, account):
    async with connect(ws_url, subprotocols=["daygen.v1", f"bearer.{account['token']}"]) as socket:
        assert socket.subprotocol == "daygen.v1"
        assert await subscribe(socket, "user:me") == [], "user:me without lastEventId starts live"
        jobs = [await submit(client, account["headers"]) for _ in range(3)]
        pending = set(jobs)
        frames: list[dict] = []
        while pending:
            frames += await frames_until(socket, lambda f: f["type"] in TERMINAL and f["jobId"] in pending)
            pending.discard(frames[-1]["jobId"])
    for job_id in jobs:
        mine = [f["type"] for f in frames if f["jobId"] == job_id]
        assert mine == ["job.queued", "job.started", "job.step_succeeded", "job.succeeded"]
    ids = [f["id"] for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_a_client_that_reconnects_with_its_last_event_id_misses_nothing_and_repeats_nothing(
    client, ws_url, account, fake_ideogram
):
    fake_ideogram.reset()
    fake_ideogram.hang_next(endpoint="generate")
    job_id = await submit(client, account["headers"], {"operation": "ideogram.generate", "params": {"prompt": "p"}})
    async with connect(f"{ws_url}?token={account['token']}") as socket:
        first = await subscribe(socket, f"job:{job_id}")
        first += await frames_until(socket, lambda f: f["type"] == "job.started") if len(first) < 2 else []
    # Disconnected while the job runs; it ends meanwhile.
    await asyncio.to_thread(fake_ideogram.wait_until_hung, 1)
    fake_ideogram.release_hung()
    await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=account["headers"])

    async with connect(f"{ws_url}?token={account['token']}") as socket:
        rest = await subscribe(socket, f"job:{job_id}", last=first[-1]["id"])
    types = [f["type"] for f in first + rest]
    assert types == ["job.queued", "job.started", "job.step_succeeded", "job.succeeded"]
    assert all(f["id"] > first[-1]["id"] for f in rest)


@pytest.mark.parametrize("channel", ["job", "user:me"])
async def test_a_long_history_is_replayed_page_after_page_each_event_once_in_order(
    client, ws_url, account, sessions, channel
):
    job_id = await submit(client, account["headers"])
    await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=account["headers"])
    extra = [
        NewEvent(uuid.UUID(job_id), uuid.UUID(account["id"]), "job.progress", {"progress": i % 100})
        for i in range(REPLAY_PAGE + 20)
    ]
    async with sessions.begin() as session:
        await append_events(session, extra)

    async with connect(f"{ws_url}?token={account['token']}", max_queue=None) as socket:
        if channel == "job":
            replayed = await subscribe(socket, f"job:{job_id}")
        else:
            replayed = await subscribe(socket, "user:me", last=0)

    ids = [f["id"] for f in replayed]
    assert len(replayed) == 4 + len(extra)  # queued, started, step_succeeded, succeeded, then the extra
    assert ids == sorted(set(ids))
    assert [f["type"] for f in replayed[-len(extra) :]] == ["job.progress"] * len(extra)


async def test_another_users_job_is_an_error_frame_never_its_events(client, ws_url, account):
    stranger = await signup(client)
    theirs = await submit(client, bearer(stranger["accessToken"]))
    async with connect(f"{ws_url}?token={account['token']}") as socket:
        await socket.send(json.dumps({"action": "subscribe", "channel": f"job:{theirs}"}))
        [frame] = await frames_until(socket, lambda f: True)
        assert (frame["type"], frame["code"], frame["channel"]) == ("error", "not_found", f"job:{theirs}")
        await socket.send(json.dumps({"action": "subscribe", "channel": "user:me"}))
        await frames_until(socket, lambda f: f["type"] == "subscribed")
        await client.get(f"/v1/jobs/{theirs}", params={"wait": 30}, headers=bearer(stranger["accessToken"]))
        mine = await submit(client, account["headers"])
        frames = await frames_until(socket, ends(mine))
    assert {f["jobId"] for f in frames} == {mine}


async def test_sockets_of_two_users_subscribing_at_once_each_get_only_their_own_jobs(client, ws_url, account):
    """Subscribes that arrive together are read together: nobody gets another's events or answer."""
    stranger = await signup(client)
    people = [(account["token"], account["headers"]), (stranger["accessToken"], bearer(stranger["accessToken"]))]
    jobs = [[await submit(client, headers) for _ in range(3)] for _, headers in people]
    for (_, headers), theirs in zip(people, jobs, strict=True):
        for job_id in theirs:
            await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers)

    async def watch(token: str, channel: str) -> list[dict]:
        async with connect(f"{ws_url}?token={token}") as socket:
            await socket.send(json.dumps({"action": "subscribe", "channel": channel}))
            return await frames_until(socket, lambda f: f["type"] in ("subscribed", "error"))

    asked = [
        (who, token, job_id)
        for who, (token, _) in enumerate(people)
        for job_ids in (jobs[0], jobs[1])
        for job_id in job_ids
    ]
    answers = await asyncio.gather(*(watch(token, f"job:{job_id}") for _, token, job_id in asked))
    for (who, _, job_id), frames in zip(asked, answers, strict=True):
        if job_id in jobs[who]:
            kinds = ["job.queued", "job.started", "job.step_succeeded", "job.succeeded", "subscribed"]
            assert [f["type"] for f in frames] == kinds
            assert {f["jobId"] for f in frames[:-1]} == {job_id}
        else:
            assert [(f["type"], f["code"]) for f in frames] == [("error", "not_found")]


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        (json.dumps({"action": "listen", "channel": "user:me"}), "bad_request"),
        (json.dumps({"action": "subscribe"}), "bad_request"),
        (json.dumps({"action": "subscribe", "channel": "jobs:all"}), "bad_request"),
        (json.dumps({"action": "subscribe", "channel": "job:not-a-uuid"}), "bad_request"),
        (json.dumps({"action": "subscribe", "channel": f"job:{uuid.uuid4()}"}), "not_found"),
        (json.dumps({"action": "subscribe", "channel": "user:me", "lastEventId": "7"}), "bad_request"),
        (json.dumps({"action": "subscribe", "channel": "user:me", "lastEventId": -1}), "bad_request"),
        ("x" * 5000, "bad_request"),
    ],
)
async def test_bad_messages_get_an_error_frame_and_the_socket_stays_usable(ws_url, account, message, code):
    async with connect(f"{ws_url}?token={account['token']}") as socket:
        await socket.send(message)
        [frame] = await frames_until(socket, lambda f: True)
        assert (frame["type"], frame["code"]) == ("error", code)
        assert await subscribe(socket, "user:me") == []


@pytest.mark.parametrize("case", ["missing", "garbage", "forged", "expired", "vanished user"])
async def test_a_bad_token_closes_with_policy_violation_before_any_data(ws_url, settings, account, case):
    tokens = {
        "missing": None,
        "garbage": "not.a.jwt",
        "forged": issue_token(uuid.UUID(account["id"]), "another secret, long enough for HS256 keys", 3600),
        "expired": issue_token(uuid.UUID(account["id"]), settings.jwt_secret.get_secret_value(), 60, time.time() - 120),
        "vanished user": issue_token(uuid.uuid4(), settings.jwt_secret.get_secret_value(), 3600),
    }
    token = tokens[case]
    url = ws_url if token is None else f"{ws_url}?token={token}"
    async with connect(url) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_heartbeats_keep_an_idle_socket_alive(ws_url, account, settings):
    async with connect(f"{ws_url}?token={account['token']}") as socket:
        async with asyncio.timeout(settings.ws_heartbeat_seconds * 5):
            frame = json.loads(await socket.recv())
    assert frame == {"type": "heartbeat"}


async def test_unsubscribe_stops_a_channel(client, ws_url, account):
    async with connect(f"{ws_url}?token={account['token']}") as socket:
        await subscribe(socket, "user:me")
        await socket.send(json.dumps({"action": "unsubscribe", "channel": "user:me"}))
        await frames_until(socket, lambda f: f["type"] == "unsubscribed")
        job_id = await submit(client, account["headers"])
        await subscribe(socket, f"job:{job_id}")
        frames = await frames_until(socket, ends(job_id))
    assert {f["channel"] for f in frames} == {f"job:{job_id}"}
