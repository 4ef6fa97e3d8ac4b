"""Usage reports: the provider calls jobs made (`usage_records`), summed by account, provider and operation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import UsageRecord, User


@dataclass(frozen=True)
class UsageFilter:
    """Which calls a report sums: each given field narrows it; `since` inclusive, `until` exclusive."""

    user_id: uuid.UUID | None = None
    provider: str | None = None
    operation: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    org_id: uuid.UUID | None = None


@dataclass(frozen=True)
class UsageLine:
    user_id: uuid.UUID
    email: str | None  # None once the account is gone
    org_id: uuid.UUID | None  # the organisation charged; None for the account's own calls
    provider: str
    operation: str
    calls: int
    failed: int
    images: int
    upstream_ms: int
    credits: Decimal
    provider_cost: Decimal


async def usage_report(session: AsyncSession, wanted: UsageFilter) -> list[UsageLine]:
    """One line per (account, organisation charged, provider, operation) with calls in the filter, in
    that order."""
    record = UsageRecord
    stmt = (
        select(
            record.user_id,
            User.email,
            record.org_id,
            record.provider,
            record.operation,
            func.count(),
            func.count().filter(record.status == "failed"),
            func.sum(record.images),
            func.sum(record.upstream_ms),
            func.sum(record.credits),
            func.sum(record.provider_cost),
        )
        .outerjoin(User, User.id == record.user_id)
        .group_by(record.user_id, User.email, record.org_id, record.provider, record.operation)
        .order_by(User.email, record.user_id, record.org_id.nulls_first(), record.provider, record.operation)
    )
    for column, value in (
        (record.user_id, wanted.user_id),
        (record.org_id, wanted.org_id),
        (record.provider, wanted.provider),
        (record.operation, wanted.operation),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if wanted.since is not None:
        stmt = stmt.where(record.created_at >= wanted.since)
    if wanted.until is not None:
        stmt = stmt.where(record.created_at < wanted.until)
    return [UsageLine(*row) for row in await session.execute(stmt)]
