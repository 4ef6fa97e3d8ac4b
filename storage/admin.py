"""What admins see and do: accounts with their balances, credit adjustments, bans, and the audit log.

Every action that takes effect is recorded in the audit log (`admin_actions`) in the transaction
that makes it, so the log never misses one nor shows one that did not happen.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import ledger
from storage.models import AdminAction, LedgerBalance, Organisation, User


@dataclass(frozen=True)
class Admin:
    """Who acts: kept in each audit record as they were then."""

    id: uuid.UUID
    email: str


async def record(
    session: AsyncSession, admin: Admin, action: str, user_id: uuid.UUID, reason: str, details: dict[str, Any]
) -> AdminAction:
    row = AdminAction(
        admin_id=admin.id, admin_email=admin.email, action=action, user_id=user_id, reason=reason, details=details
    )
    session.add(row)
    await session.flush()
    return row


async def users_with_standing(
    session: AsyncSession, *, limit: int, before: uuid.UUID | None = None, email: str | None = None
) -> list[tuple[User, ledger.Standing]]:
    """Accounts newest first, each with its balance and the credits it spent today and this month;
    `email` keeps those whose address contains it."""
    spent_today, spent_this_month = ledger.spending_columns()
    columns = [func.coalesce(column, 0) for column in (LedgerBalance.balance, spent_today, spent_this_month)]
    stmt = select(User, *columns).outerjoin(LedgerBalance, LedgerBalance.account_id == User.id)
    if email:
        stmt = stmt.where(User.email.contains(email.strip().lower(), autoescape=True))
    if before is not None:
        stmt = stmt.where(User.id < before)
    rows = await session.execute(stmt.order_by(User.id.desc()).limit(limit))
    return [(user, ledger.Standing(*amounts)) for user, *amounts in rows]


@dataclass(frozen=True)
class Adjustment:
    """An admin's grant (amount > 0) or revoke (amount < 0) of credits, once per key."""

    admin: Admin
    user_id: uuid.UUID
    amount: Decimal
    reason: str
    key: str


async def adjust_credits(session: AsyncSession, adjustment: Adjustment) -> ledger.Adjusted:
    """The adjustment's ledger entry and, when it is made, its audit record, in the caller's
    transaction (the ledger actor's: the one writer of balances)."""
    adjusted = await ledger.adjust(
        session,
        account_id=adjustment.user_id,
        amount=adjustment.amount,
        idempotency_key=f"adjust:{adjustment.key}",
        reason=adjustment.reason,
    )
    if adjusted.outcome == "applied":
        details = {"amount": str(adjustment.amount), "balance": str(adjusted.balance)}
        await record(session, adjustment.admin, "credits", adjustment.user_id, adjustment.reason, details)
    return adjusted


# What each status action does: the statuses it changes, and the status it leaves.
STATUS_ACTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "ban": (("active", "throttled"), "banned"),
    "unban": (("banned",), "active"),
    "throttle": (("active",), "throttled"),
    "unthrottle": (("throttled",), "active"),
}


async def change_status(
    session: AsyncSession, admin: Admin, user_id: uuid.UUID, action: str, reason: str
) -> bool | None:
    """Ban, unban, throttle or unthrottle an account, in the caller's transaction; whether its status
    changed (None: no such account). A change is recorded in the audit log; an action that does not
    apply to the account's status (a ban of a banned account, a throttle of one) changes nothing."""
    sources, target = STATUS_ACTIONS[action]
    changed = await session.execute(
        update(User).where(User.id == user_id, User.status.in_(sources)).values(status=target).returning(User.id)
    )
    if changed.first() is not None:
        await record(session, admin, action, user_id, reason, {})
        return True
    return None if await session.get(User, user_id) is None else False


Account = type[User] | type[Organisation]  # whose plan and limits: a user's, or an organisation's


async def set_plan(
    session: AsyncSession, admin: Admin, account_id: uuid.UUID, plan: str, reason: str, *, kind: Account = User
) -> bool | None:
    """Move an account (a user, or an organisation with `kind`) to a plan, recorded in the audit log;
    whether it changed (None: no such account)."""
    account = await session.get(kind, account_id, with_for_update=True)
    if account is None:
        return None
    if account.plan == plan:
        return False
    await record(session, admin, "plan", account_id, reason, {"from": account.plan, "to": plan})
    account.plan = plan
    return True


async def set_limits(
    session: AsyncSession,
    admin: Admin,
    account_id: uuid.UUID,
    overrides: dict[str, Any] | None,
    reason: str,
    *,
    kind: Account = User,
) -> bool | None:
    """Replace an account's (a user's, or an organisation's with `kind`) overrides of its plan's limits
    (None or {}: the plan's again), recorded in the audit log; whether they changed (None: no such
    account)."""
    account = await session.get(kind, account_id, with_for_update=True)
    if account is None:
        return None
    overrides = overrides or None
    if account.limits == overrides:
        return False
    await record(session, admin, "limits", account_id, reason, {"from": account.limits, "to": overrides})
    account.limits = overrides
    return True


async def actions(
    session: AsyncSession, *, limit: int, before: uuid.UUID | None = None, user_id: uuid.UUID | None = None
) -> list[AdminAction]:
    """The audit log, newest first; `user_id` keeps the actions on one account."""
    stmt = select(AdminAction)
    if user_id is not None:
        stmt = stmt.where(AdminAction.user_id == user_id)
    if before is not None:
        stmt = stmt.where(AdminAction.id < before)
    return list((await session.execute(stmt.order_by(AdminAction.id.desc()).limit(limit))).scalars())
