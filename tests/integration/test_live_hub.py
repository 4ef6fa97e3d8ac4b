"""The replica's event hub against real Redis and Postgres: an announcement is handed out as it comes
only when it follows the last event handed out; else it rings, and the log decides."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import sqlalchemy
from sqlalchemy import select, update

from serve_app import live as live_module
from serve_app.live import EventHub, Listener
from storage.events import Event, JobEvents, LogRead, append_event
from storage.models import Job, JobEvent
from storage.redis import make_redis
from tests.integration.test_job_lifecycle import make_user, queued_job, someone_waits_for
from tests.integration.test_shared_limits import eventually


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
    listener = Listener(owner, max_pending=100, every_job=True)
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
    listener = Listener(owner, max_pending=100, job_ids=[job_id])
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
    listeners = [Listener(owner, max_pending=100, job_ids=[job_id]) for _ in range(5)]
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


async def test_a_waiter_that_joins_while_its_users_group_starts_still_gets_an_end_after_its_read(
    sessions, live, monkeypatch
):
    """A waiter joins, reads the job, and waits for its end unless the read showed it. Here a second
    waiter joins while the first one's join still reads where the user's log stands, and the job
    ends in between: the second must either see the end in its read, or receive it."""
    hub, events = live.hub, live.events
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    held = asyncio.Event()
    read = hub.read

    async def held_read(what):
        await held.wait()  # the first join's read of the log, held back until the job has ended
        return await read(what)

    monkeypatch.setattr(hub, "read", held_read)
    first, second = (Listener(owner, max_pending=100, job_ids=[job_id]) for _ in range(2))

    async def waiter(listener: Listener) -> str:
        await hub.join(listener)
        async with sessions() as session:
            return await session.scalar(select(Job.status).where(Job.id == job_id))

    first_waits = asyncio.create_task(waiter(first))
    second_waits = asyncio.create_task(waiter(second))
    for _ in range(20):  # everything that can run without the held read, runs
        await asyncio.sleep(0)
    async with sessions.begin() as session:
        await session.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
        end = await append_event(session, job_id=job_id, owner_id=owner, type="job.succeeded", data={})
    await events.publish(end)
    held.set()
    try:
        for waited, listener in ((first_waits, first), (second_waits, second)):
            if await waited != "succeeded":
                assert [e.id for e in await take(listener, 1)] == [end.id], "it read the job running"
    finally:
        hub.leave(first)
        hub.leave(second)


async def test_many_reads_of_the_log_are_answered_together_each_with_only_its_own_events(sessions, live):
    """What a replica's sockets ask at once (subscribes, replays, the hub's pulls) is read in one go:
    each read still gets its own owner's events, of its job or of all, after its id, a page at most."""
    alice, bob = await make_user(sessions), await make_user(sessions)
    jobs = {alice: [await queued_job(sessions, alice) for _ in range(2)], bob: [await queued_job(sessions, bob)]}
    async with sessions.begin() as session:
        for n in range(4):
            for owner, owned in jobs.items():
                for job_id in owned:
                    await append_event(session, job_id=job_id, owner_id=owner, type="job.progress", data={"n": n})
    async with sessions() as session:  # what the log holds, read plainly
        stmt = select(JobEvent.id, JobEvent.job_id).where(JobEvent.owner_id.in_([alice, bob])).order_by(JobEvent.id)
        log = (await session.execute(stmt)).all()
    a1, a2 = jobs[alice]
    [b1] = jobs[bob]
    of_job = {job_id: [i for i, j in log if j == job_id] for job_id in (a1, a2, b1)}
    of_alice = sorted(of_job[a1] + of_job[a2])
    reads = [
        (LogRead(alice, a1, 0), of_job[a1]),  # a job of hers, from its start
        (LogRead(alice, a2, of_job[a2][1]), of_job[a2][2:]),  # after its second event
        (LogRead(alice, after=0), of_alice),  # all her jobs
        (LogRead(alice, after=of_alice[4]), of_alice[5:]),
        (LogRead(alice), []),  # from now on: nothing yet
        (LogRead(alice, b1, 0), None),  # Bob's job: not hers
        (LogRead(bob, b1, 0), of_job[b1]),
        (LogRead(bob, uuid.uuid4(), 0), None),  # no such job
    ]
    statements = []

    def count(_connection, _cursor, statement, *_) -> None:
        statements.append(statement)

    sync_engine = sessions.kw["bind"].sync_engine
    sqlalchemy.event.listen(sync_engine, "before_cursor_execute", count)
    try:
        pages = await asyncio.gather(*(live.hub.read(read) for read, _ in reads))
    finally:
        sqlalchemy.event.remove(sync_engine, "before_cursor_execute", count)

    assert [None if page is None else [e.id for e in page.events] for page in pages] == [ids for _, ids in reads]
    assert pages[4].after == of_alice[-1], "a read from now on starts at her newest event"
    # One statement each for the jobs' owners, the newest ids, the pages by user and the pages by job.
    assert len(statements) <= 4, statements


async def test_a_read_of_the_log_answers_a_page_at_most(sessions, live, monkeypatch):
    monkeypatch.setattr(live_module, "PAGE", 3)
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    async with sessions.begin() as session:
        for n in range(4):
            await append_event(session, job_id=job_id, owner_id=owner, type="job.progress", data={"n": n})
    first = await live.hub.read(LogRead(owner, job_id, 0))
    rest = await live.hub.read(LogRead(owner, job_id, first.events[-1].id))
    assert [e.type for e in first.events + rest.events] == ["job.queued"] + ["job.progress"] * 4
    assert (len(first.events), len(rest.events)) == (3, 2)


async def test_an_owners_event_ids_commit_in_order_so_a_reader_never_finds_a_smaller_one_later(sessions):
    """Two transactions append events of one owner: the second waits for the first to commit before
    it draws its id, else it could commit a larger id first and a reader past it would skip the smaller."""
    owner = await make_user(sessions)
    first_job, second_job = await queued_job(sessions, owner), await queued_job(sessions, owner)

    async def append_later() -> int:
        async with sessions.begin() as session:
            event = await append_event(session, job_id=second_job, owner_id=owner, type="job.progress", data={})
            return event.id

    async with sessions() as first:
        earlier = await append_event(first, job_id=first_job, owner_id=owner, type="job.progress", data={})
        later = asyncio.create_task(append_later())
        await eventually(functools.partial(someone_waits_for, first))
        assert not later.done()
        await first.commit()
    assert await later > earlier.id


async def test_a_batch_of_events_is_one_stream_entry_per_owner_with_each_owners_events_in_id_order(sessions, live):
    owners = [await make_user(sessions) for _ in range(2)]
    jobs = [await queued_job(sessions, owner) for owner in owners]
    written = []
    for n in range(3):
        for owner, job_id in zip(owners, jobs, strict=True):
            async with sessions.begin() as session:
                written.append(
                    await append_event(session, job_id=job_id, owner_id=owner, type="job.progress", data={"n": n})
                )
    await live.events.publish(*reversed(written))
    for owner, job_id in zip(owners, jobs, strict=True):
        [(_, fields)] = await live.events.redis.xrange(live.events.user_stream(owner))
        announced = json.loads(fields[b"events"])
        assert [e["id"] for e in announced] == sorted(e.id for e in written if e.owner_id == owner)
        assert {e["job"] for e in announced} == {str(job_id)}
        assert [e["data"] for e in announced] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert all(e["type"] == "job.progress" and e["at"] for e in announced)


async def test_events_announced_in_order_are_handed_out_without_reading_the_log(sessions, live, monkeypatch):
    hub, events = live.hub, live.events
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    reads = []
    real_read_logs = live_module.read_logs

    async def counted(session, wanted, page_size):
        reads.extend(wanted)
        return await real_read_logs(session, wanted, page_size)

    monkeypatch.setattr(live_module, "read_logs", counted)
    listener = Listener(owner, max_pending=100, job_ids=[job_id])
    await hub.join(listener)
    try:
        assert len(reads) == 1, "joining reads where the log stands"
        written = []
        for type in ["job.started", "job.progress", "job.succeeded"]:
            async with sessions.begin() as session:
                written.append(
                    await append_event(session, job_id=job_id, owner_id=owner, type=type, data={"type": type})
                )
            await events.publish(written[-1])
            [got] = await take(listener, 1)
            assert got == written[-1]
        assert [e.id - written[0].id for e in written] == [0, 1, 2], "no one else's event drew an id between"
        assert len(reads) == 1
    finally:
        hub.leave(listener)


async def test_an_announcement_that_does_not_directly_follow_the_last_event_handed_out_is_read_from_the_log(
    sessions, live
):
    hub, events = live.hub, live.events
    owner, someone_else = await make_user(sessions), await make_user(sessions)
    job_id, their_job = await queued_job(sessions, owner), await queued_job(sessions, someone_else)
    listener = Listener(owner, max_pending=100, every_job=True)
    await hub.join(listener)

    async def progress(owner: uuid.UUID, job_id: uuid.UUID, n: int) -> Event:
        async with sessions.begin() as session:
            return await append_event(session, job_id=job_id, owner_id=owner, type="job.progress", data={"n": n})

    try:
        written = [await progress(owner, job_id, n) for n in range(2)]
        # The first one's announcement was lost (Redis blipped): the second's id is not the next.
        await events.publish(written[1])
        assert [e.id for e in await take(listener, 2)] == [e.id for e in written]
        # Another user's event drew the id between: the next of ours can't tell it from one of ours.
        await progress(someone_else, their_job, 0)
        written.append(await progress(owner, job_id, 2))
        await events.publish(written[2])
        assert await take(listener, 1) == [written[2]]
        await events.publish(*written)  # all handed out already: nothing twice
        written.append(await progress(owner, job_id, 3))
        await events.redis.xadd(events.user_stream(owner), {"events": b"not json"})
        await events.publish(written[3])
        assert await take(listener, 1) == [written[3]]
        assert listener.queue.empty()
    finally:
        hub.leave(listener)
