"""The job lifecycle without Ray: claims, leases, fencing, and what execute_job records."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text, update

from daygen.ids import uuid7
from daygen.settings import Settings
from pipelines.billing_config import BillingConfig
from pipelines.chains import PIPELINE, validate_steps
from pipelines.jobs import End, LeaseKeeper, ending, execute_job, recorder, settle_unsettled
from pipelines.steps import StepContext, StepOutcome, run_step
from storage import jobs as job_queries
from storage import ledger
from storage.events import JobEvents
from storage.models import Asset, Job, LedgerEntry, User
from storage.objects import ObjectStore
from storage.redis import make_redis
from tests.integration.test_shared_limits import eventually


def ender(sessions, publish) -> End:
    """`execute_job`'s `end`, as the ledger runs it: one (finish, charged) at a time through `ending`."""
    batch = ending(sessions, publish)

    async def end(finish, charged):
        return await batch((finish, charged))

    return end


async def make_user(sessions) -> uuid.UUID:
    async with sessions.begin() as session:
        user = User(id=uuid7(), email=f"{uuid.uuid4().hex}@example.com", password_hash="x", role="user")
        session.add(user)
        await session.flush()
        await ledger.append_entry(
            session, account_id=user.id, kind="grant", amount=Decimal(5), idempotency_key=f"g:{user.id}"
        )
        return user.id


async def queued_job(sessions, owner: uuid.UUID, prompt: str = "lifecycle") -> uuid.UUID:
    job_id = uuid7()
    async with sessions.begin() as session:
        await ledger.reserve(session, account_id=owner, job_id=job_id, amount=Decimal(1))
    async with sessions.begin() as session:
        await job_queries.insert_jobs(
            session,
            [
                job_queries.NewJob(
                    id=job_id,
                    owner_id=owner,
                    operation="offline.generate",
                    provider="offline",
                    params={"prompt": prompt, "width": 64, "height": 64, "seed": 1},
                    cost=Decimal(1),
                )
            ],
        )
    return job_id


async def claim_one(sessions, job_id: uuid.UUID, lease: float = 60) -> job_queries.ClaimedJob:
    while True:
        async with sessions() as session:
            claimed = await job_queries.claim_jobs(session, provider="offline", limit=50, lease_seconds=lease)
        for job in claimed:
            if job.id == job_id:
                return job
        assert claimed, "job was never claimable"


async def settle_with(sessions):
    async def settle(job_id: uuid.UUID, charged: Decimal):
        async with sessions.begin() as session:
            return await ledger.settle(session, job_id=job_id, charged=charged)

    return settle


async def test_a_claimed_job_is_not_claimed_again_while_its_lease_holds(sessions):
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    first = await claim_one(sessions, job_id)
    async with sessions() as session:
        again = await job_queries.claim_jobs(session, provider="offline", limit=50, lease_seconds=60)
    assert job_id not in [j.id for j in again]
    assert first.attempt == 1


async def test_an_expired_lease_is_reclaimed_and_the_old_worker_is_fenced_out(sessions):
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    stale = await claim_one(sessions, job_id)
    async with sessions.begin() as session:
        await session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=Job.created_at))
    fresh = await claim_one(sessions, job_id)
    assert fresh.attempt == stale.attempt + 1

    async with sessions() as session:
        late = job_queries.JobEnded(stale, status="failed", code="late", message="too late", data={"status": "failed"})
        assert await job_queries.record_finishes(session, [late]) == [None]
        assert await job_queries.renew_leases(session, [(stale.id, stale.attempt)], 60) == {}
        step = job_queries.StepFinished(stale, index=0, total=1, assets=[], result={}, events=[])
        assert await job_queries.record_finishes(session, [step]) == [None]
    announced = []

    async def announce(*events):
        announced.extend(events)

    end = ender(sessions, announce)
    assert await end(late, Decimal(0)) is False  # nor is its reservation settled
    async with sessions() as session:
        assert (await session.get(Job, job_id)).status == "running"
        kinds = (await session.execute(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id))).scalars().all()
        assert kinds == ["reserve"]

    ended = job_queries.JobEnded(fresh, status="failed", code="x", message="gave up", data={"status": "failed"})
    assert await end(ended, Decimal(0)) is True
    [event] = announced  # only the end that was written is announced
    async with sessions() as session:
        job = await session.get(Job, job_id)
        kinds = (await session.execute(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id))).scalars().all()
    assert (event.type, job.status, sorted(kinds)) == ("job.failed", "failed", ["release", "reserve"])


async def test_execute_job_stores_output_rows_commits_the_credit_and_publishes_events(sessions, settings, tmp_path):
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    claimed = await claim_one(sessions, job_id)
    store = ObjectStore(f"file://{tmp_path}")
    redis = make_redis(settings.redis_url)
    events = JobEvents(redis, settings.redis_namespace + ":lifecycle")

    async def step(operation, params, inputs):
        return await run_step(StepContext(store=store), operation, params, inputs)

    status = await execute_job(
        claimed,
        sessions=sessions,
        run_step=step,
        end=ender(sessions, events.publish),
        record=recorder(sessions),
        publish=events.publish,
    )

    assert status == "succeeded"
    async with sessions() as session:
        job = await session.get(Job, job_id)
        [asset] = (await session.execute(select(Asset).where(Asset.job_id == job_id))).scalars().all()
        kinds = (await session.execute(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id))).scalars().all()
        assert await ledger.balance(session, owner) == 4
    assert (job.status, job.progress, job.result["assetIds"]) == ("succeeded", 100, [str(asset.id)])
    assert (asset.width, asset.height, asset.content_type, asset.source) == (64, 64, "image/png", "job")
    assert await store.exists(asset.key)
    assert sorted(kinds) == ["commit", "reserve"]
    entries = await redis.xrange(events.user_stream(owner))
    announced = [event for _, fields in entries for event in json.loads(fields[b"events"])]
    types = [event["type"] for event in announced if event["job"] == str(job_id)]
    assert types == ["job.step_succeeded", "job.succeeded"]  # job.started is announced by the claimer
    await redis.aclose()


async def test_a_failed_step_fails_the_job_and_releases_the_credit(sessions, settings):
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    claimed = await claim_one(sessions, job_id)
    redis = make_redis(settings.redis_url)
    lifecycle = JobEvents(redis, settings.redis_namespace + ":lifecycle")

    async def broken_step(operation, params, inputs):
        return StepOutcome(error_code="provider_unavailable", error_message="upstream down")

    status = await execute_job(
        claimed,
        sessions=sessions,
        run_step=broken_step,
        end=ender(sessions, lifecycle.publish),
        record=recorder(sessions),
        publish=lifecycle.publish,
    )
    assert status == "failed"
    async with sessions() as session:
        job = await session.get(Job, job_id)
        assert (job.status, job.error_code, job.error_message) == ("failed", "provider_unavailable", "upstream down")
        assert await ledger.balance(session, owner) == 5
    await redis.aclose()


async def canceled_without_release(sessions, owner: uuid.UUID, count: int) -> list[uuid.UUID]:
    """Queued jobs canceled by the API, each release lost to a crash right after."""
    job_ids = [uuid7() for _ in range(count)]
    async with sessions.begin() as session:
        await ledger.append_entry(
            session, account_id=owner, kind="grant", amount=Decimal(count), idempotency_key=f"g:{uuid.uuid4()}"
        )
        await ledger.reserve_many(session, [ledger.Reservation(owner, job_id, Decimal(1)) for job_id in job_ids])
    async with sessions.begin() as session:
        new = [
            job_queries.NewJob(
                id=job_id,
                owner_id=owner,
                operation="offline.generate",
                provider="offline",
                params={"prompt": "never run", "width": 64, "height": 64, "seed": 1},
                cost=Decimal(1),
            )
            for job_id in job_ids
        ]
        await job_queries.insert_jobs(session, new)
    async with sessions.begin() as session:
        ids = text("UPDATE jobs SET status = 'canceled', completed_at = now() WHERE id = ANY(:ids)")
        await session.execute(ids.bindparams(ids=job_ids))
    return job_ids


async def settlements(sessions, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    async with sessions() as session:
        rows = await session.execute(
            select(LedgerEntry.job_id, LedgerEntry.kind).where(LedgerEntry.job_id.in_(job_ids)).order_by(LedgerEntry.id)
        )
    found: dict[uuid.UUID, list[str]] = {job_id: [] for job_id in job_ids}
    for job_id, kind in rows:
        found[job_id].append(kind)
    return found


async def test_a_reconciliation_pass_settles_what_ended_since_the_last_began_and_a_first_pass_everything(sessions):
    owner = await make_user(sessions)
    old, recent = await canceled_without_release(sessions, owner, 2)
    async with sessions.begin() as session:
        await session.execute(
            update(Job).where(Job.id == old).values(completed_at=func.now() - text("interval '1 day'"))
        )
    settle = await settle_with(sessions)
    async with sessions() as session:
        an_hour_ago = (await session.execute(select(func.now() - text("interval '1 hour'")))).scalar_one()

    ended_since = await settle_unsettled(sessions, settle, an_hour_ago)
    assert await settlements(sessions, [old, recent]) == {old: ["reserve"], recent: ["reserve", "release"]}
    assert ended_since > an_hour_ago  # the next pass starts later

    await settle_unsettled(sessions, settle)  # a dispatcher starting: every job
    assert await settlements(sessions, [old, recent]) == {old: ["reserve", "release"], recent: ["reserve", "release"]}
    async with sessions() as session:
        assert await ledger.balance(session, owner) == 5 + 2


async def test_one_reconciliation_pass_settles_every_unsettled_job_however_many(sessions):
    owner = await make_user(sessions)
    job_ids = await canceled_without_release(sessions, owner, 250)
    settle = await settle_with(sessions)
    async with sessions() as session:
        before = (await session.execute(select(func.now() - text("interval '1 minute'")))).scalar_one()

    await settle_unsettled(sessions, settle, before)

    assert set(map(tuple, (await settlements(sessions, job_ids)).values())) == {("reserve", "release")}
    async with sessions() as session:
        assert await ledger.balance(session, owner) == 5 + 250


async def test_a_crash_between_finishing_and_settling_is_repaired_once(sessions):
    owner = await make_user(sessions)
    job_id = await queued_job(sessions, owner)
    claimed = await claim_one(sessions, job_id)
    async with sessions.begin() as session:  # ended without the ledger: as a queued job canceled by the API
        step = job_queries.StepFinished(claimed, index=0, total=1, assets=[], result={}, events=[])
        assert await job_queries.record_finishes(session, [step]) == [[]]
    settle = await settle_with(sessions)

    ended_since = await settle_unsettled(sessions, settle)
    await settle_unsettled(sessions, settle, ended_since)

    async with sessions() as session:
        kinds = (await session.execute(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id))).scalars().all()
        assert sorted(kinds) == ["commit", "reserve"]
        assert await ledger.balance(session, owner) == 4


async def queued_chain(sessions, owner: uuid.UUID) -> uuid.UUID:
    steps = validate_steps(
        [
            {"operation": "offline.generate", "params": {"prompt": "chain", "width": 64, "height": 64, "seed": 2}},
            {"operation": "offline.upscale", "input": "previous", "params": {"factor": 2}},
            {"operation": "offline.describe", "input": "previous"},
        ],
        BillingConfig.load(Settings(_env_file=None).billing_config).price,
    )
    cost = sum((s.cost for s in steps), Decimal(0))
    job_id = uuid7()
    async with sessions.begin() as session:
        await ledger.reserve(session, account_id=owner, job_id=job_id, amount=cost)
    async with sessions.begin() as session:
        params = {"steps": [s.stored() for s in steps]}
        await job_queries.insert_jobs(
            session, [job_queries.NewJob(job_id, owner, PIPELINE, steps[0].provider, params, cost)]
        )
    return job_id


async def test_an_attempt_after_a_crash_resumes_at_the_unfinished_step_and_charges_once(sessions, settings, tmp_path):
    owner = await make_user(sessions)
    job_id = await queued_chain(sessions, owner)
    store = ObjectStore(f"file://{tmp_path}")
    redis = make_redis(settings.redis_url)
    events = JobEvents(redis, settings.redis_namespace + ":lifecycle")
    ran: list[str] = []
    stuck = asyncio.Event()

    async def step(operation, params, inputs):
        ran.append(operation)
        if operation == "offline.upscale" and ran.count(operation) == 1:
            stuck.set()
            await asyncio.Event().wait()  # the first worker dies here: it never answers
        return await run_step(StepContext(store=store), operation, params, inputs)

    first = await claim_one(sessions, job_id)
    crashed = asyncio.create_task(
        execute_job(
            first,
            sessions=sessions,
            run_step=step,
            end=ender(sessions, events.publish),
            record=recorder(sessions),
            publish=events.publish,
        )
    )
    await stuck.wait()
    crashed.cancel()
    async with sessions.begin() as session:
        await session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=Job.created_at))

    second = await claim_one(sessions, job_id)
    assert (second.attempt, second.steps_done) == (2, 1)
    status = await execute_job(
        second,
        sessions=sessions,
        run_step=step,
        end=ender(sessions, events.publish),
        record=recorder(sessions),
        publish=events.publish,
    )

    assert status == "succeeded"
    assert ran == ["offline.generate", "offline.upscale", "offline.upscale", "offline.describe"]
    async with sessions() as session:
        job = await session.get(Job, job_id)
        widths = (await session.execute(select(Asset.width).where(Asset.job_id == job_id))).scalars().all()
        assert await ledger.balance(session, owner) == 5 - Decimal("3.5")
    assert (job.steps_done, job.progress) == (3, 100)
    assert sorted(widths) == [64, 128], "one image per image step, none from the lost attempt"
    assert "128x128" in job.result["text"]
    await redis.aclose()


async def test_a_chain_failing_at_its_last_step_is_charged_for_the_steps_that_ran(sessions, settings, tmp_path):
    owner = await make_user(sessions)
    job_id = await queued_chain(sessions, owner)
    claimed = await claim_one(sessions, job_id)
    redis = make_redis(settings.redis_url)
    lifecycle = JobEvents(redis, settings.redis_namespace + ":lifecycle")
    store = ObjectStore(f"file://{tmp_path}")

    async def step(operation, params, inputs):
        if operation == "offline.describe":
            return StepOutcome(error_code="provider_unavailable", error_message="down")
        return await run_step(StepContext(store=store), operation, params, inputs)

    status = await execute_job(
        claimed,
        sessions=sessions,
        run_step=step,
        end=ender(sessions, lifecycle.publish),
        record=recorder(sessions),
        publish=lifecycle.publish,
    )
    assert status == "failed"
    async with sessions() as session:
        job = await session.get(Job, job_id)
        assert await ledger.balance(session, owner) == 5 - 3, "generate (1) and upscale (2) ran; describe is given back"
    assert (job.status, job.steps_done, job.progress, job.error_code) == ("failed", 2, 66, "provider_unavailable")
    await redis.aclose()


async def test_the_lease_keeper_renews_every_held_job_in_one_go_and_passes_on_cancels(sessions):
    owner = await make_user(sessions)
    ids = [await queued_job(sessions, owner, prompt=f"held {n}") for n in range(3)]
    async with sessions() as session:
        taken = await job_queries.claim_jobs(session, provider="offline", limit=50, lease_seconds=1)
    claimed = [job for job_id in ids for job in taken if job.id == job_id]
    keeper = LeaseKeeper(sessions, lease_seconds=600)
    cancels = [asyncio.Event() for _ in claimed]
    for job, cancel in zip(claimed, cancels, strict=True):
        keeper.hold(job, cancel)
    async with sessions.begin() as session:
        await session.execute(update(Job).where(Job.id == ids[1]).values(cancel_requested_at=func.now()))
        # The third job's lease ran out and another attempt took it over.
        await session.execute(update(Job).where(Job.id == ids[2]).values(attempt=Job.attempt + 1))

    await keeper.renew()

    assert [c.is_set() for c in cancels] == [False, True, False]
    assert set(keeper.held) == set(ids[:2])
    async with sessions() as session:
        leases = dict((await session.execute(select(Job.id, Job.lease_expires_at - func.now()))).all())
    assert all(leases[job_id].total_seconds() > 500 for job_id in ids[:2])
    assert leases[ids[2]].total_seconds() < 2


async def someone_waits_for(session) -> bool:
    """Whether another backend waits for a lock this session holds (pg_locks is read live, where
    pg_stat_activity would be a snapshot kept for the transaction)."""
    query = "SELECT count(*) FROM pg_locks WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
    return await session.scalar(text(query)) > 0


@pytest.mark.parametrize("writer", ["lease renewal", "step ends"])
async def test_writers_of_many_jobs_lock_them_smallest_id_first_so_two_cannot_deadlock(sessions, writer):
    """A lease renewal and a batch of job ends touch the same running jobs; if one locked them in
    another order than the other, each could hold a row the other waits for (Postgres then kills
    one, and its jobs wait out their leases)."""
    owner = await make_user(sessions)
    ids = [await queued_job(sessions, owner, prompt=f"order {n}") for n in range(3)]
    async with sessions() as session:
        taken = await job_queries.claim_jobs(session, provider="offline", limit=50, lease_seconds=60)
    jobs = sorted((job for job in taken if job.id in ids), key=lambda job: job.id)
    smallest, *rest = jobs

    async def write() -> None:
        largest_first = list(reversed(jobs))
        async with sessions() as session:
            if writer == "lease renewal":
                renewed = await job_queries.renew_leases(session, [(j.id, j.attempt) for j in largest_first], 60)
                assert set(renewed) == set(ids)
            else:
                ends = [job_queries.StepFinished(j, index=0, total=1, assets=[], result={}, events=[]) for j in jobs]
                assert await job_queries.record_finishes(session, ends[::-1]) == [[]] * 3
                await session.commit()

    def lock(job: job_queries.ClaimedJob, **wait):
        return select(Job.id).where(Job.id == job.id).with_for_update(key_share=True, **wait)

    async with sessions() as holder:  # another writer, in id order, that has taken the first row
        await holder.execute(lock(smallest))
        writing = asyncio.create_task(write())
        await eventually(functools.partial(someone_waits_for, holder))
        for job in rest:  # the waiting writer holds none of the later rows
            await holder.execute(lock(job, nowait=True))
        await holder.commit()
    await writing
