"""Job rows: submission, owner-scoped reads, and the dispatcher's claim/finish queries.

Every write by a worker names the attempt it claimed (the fencing token): a worker whose
lease expired and was taken over can no longer change the job.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

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
)


async def insert_job(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    owner_id: uuid.UUID,
    operation: str,
    params: dict[str, Any],
    cost: Decimal,
    inputs: dict[str, Any] | None = None,
) -> Job:
    job = Job(
        id=job_id, owner_id=owner_id, operation=operation, params=params, inputs=inputs, cost=cost, status="queued"
    )
    session.add(job)
    await session.commit()
    await session.refresh(job)
    return job


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
    rows = (await session.execute(stmt)).all()
    await session.commit()
    return [ClaimedJob(*row) for row in rows]


def _fenced(job_id: uuid.UUID, attempt: int):
    return update(Job).where(Job.id == job_id, Job.attempt == attempt, Job.status == "running")


async def renew_lease(session: AsyncSession, job_id: uuid.UUID, attempt: int, lease_seconds: float) -> bool:
    stmt = _fenced(job_id, attempt).values(lease_expires_at=func.now() + timedelta(seconds=lease_seconds))
    renewed = (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is not None
    await session.commit()
    return renewed


async def finish_step(
    session: AsyncSession,
    claimed: ClaimedJob,
    *,
    index: int,
    total: int,
    assets: list[dict[str, Any]],
    result: dict[str, Any],
) -> list[Asset] | None:
    """Store a step's output rows and the job's result so far in one transaction; the last step ends the job.

    Fenced on the attempt and on the step count, so a step is recorded once; None if the lease was lost.
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
    await session.commit()
    return rows


async def finish_failed(session: AsyncSession, claimed: ClaimedJob, *, code: str, message: str) -> bool:
    stmt = _fenced(claimed.id, claimed.attempt).values(
        status="failed", error_code=code, error_message=message, completed_at=func.now(), lease_expires_at=None
    )
    done = (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is not None
    await session.commit()
    return done


async def requeue(session: AsyncSession, claimed: ClaimedJob) -> bool:
    """Give a job back to the queue after a failure that another attempt may not hit."""
    stmt = _fenced(claimed.id, claimed.attempt).values(status="queued", lease_expires_at=None)
    done = (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is not None
    await session.commit()
    return done


async def job_assets(session: AsyncSession, job_id: uuid.UUID) -> list[Asset]:
    stmt = select(Asset).where(Asset.job_id == job_id, Asset.deleted_at.is_(None)).order_by(Asset.id)
    return list((await session.execute(stmt)).scalars())
