"""User rows: creation with the signup grant in one transaction, lookups by id and email."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from daygen.errors import EmailTaken
from daygen.ids import uuid7
from storage import ledger
from storage.db import is_unique_violation
from storage.models import Organisation, User


def normalise_email(email: str) -> str:
    return email.strip().lower()


async def create_user(
    session: AsyncSession,
    *,
    email: str,
    password_hash: str,
    display_name: str | None,
    role: str = "user",
    signup_credits: Decimal,
    plan: str = "free",
) -> User:
    """Insert and rely on the unique index: a pre-check would race with concurrent signups."""
    user = User(
        id=uuid7(),
        email=normalise_email(email),
        password_hash=password_hash,
        display_name=display_name,
        role=role,
        plan=plan,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        if is_unique_violation(exc):
            raise EmailTaken("an account with this email already exists") from None
        raise
    if signup_credits > 0:
        await ledger.append_entry(
            session,
            account_id=user.id,
            kind="grant",
            amount=signup_credits,
            idempotency_key=f"signup:{user.id}",
            reason="signup",
        )
    await session.commit()
    return user


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(User.email == normalise_email(email)))
    return result.scalar_one_or_none()


async def set_plan_from_event(session: AsyncSession, account_id: uuid.UUID, plan: str, made_at: datetime) -> bool:
    """Set the account's (a user's or an organisation's) plan as an event made at `made_at` says,
    unless a later event already set it (events arrive in any order); whether it was applied. The
    caller commits."""
    for table in (User, Organisation):
        changed = await session.execute(
            update(table)
            .where(table.id == account_id, or_(table.plan_event_at.is_(None), table.plan_event_at <= made_at))
            .values(plan=plan, plan_event_at=made_at)
            .returning(table.id)
        )
        if changed.first() is not None:
            return True
    return False
