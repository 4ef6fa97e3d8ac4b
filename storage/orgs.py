"""Teams: organisations, their members and roles. A team's balance is a ledger account with the
team's id (storage/ledger.py), spent by its members' jobs; owners manage the team."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from daygen.errors import Conflict
from daygen.ids import uuid7
from storage import ledger
from storage.db import is_unique_violation
from storage.models import LedgerBalance, Organisation, OrgMember, User


@dataclass(frozen=True)
class Membership:
    org: Organisation
    member: OrgMember

    @property
    def owner(self) -> bool:
        return self.member.role == "owner"


async def create_org(session: AsyncSession, *, name: str, owner_id: uuid.UUID, plan: str) -> Membership:
    """A team with its creator as its first owner; the caller commits."""
    org = Organisation(id=uuid7(), name=name, plan=plan)
    session.add(org)
    await session.flush()
    member = OrgMember(org_id=org.id, user_id=owner_id, role="owner")
    session.add(member)
    await session.flush()
    return Membership(org, member)


async def account_exists(session: AsyncSession, account_id: uuid.UUID) -> bool:
    """Whether a ledger account is a user's or an organisation's here (what Stripe names is checked so)."""
    return await session.get(User, account_id) is not None or await session.get(Organisation, account_id) is not None


async def membership(session: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID) -> Membership | None:
    """The user's membership of the team, with the team; None when either is missing."""
    row = (
        await session.execute(
            select(Organisation, OrgMember)
            .join(OrgMember, OrgMember.org_id == Organisation.id)
            .where(Organisation.id == org_id, OrgMember.user_id == user_id)
        )
    ).first()
    return Membership(*row) if row is not None else None


async def orgs_of(session: AsyncSession, user_id: uuid.UUID) -> list[tuple[Membership, Decimal]]:
    """The user's teams, oldest first, each with its balance."""
    balance = func.coalesce(LedgerBalance.balance, 0)
    rows = await session.execute(
        select(Organisation, OrgMember, balance)
        .join(OrgMember, OrgMember.org_id == Organisation.id)
        .outerjoin(LedgerBalance, LedgerBalance.account_id == Organisation.id)
        .where(OrgMember.user_id == user_id)
        .order_by(Organisation.id)
    )
    return [(Membership(org, member), amount) for org, member, amount in rows]


async def members(session: AsyncSession, org_id: uuid.UUID) -> list[tuple[OrgMember, str]]:
    """The team's members, oldest first, with their emails."""
    rows = await session.execute(
        select(OrgMember, User.email)
        .join(User, User.id == OrgMember.user_id)
        .where(OrgMember.org_id == org_id)
        .order_by(OrgMember.created_at, OrgMember.user_id)
    )
    return [(member, email) for member, email in rows]


async def add_member(
    session: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID, role: str, credits_per_month: Decimal | None
) -> OrgMember:
    """Add a member; a user already in the team is a 409. The caller commits."""
    member = OrgMember(org_id=org_id, user_id=user_id, role=role, credits_per_month=credits_per_month)
    session.add(member)
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        if is_unique_violation(exc):
            raise Conflict("already a member of this organisation") from None
        raise
    return member


async def lock_members(session: AsyncSession, org_id: uuid.UUID) -> list[OrgMember]:
    """The team's memberships, locked until commit: a change of roles sees the others as they stay."""
    stmt = select(OrgMember).where(OrgMember.org_id == org_id).order_by(OrgMember.user_id).with_for_update()
    return list((await session.execute(stmt)).scalars())


async def orgs_with_standing(
    session: AsyncSession, *, limit: int, before: uuid.UUID | None = None, org_id: uuid.UUID | None = None
) -> list[tuple[Organisation, ledger.Standing, int]]:
    """Teams newest first (or the one `org_id`), with their balances, the credits they spent today and
    this month, and their member counts (the admin's list)."""
    counted = select(func.count()).where(OrgMember.org_id == Organisation.id).scalar_subquery()
    spent_today, spent_this_month = ledger.spending_columns()
    amounts = [func.coalesce(column, 0) for column in (LedgerBalance.balance, spent_today, spent_this_month)]
    stmt = (
        select(Organisation, *amounts, counted)
        .outerjoin(LedgerBalance, LedgerBalance.account_id == Organisation.id)
        .order_by(Organisation.id.desc())
        .limit(limit)
    )
    if before is not None:
        stmt = stmt.where(Organisation.id < before)
    if org_id is not None:
        stmt = stmt.where(Organisation.id == org_id)
    return [(org, ledger.Standing(*amounts), count) for org, *amounts, count in await session.execute(stmt)]
