"""The replica's event hub against real Redis and Postgres: announcements only ring, the log decides."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from serve_app.live import EventHub, Listener
from storage.events import JobEvents, append_event
from storage.redis import make_redis
from tests.integration.test_job_lifecycle import make_user, queued_job


@dataclass
class Hub:
    hub: EventHub
    events: JobEvents


@pytest.fixture
async def live(sessions, settings) -> AsyncIterator[Hub]:
    """A hub with a Redis client of its own, announcing on a namespace of its own."""
    redis = make_redis(settings.redis_url)
    events = JobEvents(make_redis(settings.redis_url), f"{settings.redis_namespace}:hub-{uuid.uuid4().hex}")
    hub = EventHub(redis, events, sessions)
    yield Hub(hub, events)
    await hub.close()
    await redis.aclose()
    await events.redis.aclose()


async def take(listener: Listener, count: int) -> list:
    async with asyncio.timeout(10):
        return [await listener.queue.get() for _ in range(count)]


async def test_events_announced_out_of_order_reach_a_listener_once_each_in_id_order(sessions, live):
    hub, events = live.hub, live.events
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    listener = Listener(owner, max_pending=100)
    listener.every_job = True
    await hub.join(listener)
    try:
        written = []
        for n in range(3):
            async with sessions.begin() as session:
                written.append(
                    await append_event(session, job_id=job_id, owner_id=owner, type="job.progress", data={"n": n})
                )
        # Two jobs' dispatch tasks may announce in the other order than they committed.
        await events.publish(written[2])
        await events.publish(written[0], written[1])
        got = await take(listener, 3)
        assert [e.id for e in got] == [e.id for e in written]
        async with sessions.begin() as session:
            later = await append_event(session, job_id=job_id, owner_id=owner, type="job.succeeded", data={})
        await events.publish(later)
        assert [e.id for e in await take(listener, 1)] == [later.id]
        assert listener.queue.empty()
    finally:
        hub.leave(listener)


async def test_a_listener_that_joins_later_gets_only_what_comes_after(sessions, live):
    hub, events = live.hub, live.events
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    async with sessions.begin() as session:
        before = await append_event(session, job_id=job_id, owner_id=owner, type="job.started", data={})
    await events.publish(before)
    listener = Listener(owner, max_pending=100)
    listener.job_ids = {job_id}
    await hub.join(listener)
    try:
        async with sessions.begin() as session:
            after = await append_event(session, job_id=job_id, owner_id=owner, type="job.succeeded", data={})
        await events.publish(after)
        assert [e.id for e in await take(listener, 1)] == [after.id]
    finally:
        hub.leave(listener)


async def test_sockets_of_one_user_joining_at_the_same_time_all_get_live_events(sessions, live):
    hub, events = live.hub, live.events
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    listeners = [Listener(owner, max_pending=100) for _ in range(5)]
    for listener in listeners:
        listener.job_ids = {job_id}
    await asyncio.gather(*map(hub.join, listeners))
    try:
        async with sessions.begin() as session:
            event = await append_event(session, job_id=job_id, owner_id=owner, type="job.succeeded", data={})
        await events.publish(event)
        for listener in listeners:
            assert [e.id for e in await take(listener, 1)] == [event.id]
    finally:
        for listener in listeners:
            hub.leave(listener)
