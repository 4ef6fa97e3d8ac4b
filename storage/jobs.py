"""Job rows: submission, owner-scoped reads, and the dispatcher's claim/finish queries.

Every write by a worker names the attempt it claimed (the fencing token): a worker whose
lease expired and was taken over can no longer change the job.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.events import Event, append_event
from storage.models import Asset, Job

TERMINAL = ("succeeded", "failed", "canceled")


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    owner_id: uuid.UUID
    operation: str
    params: dict[str, Any]
    attempt: int
    inputs: dict[str, Any] | None = None
    cost: Decimal = Decimal(0)
    steps_done: int = 0
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    started: Event | None = None


# What a claim reads back, in ClaimedJob's order.
CLAIMED_COLUMNS = (
    Job.id,
    Job.owner_id,
    Job.operation,
    Job.params,
    Job.attempt,
    Job.inputs,
    Job.cost,
    Job.steps_done,
    Job.result,
    Job.cancel_requested_at.is_not(None),
)

EventSpec = tuple[str, dict[str, Any]]


async def insert_job(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    owner_id: uuid.UUID,
    operation: str,
    provider: str,
    params: dict[str, Any],
    cost: Decimal,
    inputs: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    webhook_url: str | None = None,
) -> tuple[Job, Event]:
    """The job row and its `job.queued` event, in one transaction (the row's server defaults,
    such as `created_at`, are not read back)."""
    job = Job(
        id=job_id,
        owner_id=owner_id,
        operation=operation,
        provider=provider,
        params=params,
        inputs=inputs,
        cost=cost,
        status="queued",
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        webhook_url=webhook_url,
    )
    session.add(job)
    await session.flush()
    queued = await append_event(session, job_id=job_id, owner_id=owner_id, type="job.queued", data={"status": "queued"})
    await session.commit()
    return job, queued


async def job_by_idempotency_key(session: AsyncSession, owner_id: uuid.UUID, key: str) -> Job | None:
    stmt = select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_job(session: AsyncSession, owner_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    stmt = select(Job).where(Job.id == job_id, Job.owner_id == owner_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_jobs(
    session: AsyncSession,
    owner_id: uuid.UUID,
    *,
    limit: int,
    before: uuid.UUID | None,
    operations: list[str] | None = None,
) -> list[Job]:
    stmt = select(Job).where(Job.owner_id == owner_id)
    if before is not None:
        stmt = stmt.where(Job.id < before)
    if operations is not None:
        stmt = stmt.where(Job.operation.in_(operations))
    return list((await session.execute(stmt.order_by(Job.id.desc()).limit(limit))).scalars())


def _claimable():
    return or_(Job.status == "queued", (Job.status == "running") & (Job.lease_expires_at < func.now()))


async def claim_jobs(session: AsyncSession, *, provider: str, limit: int, lease_seconds: float) -> list[ClaimedJob]:
    """Take up to `limit` of the provider's queued jobs (and running ones whose lease ran out).

    Fair share: users take turns, each user's jobs oldest first, and a user's turn counts the
    jobs they already have running, so one user's thousand queued jobs wait behind another
    user's single one rather than in front of it.
    """
    running = (
        select(Job.owner_id, func.count().label("jobs"))
        .where(Job.provider == provider, Job.status == "running", Job.lease_expires_at >= func.now())
        .group_by(Job.owner_id)
        .subquery()
    )
    turn = func.coalesce(running.c.jobs, 0) + func.row_number().over(partition_by=Job.owner_id, order_by=Job.id)
    ranked = (
        select(Job.id, turn.label("turn"))
        .outerjoin(running, running.c.owner_id == Job.owner_id)
        .where(Job.provider == provider, _claimable())
        .subquery()
    )
    claimable = (
        select(Job.id)
        .join(ranked, ranked.c.id == Job.id)
        .where(_claimable())
        .order_by(ranked.c.turn, Job.id)
        .limit(limit)
        .with_for_update(of=Job, skip_locked=True)
    )
    stmt = (
        update(Job)
        .where(Job.id.in_(claimable.scalar_subquery()))
        .values(
            status="running",
            attempt=Job.attempt + 1,
            lease_expires_at=func.now() + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(Job.started_at, func.now()),
        )
        .returning(*CLAIMED_COLUMNS)
    )
    claimed = [ClaimedJob(*row) for row in (await session.execute(stmt)).all()]
    # Per-owner event locks are taken in one order, so two claims can't deadlock on them.
    started = []
    for job in sorted(claimed, key=lambda j: (str(j.owner_id), j.id)):
        data = {"status": "running", "attempt": job.attempt, "step": job.steps_done}
        event = await append_event(session, job_id=job.id, owner_id=job.owner_id, type="job.started", data=data)
        started.append(replace(job, started=event))
    await session.commit()
    return sorted(started, key=lambda j: j.id)


def _fenced(job_id: uuid.UUID, attempt: int):
    return update(Job).where(Job.id == job_id, Job.attempt == attempt, Job.status == "running")


async def renew_lease(session: AsyncSession, job_id: uuid.UUID, attempt: int, lease_seconds: float) -> bool:
    stmt = _fenced(job_id, attempt).values(lease_expires_at=func.now() + timedelta(seconds=lease_seconds))
    renewed = (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is not None
    await session.commit()
    return renewed


@dataclass(frozen=True)
class StepRecorded:
    assets: list[Asset]
    events: list[Event]


async def _append_all(session: AsyncSession, claimed: ClaimedJob, events: list[EventSpec]) -> list[Event]:
    return [
        await append_event(session, job_id=claimed.id, owner_id=claimed.owner_id, type=kind, data=data)
        for kind, data in events
    ]


async def finish_step(
    session: AsyncSession,
    claimed: ClaimedJob,
    *,
    index: int,
    total: int,
    assets: list[dict[str, Any]],
    result: dict[str, Any],
    events: list[EventSpec],
    next_provider: str | None = None,
) -> StepRecorded | None:
    """Store a step's output rows, the job's result so far and the events in one transaction.

    The last step ends the job; otherwise the job moves to the provider of its next step.
    Fenced on the attempt and on the step count, so a step is recorded once; None if the
    lease was lost.
    """
    rows = [Asset(owner_id=claimed.owner_id, job_id=claimed.id, source="job", **a) for a in assets]
    session.add_all(rows)
    await session.flush()
    values: dict[str, Any] = {"steps_done": index + 1, "progress": (index + 1) * 100 // total, "result": result}
    if next_provider is not None:
        values["provider"] = next_provider
    if index + 1 == total:
        values.update(status="succeeded", completed_at=func.now(), lease_expires_at=None)
    stmt = _fenced(claimed.id, claimed.attempt).where(Job.steps_done == index).values(**values)
    if (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is None:
        await session.rollback()
        return None
    recorded = StepRecorded(rows, await _append_all(session, claimed, events))
    await session.commit()
    return recorded


async def finish_failed(
    session: AsyncSession, claimed: ClaimedJob, *, status: str, code: str | None, message: str | None, data: dict
) -> Event | None:
    """End a job that did not succeed (`failed`, or `canceled` while it ran) with its event; None if fenced out."""
    stmt = _fenced(claimed.id, claimed.attempt).values(
        status=status, error_code=code, error_message=message, completed_at=func.now(), lease_expires_at=None
    )
    if (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is None:
        await session.rollback()
        return None
    [event] = await _append_all(session, claimed, [(f"job.{status}", data)])
    await session.commit()
    return event


async def record_event(session: AsyncSession, claimed: ClaimedJob, kind: str, data: dict) -> Event | None:
    """An event that changes nothing else (progress), only while the attempt still owns the job."""
    stmt = _fenced(claimed.id, claimed.attempt).values(progress=data.get("progress", Job.progress))
    if (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is None:
        await session.rollback()
        return None
    [event] = await _append_all(session, claimed, [(kind, data)])
    await session.commit()
    return event


async def cancel_queued(session: AsyncSession, job: Job) -> Event | None:
    """Cancel a job no worker holds, at once; None when a worker claimed it meanwhile."""
    stmt = (
        update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(status="canceled", completed_at=func.now(), cancel_requested_at=func.now())
    )
    if (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is None:
        await session.rollback()
        return None
    event = await append_event(
        session, job_id=job.id, owner_id=job.owner_id, type="job.canceled", data={"status": "canceled"}
    )
    await session.commit()
    return event


async def request_cancel(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """Ask the worker running a job to stop; it checks between steps (the dispatcher also aborts the call)."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(cancel_requested_at=func.coalesce(Job.cancel_requested_at, func.now()))
    )
    done = (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is not None
    await session.commit()
    return done


async def cancel_requested(session: AsyncSession, job_id: uuid.UUID) -> bool:
    stmt = select(Job.cancel_requested_at.is_not(None)).where(Job.id == job_id)
    return bool((await session.execute(stmt)).scalar_one_or_none())


@dataclass(frozen=True)
class ProviderLoad:
    queued: int
    running: int


async def provider_load(session: AsyncSession) -> dict[str, ProviderLoad]:
    """Jobs waiting for and running on each provider's pool."""
    stmt = (
        select(Job.provider, Job.status, func.count())
        .where(Job.status.in_(("queued", "running")))
        .group_by(Job.provider, Job.status)
    )
    counts: dict[str, dict[str, int]] = {}
    for provider, status, count in await session.execute(stmt):
        counts.setdefault(provider, {})[status] = count
    return {p: ProviderLoad(c.get("queued", 0), c.get("running", 0)) for p, c in counts.items()}


async def job_assets(session: AsyncSession, job_id: uuid.UUID) -> list[Asset]:
    stmt = select(Asset).where(Asset.job_id == job_id, Asset.deleted_at.is_(None)).order_by(Asset.id)
    return list((await session.execute(stmt)).scalars())
