"""The webhook outbox without Ray: rows written with the event, claimed, sent signed, retried, logged."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from pipelines.webhook_outbox import Outbox
from pipelines.webhooks import verify
from storage import webhooks as queries
from storage.events import NewEvent, append_event, append_events
from storage.models import Job, WebhookDelivery
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration.test_job_lifecycle import make_user, queued_job

LOOPBACK = frozenset({"127.0.0.1"})


@pytest.fixture(scope="module")
def receiver():
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
async def outbox(sessions):
    async def asset_url(key: str) -> str:
        return f"https://cdn.example.test/{key}"

    async with httpx.AsyncClient(trust_env=False) as http:
        yield Outbox(
            sessions,
            http,
            asset_url=asset_url,
            allowed_hosts=LOOPBACK,
            schedule=(60.0, 60.0),  # a retry is never due by itself here: tests move the clock
            rng=random.Random(1),
        )


async def job_with_hook(sessions, url: str | None) -> tuple[uuid.UUID, uuid.UUID]:
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    async with sessions.begin() as session:
        await session.execute(update(Job).where(Job.id == job_id).values(webhook_url=url))
    return owner, job_id


async def emit(sessions, owner, job_id, kind: str, data: dict | None = None) -> int:
    async with sessions.begin() as session:
        return (await append_event(session, job_id=job_id, owner_id=owner, type=kind, data=data or {})).id


async def send_until_quiet(outbox: Outbox) -> int:
    sent = 0
    while count := await outbox.send_due():
        sent += count
    return sent


async def test_a_jobs_end_is_written_to_the_outbox_with_the_event_and_sent_signed(sessions, outbox, receiver):
    path = f"/outbox-{uuid.uuid4().hex[:8]}"
    owner, job_id = await job_with_hook(sessions, receiver.url(path))
    await emit(sessions, owner, job_id, "job.started", {"status": "running"})
    event_id = await emit(sessions, owner, job_id, "job.failed", {"status": "failed"})
    async with sessions() as session:
        rows = (await session.execute(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))).scalars()
        [row] = list(rows)
    assert (row.event_id, row.event_type, row.status, row.endpoint_id) == (event_id, "job.failed", "pending", None)

    assert await send_until_quiet(outbox) >= 1
    [delivery] = await asyncio.to_thread(receiver.wait_for, 1, path)
    async with sessions() as session:
        [secret] = await queries.signing_secrets(session, owner, row.created_at)
    verify(secret, delivery.headers, delivery.body)
    assert delivery.headers["webhook-id"] == str(row.id)
    assert delivery.json["data"]["jobId"] == str(job_id) and delivery.json["type"] == "job.failed"


async def test_a_failed_attempt_is_due_again_and_a_dead_senders_claim_runs_out(sessions, outbox, receiver):
    path = f"/outbox-{uuid.uuid4().hex[:8]}"
    owner, job_id = await job_with_hook(sessions, receiver.url(path))
    receiver.answer_next(500, path=path)
    await emit(sessions, owner, job_id, "job.succeeded", {"status": "succeeded"})
    await send_until_quiet(outbox)
    async with sessions() as session:
        [row] = (await session.execute(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))).scalars()
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == ("pending", 1, 500, "HTTP 500")
    assert row.next_attempt_at > row.created_at, "due again later, on the schedule"
    # The schedule's wait, passed at once:
    async with sessions.begin() as session:
        await session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(next_attempt_at=func.now())
        )
    assert await send_until_quiet(outbox) == 1
    first, second = await asyncio.to_thread(receiver.wait_for, 2, path)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == str(row.id)
    async with sessions() as session:
        row = await session.get(WebhookDelivery, row.id)
    assert (row.status, row.attempts, row.last_status_code) == ("succeeded", 2, 200)

    # A sender that claimed a delivery and died: once its lease has run out, the row is claimed again.
    other_owner, other_job = await job_with_hook(sessions, receiver.url(path))
    await emit(sessions, other_owner, other_job, "job.canceled", {"status": "canceled"})
    async with sessions() as session:
        [claimed] = await queries.claim_due(session, limit=10, lease_seconds=60)
    assert claimed.job_id == other_job
    assert await send_until_quiet(outbox) == 0, "not while the claim holds"
    async with sessions.begin() as session:
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == claimed.id)
            .values(lease_expires_at=func.now() - timedelta(seconds=1))
        )
    assert await send_until_quiet(outbox) == 1
    third = (await asyncio.to_thread(receiver.wait_for, 3, path))[-1]
    assert third.headers["webhook-id"] == str(claimed.id)


async def test_no_webhook_url_and_no_endpoint_means_no_row(sessions):
    owner, job_id = await job_with_hook(sessions, None)
    await emit(sessions, owner, job_id, "job.succeeded")
    async with sessions() as session:
        rows = (await session.execute(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))).all()
    assert rows == []


async def test_each_event_goes_to_the_owners_enabled_endpoints_that_want_it_and_an_end_to_the_jobs_url(sessions):
    owner, job_id = await job_with_hook(sessions, "https://hooks.example.test/job")
    stranger = await make_user(sessions)
    async with sessions() as session:
        ends_only = await queries.create_endpoint(
            session, owner, url="https://a.example.test", description=None, event_types=["job.succeeded"]
        )
        everything = await queries.create_endpoint(
            session, owner, url="https://b.example.test", description=None, event_types=["job.started", "job.succeeded"]
        )
        off = await queries.create_endpoint(
            session, owner, url="https://c.example.test", description=None, event_types=["job.started", "job.succeeded"]
        )
        off_id = off.id
        await session.execute(update(type(off)).where(type(off).id == off_id).values(enabled=False))
        await session.commit()
        await queries.create_endpoint(
            session, stranger, url="https://d.example.test", description=None, event_types=["job.succeeded"]
        )
    async with sessions.begin() as session:
        started, succeeded = await append_events(
            session,
            [NewEvent(job_id, owner, "job.started", {}), NewEvent(job_id, owner, "job.succeeded", {"status": "ok"})],
        )
    async with sessions() as session:
        rows = (await session.execute(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))).scalars()
        got = sorted((r.event_id, r.event_type, str(r.endpoint_id), r.url, r.status) for r in rows)
    assert got == sorted(
        [
            (started.id, "job.started", str(everything.id), None, "pending"),
            (succeeded.id, "job.succeeded", str(ends_only.id), None, "pending"),
            (succeeded.id, "job.succeeded", str(everything.id), None, "pending"),
            (succeeded.id, "job.succeeded", "None", "https://hooks.example.test/job", "pending"),
        ]
    )
    assert succeeded.data == {"status": "ok"} and started.id < succeeded.id
