"""Credit ledger queries: balances are sums of append-only entries.

A per-account advisory lock serialises debits, so two reservations can never both spend
the last credit, whichever process makes them.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Literal

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from daygen.errors import InsufficientCredits
from storage.models import Job, LedgerEntry

Settlement = Literal["commit", "release"]


async def append_entry(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    kind: str,
    amount: Decimal,
    idempotency_key: str,
    job_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> bool:
    """Add an entry once: a retried call with the same key adds nothing and returns False."""
    stmt = (
        insert(LedgerEntry)
        .values(
            account_id=account_id,
            kind=kind,
            amount=amount,
            idempotency_key=idempotency_key,
            job_id=job_id,
            reason=reason,
        )
        .on_conflict_do_nothing(index_elements=[LedgerEntry.idempotency_key])
        .returning(LedgerEntry.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def balance(session: AsyncSession, account_id: uuid.UUID) -> Decimal:
    stmt = select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(LedgerEntry.account_id == account_id)
    return Decimal((await session.execute(stmt)).scalar_one())


async def _lock_account(session: AsyncSession, account_id: uuid.UUID) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": str(account_id)})


async def reserve(session: AsyncSession, *, account_id: uuid.UUID, job_id: uuid.UUID, amount: Decimal) -> Decimal:
    """Hold `amount` for a job; returns the balance after. Idempotent on the job id."""
    await _lock_account(session, account_id)
    existing = await session.execute(select(LedgerEntry.id).where(LedgerEntry.idempotency_key == f"reserve:{job_id}"))
    current = await balance(session, account_id)
    if existing.scalar_one_or_none() is not None:
        return current
    if current < amount:
        raise InsufficientCredits(
            "not enough credits for this job",
            details={"required": float(amount), "balance": float(current)},
        )
    await append_entry(
        session,
        account_id=account_id,
        kind="reserve",
        amount=-amount,
        idempotency_key=f"reserve:{job_id}",
        job_id=job_id,
    )
    return current - amount


async def settle(session: AsyncSession, *, job_id: uuid.UUID, charged: Decimal) -> Settlement | None:
    """Settle a job's reservation exactly once: keep `charged` of it, give the rest back.

    One entry does it: a "commit" returning what was not charged (nothing, when the whole job
    ran), or a "release" of everything. Returns how the job ended up settled, the first time
    or any later time; None when the job never reserved anything.
    """
    reservation = (
        await session.execute(
            select(LedgerEntry.account_id, LedgerEntry.amount).where(LedgerEntry.idempotency_key == f"reserve:{job_id}")
        )
    ).one_or_none()
    if reservation is None:
        return None
    account_id, reserved = reservation
    await _lock_account(session, account_id)
    done = (
        await session.execute(
            select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id, LedgerEntry.kind.in_(("commit", "release")))
        )
    ).scalar_one_or_none()
    if done is not None:
        return done  # type: ignore[return-value]
    held = -reserved
    kept = min(max(charged, Decimal(0)), held)
    outcome: Settlement = "commit" if kept > 0 else "release"
    await append_entry(
        session,
        account_id=account_id,
        kind=outcome,
        amount=held - kept,
        idempotency_key=f"settle:{job_id}",
        job_id=job_id,
        reason=f"charged {_plain(kept)} of {_plain(held)}" if 0 < kept < held else None,
    )
    return outcome


def _plain(amount: Decimal) -> str:
    return format(amount.normalize(), "f")


async def unsettled_finished_jobs(session: AsyncSession, limit: int = 100) -> list[Job]:
    """Jobs that ended but whose reservation is still open: a crash hit between the two writes."""
    settled = select(LedgerEntry.job_id).where(LedgerEntry.kind.in_(("commit", "release")))
    stmt = (
        select(Job)
        .join(LedgerEntry, LedgerEntry.idempotency_key == func.concat("reserve:", Job.id))
        .where(Job.status.in_(("succeeded", "failed", "canceled")), Job.id.not_in(settled))
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())
