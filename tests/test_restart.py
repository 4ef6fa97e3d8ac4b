"""Stopping the whole app (Ctrl-C of `daygen up`) with 50 jobs in flight, then starting it again.

Afterwards every job has ended exactly once and been charged exactly once, a WebSocket client
that reconnects with its last event id has seen every event once, and a webhook endpoint has
seen every job's end. The app runs as a user runs it: `daygen up` in a subprocess, settings in
its environment, on a database and Redis namespace of its own, with two ingress replicas.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from storage.db import make_engine, make_sessionmaker
from storage.models import JobEvent, LedgerEntry
from tests.conftest import free_port, private_database, without_limits
from tests.e2e.helpers import bearer, set_balance
from tests.fakes.ideogram import FakeIdeogram
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.test_cli import DAYGEN, clean_env

JOBS = 50
TERMINAL = {"job.succeeded", "job.failed", "job.canceled"}
POOLS = f"""
ideogram: {{actors: 2, max_running_jobs: {JOBS + 10}, max_inflight_images: {JOBS + 10}}}
qwen: {{actors: 1, max_running_jobs: 4, requests_per_minute: 600}}
offline: {{actors: 1, max_running_jobs: 4}}
"""


class App:
    """`daygen up` in a subprocess; `start()` returns once it says it is running."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.printed: list[str] = []
        self.reader: asyncio.Task | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *DAYGEN, "up", env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        ready = asyncio.Event()

        async def read() -> None:
            assert self.process is not None and self.process.stdout is not None
            while line := await self.process.stdout.readline():
                self.printed.append(line.decode(errors="replace"))
                if "Press Ctrl-C" in self.printed[-1]:
                    ready.set()

        self.reader = asyncio.create_task(read())
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({waiting, self.reader}, timeout=180, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiting.cancel()
            raise AssertionError("daygen up did not start:\n" + "".join(self.printed[-40:]))

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGINT)
        await asyncio.wait_for(self.process.wait(), 90)
        if self.reader is not None:
            await self.reader
        assert self.process.returncode == 0, "".join(self.printed[-40:])


@pytest.fixture
def world(server_urls, tmp_path):
    """A database, fakes and a receiver of the restarted app's own."""
    with private_database(server_urls[0]) as database_url, FakeIdeogram(inflight_limit=100) as ideogram:
        with WebhookReceiver() as receiver:
            pools = tmp_path / "providers.yaml"
            pools.write_text(POOLS)
            port = free_port()
            env = clean_env(
                DAYGEN_HOME=str(tmp_path / "home"),
                DAYGEN_PORT=str(port),
                DAYGEN_DATABASE_URL=database_url,
                DAYGEN_REDIS_URL=server_urls[1],
                DAYGEN_REDIS_NAMESPACE=f"daygen-restart-{secrets.token_hex(4)}",
                DAYGEN_STORAGE_URL=f"file://{tmp_path / 'objects'}",
                DAYGEN_JWT_SECRET=secrets.token_urlsafe(32),
                DAYGEN_RAY_DASHBOARD="false",
                DAYGEN_LOG_LEVEL="WARNING",
                DAYGEN_IDEOGRAM_BASE_URL=ideogram.base_url,
                DAYGEN_IDEOGRAM_API_KEY=ideogram.api_key,
                DAYGEN_PROVIDERS_CONFIG=str(pools),
                DAYGEN_BILLING_CONFIG=str(without_limits(tmp_path / "billing.yaml")),
                DAYGEN_JOB_LEASE_SECONDS="5",
                DAYGEN_API_REPLICAS="2",  # the reconnecting WebSocket may land on the other one
                DAYGEN_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
                DAYGEN_WEBHOOK_RETRY_SCHEDULE="0.5,0.5,0.5,0.5,0.5,0.5",
                DAYGEN_WEBHOOK_POLL_SECONDS="0.1",
            )
            yield {
                "env": env,
                "base": f"http://127.0.0.1:{port}",
                "database_url": database_url,
                "ideogram": ideogram,
                "receiver": receiver,
            }


async def listen(
    url: str,
    after: int,
    frames: list[dict],
    done: set[str],
    job_ids: set[str],
    all_started: asyncio.Event | None = None,
) -> None:
    """user:me from `after` on, until every job has ended or the server goes away; `all_started` is set
    once every job's start has arrived."""
    started: set[str] = set()
    try:
        async with connect(url) as socket:
            await socket.send(json.dumps({"action": "subscribe", "channel": "user:me", "lastEventId": after}))
            while not job_ids <= done:
                frame = json.loads(await socket.recv())
                if "id" in frame:
                    frames.append(frame)
                    if frame["type"] in TERMINAL:
                        done.add(frame["jobId"])
                    if frame["type"] == "job.started":
                        started.add(frame["jobId"])
                        if all_started is not None and job_ids <= started:
                            all_started.set()
    except (ConnectionClosed, OSError):
        pass


async def test_a_restart_with_fifty_jobs_in_flight_loses_none_and_charges_each_once(world):
    app = App(world["env"])
    engine = make_engine(world["database_url"].replace("postgresql://", "postgresql+asyncpg://"), pool_size=2)
    sessions = make_sessionmaker(engine)
    ideogram: FakeIdeogram = world["ideogram"]
    receiver: WebhookReceiver = world["receiver"]
    try:
        await app.start()
        async with httpx.AsyncClient(base_url=world["base"], timeout=60) as client:
            account = (
                await client.post("/v1/auth/signup", json={"email": "r@example.com", "password": "restart!"})
            ).json()
            headers = bearer(account["accessToken"])
            await set_balance(sessions, account["user"]["id"], Decimal(JOBS + 10))
            hook = await client.post("/v1/webhooks", json={"url": receiver.url("/restart")}, headers=headers)
            assert hook.status_code == 201, hook.text

            ws_url = world["base"].replace("http://", "ws://") + f"/v1/ws?token={account['accessToken']}"
            ideogram.hang_next(times=JOBS, endpoint="generate")
            jobs = [{"operation": "ideogram.generate", "params": {"prompt": f"in flight {i}"}} for i in range(JOBS)]
            results = (await client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=headers)).json()["results"]
            assert [r["status"] for r in results] == [202] * JOBS
            job_ids = {r["jobId"] for r in results}
            frames: list[dict] = []
            done: set[str] = set()
            all_started = asyncio.Event()
            before = asyncio.create_task(listen(ws_url, 0, frames, done, job_ids, all_started))
            await asyncio.to_thread(ideogram.wait_until_hung, JOBS, 60)
            await asyncio.wait_for(all_started.wait(), 60)  # the subscriber has heard of every job

        await app.stop()  # every job is mid-call
        await asyncio.wait_for(before, 30)
        ideogram.release_hung()
        assert done == set(), "nothing ended before the stop"

        await app.start()
        last = max(f["id"] for f in frames)
        await asyncio.wait_for(listen(ws_url, last, frames, done, job_ids), 120)

        async with httpx.AsyncClient(base_url=world["base"], timeout=60) as client:
            for job_id in job_ids:
                job = (await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers)).json()
                assert job["status"] == "succeeded" and job["attempt"] >= 2, job  # taken over after the stop
            me = (await client.get("/v1/auth/me", headers=headers)).json()
        assert me["credits"] == 10, "each of the fifty jobs charged exactly once"
    finally:
        await app.stop()

    ids = [f["id"] for f in frames]
    assert len(ids) == len(set(ids)) and ids == sorted(ids), "every event once, in order, across the reconnect"
    assert sorted(f["jobId"] for f in frames if f["type"] in TERMINAL) == sorted(job_ids)
    async with sessions() as session:
        ends = (
            await session.execute(
                select(JobEvent.job_id, func.count()).where(JobEvent.type.in_(TERMINAL)).group_by(JobEvent.job_id)
            )
        ).all()
        assert {str(job_id): count for job_id, count in ends} == dict.fromkeys(job_ids, 1)
        settlements = (
            await session.execute(
                select(LedgerEntry.job_id, func.array_agg(LedgerEntry.kind))
                .where(LedgerEntry.job_id.is_not(None))
                .group_by(LedgerEntry.job_id)
            )
        ).all()
        assert {str(job_id): sorted(kinds) for job_id, kinds in settlements} == dict.fromkeys(
            job_ids, ["commit", "reserve"]
        )
    await engine.dispose()
    delivered = await asyncio.to_thread(receiver.wait_for, JOBS, "/restart", 60)
    ids_by_job: dict[str, set[str]] = {}
    for delivery in delivered:
        ids_by_job.setdefault(delivery.json["data"]["jobId"], set()).add(delivery.headers["webhook-id"])
    assert set(ids_by_job) == job_ids, "the endpoint saw every job's end"
    assert all(len(ids) == 1 for ids in ids_by_job.values()), "one message per end, however often it was sent"
