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
    params: dict[str, Any],
    cost: Decimal,
    inputs: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[Job, Event]:
    """The job row and its `job.queued` event, in one transaction."""
    job = Job(
        id=job_id,
        owner_id=owner_id,
        operation=operation,
        params=params,
        inputs=inputs,
        cost=cost,
        status="queued",
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    session.add(job)
    await session.flush()
    queued = await append_event(session, job_id=job_id, owner_id=owner_id, type="job.queued", data={"status": "queued"})
    await session.commit()
    await session.refresh(job)
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


async def claim_jobs(session: AsyncSession, *, limit: int, lease_seconds: float) -> list[ClaimedJob]:
    """Take queued jobs, and running ones whose lease ran out, oldest first."""
    claimable = (
        select(Job.id)
        .where(
            or_(
                Job.status == "queued",
                (Job.status == "running") & (Job.lease_expires_at < func.now()),
            )
        )
        .order_by(Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
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
        .returning(
            Job.id,
            Job.owner_id,
            Job.operation,
            Job.params,
            Job.attempt,
            Job.inputs,
            Job.cost,
            Job.steps_done,
            Job.result,
        )
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
) -> StepRecorded | None:
    """Store a step's output rows, the job's result so far and the events in one transaction.

    The last step ends the job. Fenced on the attempt and on the step count, so a step is
    recorded once; None if the lease was lost.
    """
    rows = [Asset(owner_id=claimed.owner_id, job_id=claimed.id, source="job", **a) for a in assets]
    session.add_all(rows)
    await session.flush()
    values: dict[str, Any] = {"steps_done": index + 1, "progress": (index + 1) * 100 // total, "result": result}
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


async def job_assets(session: AsyncSession, job_id: uuid.UUID) -> list[Asset]:
    stmt = select(Asset).where(Asset.job_id == job_id, Asset.deleted_at.is_(None)).order_by(Asset.id)
    return list((await session.execute(stmt)).scalars())
