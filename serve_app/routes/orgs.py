"""Organisations: teams whose members' jobs spend the team's balance (`orgId` on a job), owners who
manage them, and a cap per member on what they may spend of it a month. Not a member: 404, as if
the team did not exist; a member who is not an owner: 403 on what only owners may do."""

from __future__ import annotations

import uuid
from decimal import Decimal

from fastapi import APIRouter, Depends, Response, status

from daygen.errors import Conflict, Forbidden, NotFound
from serve_app.deps import CurrentUser, ServicesDep, SessionDep, require_json
from serve_app.schemas import MemberAdd, MemberChange, MemberOut, OrgCreate, OrgDetail, OrgList, OrgOut
from storage import ledger, orgs
from storage.models import OrgMember
from storage.users import get_user_by_email

v1 = APIRouter(prefix="/v1/orgs", tags=["organisations"], dependencies=[Depends(require_json)])


def _org_out(found: orgs.Membership, credits: Decimal) -> OrgOut:
    org = found.org
    return OrgOut(
        id=org.id,
        name=org.name,
        plan=org.plan,
        role=found.member.role,
        credits=float(credits),
        createdAt=org.created_at,
    )


def _member_out(member: OrgMember, email: str) -> MemberOut:
    cap = member.credits_per_month
    return MemberOut(
        userId=member.user_id,
        email=email,
        role=member.role,
        creditsPerMonth=float(cap) if cap is not None else None,
        createdAt=member.created_at,
    )


async def _membership(session: SessionDep, org_id: uuid.UUID, user_id: uuid.UUID, *, owner: bool) -> orgs.Membership:
    found = await orgs.membership(session, org_id, user_id)
    if found is None:
        raise NotFound("no such organisation")
    if owner and not found.owner:
        raise Forbidden("only the organisation's owners may do this")
    return found


@v1.post("", status_code=status.HTTP_201_CREATED)
async def create_org(body: OrgCreate, user: CurrentUser, services: ServicesDep, session: SessionDep) -> OrgOut:
    """A new organisation with you as its owner, on the default plan, with no credits yet."""
    found = await orgs.create_org(session, name=body.name, owner_id=user.id, plan=services.billing.default_plan)
    await session.commit()
    return _org_out(found, Decimal(0))


@v1.get("")
async def list_orgs(user: CurrentUser, session: SessionDep) -> OrgList:
    """Your organisations, oldest first, with your role and their balances."""
    return OrgList(items=[_org_out(found, credits) for found, credits in await orgs.orgs_of(session, user.id)])


@v1.get("/{org_id}")
async def get_org(org_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> OrgDetail:
    found = await _membership(session, org_id, user.id, owner=False)
    members = [_member_out(m, email) for m, email in await orgs.members(session, org_id)]
    out = _org_out(found, await ledger.balance(session, org_id))
    return OrgDetail(**out.model_dump(), members=members)


@v1.post("/{org_id}/members", status_code=status.HTTP_201_CREATED)
async def add_member(org_id: uuid.UUID, body: MemberAdd, user: CurrentUser, session: SessionDep) -> MemberOut:
    """Add a user by their account's email (owners only); someone already in is a 409."""
    await _membership(session, org_id, user.id, owner=True)
    added = await get_user_by_email(session, body.email)
    if added is None:
        raise NotFound("no account with this email", details=[{"field": "email", "message": "no such account"}])
    email = added.email
    member = await orgs.add_member(session, org_id, added.id, body.role, body.creditsPerMonth)
    await session.commit()
    return _member_out(member, email)


@v1.patch("/{org_id}/members/{user_id}")
async def change_member(
    org_id: uuid.UUID, user_id: uuid.UUID, body: MemberChange, user: CurrentUser, session: SessionDep
) -> MemberOut:
    """Change a member's role or monthly cap (owners only); the last owner stays an owner."""
    await _membership(session, org_id, user.id, owner=True)
    locked = {m.user_id: m for m in await orgs.lock_members(session, org_id)}
    member = locked.get(user_id)
    if member is None:
        raise NotFound("no such member")
    if body.role == "member" and member.role == "owner" and sum(m.role == "owner" for m in locked.values()) == 1:
        raise Conflict("an organisation keeps at least one owner")
    if "role" in body.model_fields_set and body.role is not None:
        member.role = body.role
    if "creditsPerMonth" in body.model_fields_set:
        member.credits_per_month = body.creditsPerMonth
    await session.commit()
    emails = dict((m.user_id, email) for m, email in await orgs.members(session, org_id))
    return _member_out(member, emails[user_id])


@v1.delete("/{org_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(org_id: uuid.UUID, user_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Response:
    """Remove a member (owners), or leave (anyone); the last owner can't go. Their jobs already
    queued stay charged to the organisation."""
    await _membership(session, org_id, user.id, owner=user_id != user.id)
    locked = {m.user_id: m for m in await orgs.lock_members(session, org_id)}
    member = locked.get(user_id)
    if member is None:
        raise NotFound("no such member")
    if member.role == "owner" and sum(m.role == "owner" for m in locked.values()) == 1:
        raise Conflict("an organisation keeps at least one owner")
    await session.delete(member)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
