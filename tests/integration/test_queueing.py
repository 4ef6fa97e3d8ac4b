"""Queuing jobs as the ledger does: credits held and job inserted in one transaction, safe to repeat."""

from __future__ import annotations

import asyncio
import functools
import uuid
from decimal import Decimal

from sqlalchemy import func, select

from daygen.ids import uuid7
from pipelines.jobs import QueueAnswer, one_key_each, queue_jobs
from storage import ledger
from storage.events import append_event
from storage.jobs import NewJob
from storage.models import Job, JobEvent, LedgerEntry
from tests.integration.test_job_lifecycle import make_user, someone_waits_for
from tests.integration.test_shared_limits import eventually

PARAMS = {"prompt": "queue", "width": 64, "height": 64, "seed": 1}


def new_job(owner: uuid.UUID, cost: str = "1", key: str | None = None) -> NewJob:
    return NewJob(
        uuid7(), owner, "offline.generate", "offline", PARAMS, Decimal(cost), idempotency_key=key, request_hash=key
    )


async def queue(sessions, jobs: list[NewJob]) -> list[QueueAnswer]:
    async with sessions.begin() as session:
        answers, _ = await queue_jobs(session, jobs)
    return answers


async def written(sessions, owner: uuid.UUID) -> tuple[int, int, int, Decimal]:
    """The owner's jobs, reservations, job.queued events and balance."""
    async with sessions() as session:
        jobs = await session.scalar(select(func.count()).where(Job.owner_id == owner))
        held = await session.scalar(
            select(func.count()).where(LedgerEntry.account_id == owner, LedgerEntry.kind == "reserve")
        )
        events = await session.scalar(
            select(func.count()).where(JobEvent.owner_id == owner, JobEvent.type == "job.queued")
        )
        return jobs, held, events, await ledger.balance(session, owner)


async def test_a_job_is_queued_with_its_credits_held_and_a_repeated_call_writes_nothing_more(sessions):
    owner = await make_user(sessions)  # 5 credits
    jobs = [new_job(owner, "2"), new_job(owner, "2")]
    async with sessions.begin() as session:
        answers, events = await queue_jobs(session, jobs)
    assert answers == [QueueAnswer("queued", Decimal(3)), QueueAnswer("queued", Decimal(1))]
    assert [(e.job_id, e.type) for e in events] == [(job.id, "job.queued") for job in jobs]
    assert await written(sessions, owner) == (2, 2, 2, Decimal(1))

    async with sessions.begin() as session:  # the ledger's call retried by Ray after it committed
        again, events = await queue_jobs(session, jobs)
    assert [a.outcome for a in again] == ["queued", "queued"] and events == []
    assert await written(sessions, owner) == (2, 2, 2, Decimal(1))


async def test_a_job_the_balance_cannot_cover_is_refused_and_leaves_no_row(sessions):
    owner = await make_user(sessions)
    answers = await queue(sessions, [new_job(owner, "4"), new_job(owner, "2"), new_job(owner, "1")])
    assert answers == [
        QueueAnswer("queued", Decimal(1)),
        QueueAnswer("refused", Decimal(1), refusal="credits"),
        QueueAnswer("queued", Decimal(0)),
    ]
    assert await written(sessions, owner) == (2, 2, 2, Decimal(0))


async def test_a_key_another_job_of_the_owner_has_is_answered_taken_and_nothing_is_held(sessions):
    owner, other = await make_user(sessions), await make_user(sessions)
    assert (await queue(sessions, [new_job(owner, key="k")]))[0].outcome == "queued"
    answers = await queue(sessions, [new_job(owner, key="k"), new_job(other, key="k")])
    assert [a.outcome for a in answers] == ["key_taken", "queued"], "keys are per owner"
    assert await written(sessions, owner) == (1, 1, 1, Decimal(4))


async def test_two_calls_with_one_key_at_once_queue_one_job_and_hold_its_credits_once(sessions):
    owner = await make_user(sessions)
    answers = await asyncio.gather(*(queue(sessions, [new_job(owner, key="race")]) for _ in range(4)))
    assert sorted(a.outcome for [a] in answers) == ["key_taken"] * 3 + ["queued"]
    assert await written(sessions, owner) == (1, 1, 1, Decimal(4))


async def test_queuing_waits_for_an_ending_transaction_of_the_same_owner_rather_than_deadlock(sessions):
    """A job's end appends its events (the owner's event log lock), then settles (the balance row).
    Queuing takes both too; had it locked the balance first, each would hold what the other waits for."""
    owner = await make_user(sessions)
    async with sessions() as ending:
        job = new_job(owner)
        await queue(sessions, [job])
        await append_event(ending, job_id=job.id, owner_id=owner, type="job.succeeded", data={})
        queuing = asyncio.create_task(queue(sessions, [new_job(owner)]))
        await eventually(functools.partial(someone_waits_for, ending))
        await ledger.settle(ending, job_id=job.id, charged=Decimal(1))  # waits for no one
        await ending.commit()
    assert [a.outcome for a in await queuing] == ["queued"]
    assert await written(sessions, owner) == (2, 2, 2, Decimal(3))


def test_an_owners_key_appears_once_a_round_and_the_rest_keep_their_order():
    a, b = uuid.uuid4(), uuid.uuid4()
    jobs = [new_job(a, key="x"), new_job(a), new_job(a, key="x"), new_job(b, key="x"), new_job(a, key="x")]
    rounds = one_key_each(jobs)
    assert rounds == [[jobs[0], jobs[1], jobs[3]], [jobs[2]], [jobs[4]]]
