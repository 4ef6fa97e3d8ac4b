"""Monthly plan allowances: each account (a user's or an organisation's) on a plan with an allowance
gets it at every calendar month (UTC), and what it left of the last one expires as it does; credits
from packs, grants and admins never expire.

The allowance is spent first: of a balance, the part that expires is what the last allowance less the
credits spent since it (reservations less what settlements gave back) leaves, never more than the
balance. Both entries are keyed by account and month, so a month's reset happens once however often
it is asked for, by whichever process.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import exists, func, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import ledger
from storage.models import LedgerEntry, Organisation, User

SPENDING = ("reserve", "commit", "release")


def period_of(now: datetime) -> str:
    """The UTC calendar month `now` falls in, as 2027-01."""
    return f"{now.astimezone(UTC):%Y-%m}"


def reset_key(account_id: uuid.UUID, period: str) -> str:
    return f"reset:{account_id}:{period}"


async def due_accounts(
    session: AsyncSession, allowances: Mapping[str, Decimal], period: str, *, limit: int = 500
) -> list[tuple[uuid.UUID, str]]:
    """Accounts (id, plan), users' and organisations', whose allowance for `period` is not reset yet:
    those on a plan with an allowance, and those whose last allowance had credits (to expire them), in
    id order."""
    plans = [plan for plan, allowance in allowances.items() if allowance > 0]
    accounts = union_all(select(User.id, User.plan), select(Organisation.id, Organisation.plan)).subquery("accounts")
    last_allowance = (
        select(LedgerEntry.amount)
        .where(LedgerEntry.account_id == accounts.c.id, LedgerEntry.kind == "reset")
        .order_by(LedgerEntry.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    done = exists().where(LedgerEntry.idempotency_key == func.concat("reset:", accounts.c.id, ":", period))
    stmt = (
        select(accounts.c.id, accounts.c.plan)
        .where(or_(accounts.c.plan.in_(plans), last_allowance > 0), ~done)
        .order_by(accounts.c.id)
        .limit(limit)
    )
    return [(account, plan) for account, plan in await session.execute(stmt)]


@dataclass(frozen=True)
class Reset:
    """A month's reset of one account: the allowance granted, and what was left of the last, expired."""

    account_id: uuid.UUID
    period: str
    granted: Decimal
    expired: Decimal


async def reset_account(
    session: AsyncSession, account_id: uuid.UUID, *, plan: str, allowance: Decimal, period: str
) -> Reset | None:
    """Expire what is left of the account's last allowance and grant `allowance` for `period`, in the
    caller's transaction; None when the period was reset before."""
    [balance] = (await ledger.lock_accounts(session, [account_id])).values()
    key = reset_key(account_id, period)
    if await session.scalar(select(exists().where(LedgerEntry.idempotency_key == key))):
        return None  # read under the lock: a reset made meanwhile is seen
    last = (
        await session.execute(
            select(LedgerEntry.id, LedgerEntry.amount)
            .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "reset")
            .order_by(LedgerEntry.id.desc())
            .limit(1)
        )
    ).first()
    left = Decimal(0)
    if last is not None and last.amount > 0:
        spent = -(
            await session.scalar(
                select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                    LedgerEntry.account_id == account_id, LedgerEntry.kind.in_(SPENDING), LedgerEntry.id > last.id
                )
            )
        )
        left = min(max(last.amount - spent, Decimal(0)), max(balance, Decimal(0)))
    granted = await ledger.append_entry(
        session,
        account_id=account_id,
        kind="reset",
        amount=allowance,
        idempotency_key=key,
        reason=f"{plan} plan allowance for {period}",
    )
    if not granted:  # made meanwhile for an account that had no balance row to lock (so nothing to expire)
        return None
    if left > 0:
        await ledger.append_entry(
            session,
            account_id=account_id,
            kind="expire",
            amount=-left,
            idempotency_key=f"expire:{account_id}:{period}",
            reason=f"allowance unused at the start of {period}",
        )
    return Reset(account_id, period, allowance, left)


async def reset_due(
    session_factory: async_sessionmaker[AsyncSession],
    allowances: Mapping[str, Decimal],
    now: datetime,
    *,
    batch: int = 500,
) -> list[Reset]:
    """Reset every account due for the month `now` falls in, a transaction each (each account's balance
    is locked only for its own); safe to run anywhere, any number of times."""
    period = period_of(now)
    done: list[Reset] = []
    while True:
        async with session_factory() as session:
            due = await due_accounts(session, allowances, period, limit=batch)
        for account_id, plan in due:
            async with session_factory.begin() as session:
                reset = await reset_account(
                    session, account_id, plan=plan, allowance=allowances.get(plan, Decimal(0)), period=period
                )
            if reset is not None:
                done.append(reset)
        if len(due) < batch:
            return done
