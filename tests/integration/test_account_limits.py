"""Limits the ledger judges a job by, beside the balance, on the real Postgres: open jobs at once,
credits a day and a month (the balance row's counters, migration 0011)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import delete, select, text, update

from daygen.ids import uuid7
from pipelines.jobs import QueueAnswer, expire_vanished, queue_jobs
from storage import ledger
from storage.jobs import NewJob
from storage.models import PIPELINE, Job, LedgerBalance, LedgerEntry, UsageRecord
from storage.users import create_user


async def account(sessions, credits: int, plan: str = "free") -> uuid.UUID:
    """A new user with `credits` granted at signup, on `plan`."""
    async with sessions() as session:
        user = await create_user(
            session,
            email=f"account-{uuid.uuid4().hex[:10]}@example.com",
            password_hash="!",
            display_name=None,
            signup_credits=Decimal(credits),
            plan=plan,
        )
        return user.id


def job(owner: uuid.UUID, caps: ledger.Caps, cost: str = "1") -> NewJob:
    return NewJob(
        id=uuid7(),
        owner_id=owner,
        operation="offline.generate",
        provider="offline",
        params={"prompt": "a lighthouse"},
        cost=Decimal(cost),
        caps=caps,
    )


async def queue(sessions, *jobs: NewJob) -> list[QueueAnswer]:
    async with sessions.begin() as session:
        answers, _ = await queue_jobs(session, list(jobs))
    return answers


async def standing(sessions, owner: uuid.UUID) -> ledger.Standing:
    async with sessions() as session:
        return await ledger.standing(session, owner)


async def test_a_job_past_the_open_jobs_limit_is_refused_and_one_more_fits_once_one_ends(sessions):
    owner = await account(sessions, 10)
    caps = ledger.Caps(concurrent_jobs=2)
    jobs = [job(owner, caps) for _ in range(3)]
    first = await queue(sessions, *jobs)
    assert [a.refusal for a in first] == [None, None, "concurrent_jobs"]
    assert [a.outcome for a in first] == ["queued", "queued", "refused"]
    assert first[2].used == 2 and first[2].balance == 8  # nothing held for the refused one
    [refused] = await queue(sessions, job(owner, caps))
    assert refused.refusal == "concurrent_jobs"
    async with sessions.begin() as session:  # one ends
        await session.execute(update(Job).where(Job.id == jobs[0].id).values(status="succeeded"))
    [fits] = await queue(sessions, job(owner, caps))
    assert fits.outcome == "queued"
    # Without a cap the same account queues freely.
    assert [a.outcome for a in await queue(sessions, job(owner, ledger.NO_CAPS))] == ["queued"]


async def test_submits_at_once_never_take_an_account_past_its_open_jobs_limit(sessions):
    owner = await account(sessions, 100)
    caps = ledger.Caps(concurrent_jobs=3)
    answers = await asyncio.gather(*(queue(sessions, job(owner, caps)) for _ in range(12)))
    assert sorted(a.outcome for [a] in answers) == ["queued"] * 3 + ["refused"] * 9
    assert (await standing(sessions, owner)).balance == 97


async def test_credits_a_day_count_what_was_held_less_what_was_given_back(sessions):
    owner = await account(sessions, 20)
    caps = ledger.Caps(credits_per_day=Decimal(3))
    jobs = [job(owner, caps, "1.5"), job(owner, caps, "1.5"), job(owner, caps, "0.5")]
    answers = await queue(sessions, *jobs)
    assert [a.refusal for a in answers] == [None, None, "credits_per_day"]
    assert [a.outcome for a in answers] == ["queued", "queued", "refused"]
    assert answers[2].used == 3
    assert (await standing(sessions, owner)) == ledger.Standing(Decimal(17), Decimal(3), Decimal(3))
    async with sessions.begin() as session:  # the first job failed: all of it given back
        assert await ledger.settle(session, job_id=jobs[0].id, charged=Decimal(0)) == "release"
    assert (await standing(sessions, owner)) == ledger.Standing(Decimal("18.5"), Decimal("1.5"), Decimal("1.5"))
    [fits] = await queue(sessions, job(owner, caps, "1.5"))
    assert fits.outcome == "queued"


async def test_the_day_counter_starts_again_on_a_new_day_and_the_month_counter_on_a_new_month(sessions):
    owner = await account(sessions, 50)
    day = ledger.Caps(credits_per_day=Decimal(2))
    month = ledger.Caps(credits_per_month=Decimal(3))
    assert [a.outcome for a in await queue(sessions, job(owner, day), job(owner, day))] == ["queued", "queued"]
    assert (await queue(sessions, job(owner, day)))[0].refusal == "credits_per_day"
    assert (await queue(sessions, job(owner, month), job(owner, month)))[1].refusal == "credits_per_month"

    async def counted_since(days_ago: int) -> None:
        async with sessions.begin() as session:
            await session.execute(
                update(LedgerBalance)
                .where(LedgerBalance.account_id == owner)
                .values(spent_on=text(f"(now() AT TIME ZONE 'UTC')::date - {days_ago}"))
            )

    await counted_since(1)  # the counters were of yesterday
    standing_now = await standing(sessions, owner)
    assert standing_now.spent_today == 0
    yesterday_was_last_month = datetime.now(UTC).day == 1
    assert standing_now.spent_this_month == (0 if yesterday_was_last_month else 3)
    assert (await queue(sessions, job(owner, day)))[0].outcome == "queued"
    assert (await standing(sessions, owner)).spent_today == 1
    await counted_since(40)  # of another month
    assert (await standing(sessions, owner)).spent_this_month == 0
    assert [a.outcome for a in await queue(sessions, job(owner, month), job(owner, month))] == ["queued", "queued"]
    assert (await standing(sessions, owner)) == ledger.Standing(Decimal(44), Decimal(2), Decimal(2))


async def test_a_repeat_of_a_queued_job_is_answered_queued_even_past_its_limits(sessions):
    owner = await account(sessions, 5)
    caps = ledger.Caps(concurrent_jobs=1, credits_per_day=Decimal(1))
    first = job(owner, caps)
    assert [a.outcome for a in await queue(sessions, first)] == ["queued"]
    assert [a.outcome for a in await queue(sessions, first)] == ["queued"]
    assert (await standing(sessions, owner)).balance == 4


async def test_a_reservation_whose_job_vanished_is_given_back_once_and_others_are_left_alone(sessions):
    owner = await account(sessions, 10)
    kept, deleted = job(owner, ledger.NO_CAPS), job(owner, ledger.NO_CAPS, "2")
    await queue(sessions, kept, deleted)
    orphan = uuid7()  # held for a job that was never queued
    async with sessions.begin() as session:
        await ledger.reserve(session, account_id=owner, job_id=orphan, amount=Decimal(3))
        await session.execute(delete(Job).where(Job.id == deleted.id))  # as its account's deletion would
    assert (await standing(sessions, owner)).balance == 4

    async def settle(job_id: uuid.UUID, charged: Decimal) -> None:
        async with sessions.begin() as session:
            await ledger.settle(session, job_id=job_id, charged=charged)

    # Too young to be taken for vanished: nothing happens.
    await sweep(sessions, settle, datetime.now(UTC))
    assert (await standing(sessions, owner)).balance == 4
    later = datetime.now(UTC) + timedelta(hours=1)
    await sweep(sessions, settle, later)
    assert (await standing(sessions, owner)).balance == 9  # the deleted job's 2 and the orphan's 3
    await sweep(sessions, settle, later)
    assert (await standing(sessions, owner)).balance == 9
    async with sessions() as session:
        kinds = await session.execute(
            select(LedgerEntry.job_id, LedgerEntry.kind).where(
                LedgerEntry.account_id == owner, LedgerEntry.kind != "grant"
            )
        )
        assert sorted((str(j), k) for j, k in kinds) == sorted(
            [
                (str(kept.id), "reserve"),
                (str(deleted.id), "reserve"),
                (str(orphan), "reserve"),
                (str(deleted.id), "release"),
                (str(orphan), "release"),
            ]
        )


async def sweep(sessions, settle, now: datetime) -> None:
    """Round the whole ledger once, a page at a time, as the dispatcher's upkeep does."""
    after = 0
    while True:
        after = await expire_vanished(sessions, settle, after, now)
        if after == 0:
            return


async def test_the_reservation_sweep_pages_through_the_ledger_in_id_order(sessions):
    owner = await account(sessions, 10)
    jobs = [job(owner, ledger.NO_CAPS) for _ in range(3)]
    await queue(sessions, *jobs)
    async with sessions() as session:
        ids = list(
            (
                await session.execute(
                    select(LedgerEntry.id).where(LedgerEntry.account_id == owner, LedgerEntry.kind == "reserve")
                )
            ).scalars()
        )
        first = await ledger.vanished_reservations(
            session, after=min(ids) - 1, held_before=datetime.now(UTC) + timedelta(hours=1), limit=2
        )
        assert (first.looked_at, first.vanished) == (2, [])
        rest = await ledger.vanished_reservations(
            session, after=first.last_id, held_before=datetime.now(UTC) + timedelta(hours=1), limit=2
        )
        assert first.last_id == sorted(ids)[1]
        assert rest.looked_at >= 1 and rest.last_id >= max(ids)


def provider_job(owner: uuid.UUID, provider: str, caps: ledger.ProviderCaps, cost: str = "1") -> NewJob:
    share = ledger.ProviderShare(caps, Decimal(cost))
    return replace(job(owner, ledger.NO_CAPS, cost), provider=provider, provider_shares=(share,))


def chain_job(owner: uuid.UUID, steps: list[tuple[str, str]], *caps: ledger.ProviderCaps) -> NewJob:
    """A chain of (provider, cost) steps, each an operation of its provider's, with `caps` for some."""
    stored = [{"operation": f"{p}.generate", "params": {}, "input": None, "cost": c} for p, c in steps]
    cost = sum((Decimal(c) for _, c in steps), Decimal(0))
    shares = tuple(
        ledger.ProviderShare(cap, sum((Decimal(c) for p, c in steps if p == cap.provider), Decimal(0))) for cap in caps
    )
    return NewJob(uuid7(), owner, PIPELINE, steps[0][0], {"steps": stored}, cost, provider_shares=shares)


async def test_a_providers_open_jobs_limit_counts_every_accounts_jobs(sessions):
    provider = f"p-{uuid.uuid4().hex[:8]}"  # a provider of this test alone
    caps = ledger.ProviderCaps(provider, concurrent_jobs=3)
    first, second = await account(sessions, 10), await account(sessions, 10)
    answers = await queue(sessions, provider_job(first, provider, caps), provider_job(first, provider, caps))
    assert [a.outcome for a in answers] == ["queued", "queued"]
    answers = await queue(sessions, provider_job(second, provider, caps), provider_job(second, provider, caps))
    assert [(a.outcome, a.refusal) for a in answers] == [("queued", None), ("refused", "provider_concurrent_jobs")]
    assert answers[1].used == 3 and (await standing(sessions, second)).balance == 9
    # Another provider's jobs, and jobs with no provider limits, go on.
    assert [a.outcome for a in await queue(sessions, job(second, ledger.NO_CAPS))] == ["queued"]


async def test_submits_at_once_never_pass_a_providers_open_jobs_limit(sessions):
    provider = f"p-{uuid.uuid4().hex[:8]}"
    caps = ledger.ProviderCaps(provider, concurrent_jobs=4)
    owners = [await account(sessions, 10) for _ in range(3)]
    answers = await asyncio.gather(*(queue(sessions, provider_job(owners[i % 3], provider, caps)) for i in range(12)))
    assert sorted(a.outcome for [a] in answers) == ["queued"] * 4 + ["refused"] * 8


async def test_a_providers_credits_a_day_count_what_its_open_jobs_hold(sessions):
    provider = f"p-{uuid.uuid4().hex[:8]}"
    caps = ledger.ProviderCaps(provider, credits_per_day=Decimal(5))
    owner = await account(sessions, 20)
    answers = await queue(
        sessions,
        provider_job(owner, provider, caps, "2"),
        provider_job(owner, provider, caps, "2"),
        provider_job(owner, provider, caps, "2"),
    )
    assert [a.refusal for a in answers] == [None, None, "provider_credits_per_day"]
    assert answers[2].used == 4
    held_month = ledger.ProviderCaps(provider, credits_per_month=Decimal(4.5))
    [month] = await queue(sessions, provider_job(owner, provider, held_month, "1"))
    assert (month.refusal, month.used) == ("provider_credits_per_month", 4)


async def test_a_providers_credit_limits_count_what_its_calls_were_charged(sessions):
    provider = f"p-{uuid.uuid4().hex[:8]}"
    owner = await account(sessions, 20)
    async with sessions.begin() as session:  # a call made today, charged 3 credits
        session.add(
            UsageRecord(
                job_id=uuid7(),
                step=0,
                user_id=owner,
                provider=provider,
                operation="offline.generate",
                status="succeeded",
                images=3,
                upstream_ms=10,
                credits=Decimal(3),
                provider_cost=Decimal(0),
            )
        )
    caps = ledger.ProviderCaps(provider, credits_per_day=Decimal(5))
    answers = await queue(sessions, provider_job(owner, provider, caps, "3"), provider_job(owner, provider, caps, "2"))
    assert [(a.refusal, a.used) for a in answers] == [("provider_credits_per_day", 3), (None, 0)]


async def test_an_open_chains_finished_steps_count_once_against_a_providers_credits(sessions):
    provider = f"p-{uuid.uuid4().hex[:8]}"
    owner = await account(sessions, 20)
    caps = ledger.ProviderCaps(provider, credits_per_day=Decimal(5))
    chain = chain_job(owner, [(provider, "3"), (provider, "1")], caps)
    assert [a.outcome for a in await queue(sessions, chain)] == ["queued"]
    async with sessions.begin() as session:  # its first step ran, charged 3 of its 4 credits; it goes on
        await session.execute(update(Job).where(Job.id == chain.id).values(steps_done=1, status="running"))
        session.add(
            UsageRecord(
                job_id=chain.id,
                step=0,
                user_id=owner,
                provider=provider,
                operation=f"{provider}.generate",
                status="succeeded",
                images=1,
                upstream_ms=10,
                credits=Decimal(3),
                provider_cost=Decimal(0),
            )
        )
    # 3 charged and 1 still held: 4 of 5 used, not 7.
    answers = await queue(sessions, provider_job(owner, provider, caps), provider_job(owner, provider, caps))
    assert [(a.refusal, a.used) for a in answers] == [(None, 0), ("provider_credits_per_day", 5)]


async def test_a_chains_later_steps_count_against_their_providers_limits_from_the_submit(sessions):
    first, later = f"p-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
    owner = await account(sessions, 20)
    later_caps = ledger.ProviderCaps(later, concurrent_jobs=2, credits_per_day=Decimal(5))
    # The chain starts with `first` (no limits) and then takes 3 of `later`'s 5 credits a day.
    chain = chain_job(owner, [(first, "1"), (later, "3")], later_caps)
    assert [a.outcome for a in await queue(sessions, chain)] == ["queued"]
    # It is one of `later`'s open jobs already, its credits held: one more job of `later`'s fills both.
    answers = await queue(sessions, provider_job(owner, later, later_caps), provider_job(owner, later, later_caps))
    assert [(a.refusal, a.used, a.provider) for a in answers] == [
        (None, 0, None),
        ("provider_concurrent_jobs", 2, later),
    ]
    wide = ledger.ProviderCaps(later, credits_per_day=Decimal(5))
    [refused] = await queue(sessions, provider_job(owner, later, wide, "2"))
    assert (refused.outcome, refused.refusal, refused.used, refused.provider) == (
        "refused",
        "provider_credits_per_day",
        4,
        later,
    )
    # Another chain whose `later` part would pass the open-jobs limit is refused by `later`, naming it.
    [chained] = await queue(sessions, chain_job(owner, [(first, "1"), (later, "1")], later_caps))
    assert (chained.refusal, chained.provider) == ("provider_concurrent_jobs", later)


async def test_a_chain_stops_being_a_providers_open_job_once_its_steps_there_ran(sessions):
    provider, other = f"p-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
    owner = await account(sessions, 20)
    caps = ledger.ProviderCaps(provider, concurrent_jobs=1)
    chain = chain_job(owner, [(provider, "1"), (other, "1")], caps)
    assert [a.outcome for a in await queue(sessions, chain)] == ["queued"]
    assert [a.refusal for a in await queue(sessions, provider_job(owner, provider, caps))] == [
        "provider_concurrent_jobs"
    ]
    async with sessions.begin() as session:  # its step on `provider` ran; it goes on with `other`'s
        await session.execute(
            update(Job).where(Job.id == chain.id).values(steps_done=1, status="running", provider=other)
        )
    assert [a.outcome for a in await queue(sessions, provider_job(owner, provider, caps))] == ["queued"]
