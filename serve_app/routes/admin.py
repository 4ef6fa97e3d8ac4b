"""The admin API: accounts with their balances, credits granted or revoked, bans, and the audit log of
every action that took effect (who, what, when, why). Admins only: everyone else gets 403."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query

from daygen.errors import BalanceTooLow, Conflict, NotFound
from serve_app.deps import AdminUser, ServicesDep, SessionDep, require_json
from serve_app.pagination import Cursor, Limit, split_page
from serve_app.schemas import (
    AccountAction,
    AdminActionOut,
    AdminActionPage,
    AdminUserOut,
    AdminUserPage,
    CreditsAdjust,
    CreditsAdjusted,
)
from storage import admin, ledger
from storage.models import User
from storage.users import get_user

v1 = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_json)])


def _acting(user: User) -> admin.Admin:
    return admin.Admin(user.id, user.email)


def _user_out(user: User, credits) -> AdminUserOut:
    return AdminUserOut(
        id=user.id,
        email=user.email,
        displayName=user.display_name,
        role=user.role,
        status=user.status,
        credits=float(credits),
        createdAt=user.created_at,
    )


@v1.get("/users")
async def list_users(
    _: AdminUser,
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    email: Annotated[str | None, Query(max_length=254, description="keep addresses that contain this")] = None,
) -> AdminUserPage:
    """Accounts, newest first, with their balances."""
    rows = await admin.users_with_balances(session, limit=limit + 1, before=cursor, email=email)
    page, next_cursor = split_page([user for user, _ in rows], limit)
    balances = {user.id: balance for user, balance in rows}
    return AdminUserPage(items=[_user_out(user, balances[user.id]) for user in page], nextCursor=next_cursor)


@v1.post("/users/{user_id}/credits")
async def adjust_credits(
    user_id: uuid.UUID,
    body: CreditsAdjust,
    acting: AdminUser,
    services: ServicesDep,
    session: SessionDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)] = None,
) -> CreditsAdjusted:
    """Grant (a positive amount) or revoke (a negative one) credits, with a reason, through the ledger.
    With an `Idempotency-Key`, a repeat changes nothing more; the key with another change is a 409.
    A revoke of more than the balance is a 409: a balance never goes below zero."""
    if await get_user(session, user_id) is None:
        raise NotFound("no such user")
    key = f"{acting.id}:{idempotency_key}" if idempotency_key is not None else f"{acting.id}:{uuid.uuid4()}"
    adjustment = admin.Adjustment(_acting(acting), user_id, body.amount, body.reason, key)
    adjusted: ledger.Adjusted = await services.ledger.adjust.remote(adjustment)
    if adjusted.outcome == "refused":
        details = {"balance": float(adjusted.balance), "amount": float(body.amount)}
        raise BalanceTooLow("the account has fewer credits than that", details=details)
    if adjusted.outcome == "key_taken":
        raise Conflict("this Idempotency-Key was used for another change")
    repeat = adjusted.outcome == "repeat"
    return CreditsAdjusted(userId=user_id, amount=float(body.amount), balance=float(adjusted.balance), repeat=repeat)


async def _set_banned(session: SessionDep, acting: User, user_id: uuid.UUID, banned: bool, reason: str) -> AdminUserOut:
    if banned and user_id == acting.id:
        raise Conflict("an admin can't ban their own account")
    changed = await admin.set_banned(session, _acting(acting), user_id, banned, reason)
    if changed is None:
        raise NotFound("no such user")
    await session.commit()
    target = await get_user(session, user_id)
    assert target is not None
    return _user_out(target, await ledger.balance(session, user_id))


@v1.post("/users/{user_id}/ban")
async def ban(user_id: uuid.UUID, body: AccountAction, acting: AdminUser, session: SessionDep) -> AdminUserOut:
    """Every authenticated call of the account is a 403 from now on (its logins too); a ban of a
    banned account changes nothing."""
    return await _set_banned(session, acting, user_id, True, body.reason)


@v1.post("/users/{user_id}/unban")
async def unban(user_id: uuid.UUID, body: AccountAction, acting: AdminUser, session: SessionDep) -> AdminUserOut:
    return await _set_banned(session, acting, user_id, False, body.reason)


@v1.get("/audit")
async def audit_log(
    _: AdminUser,
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    userId: Annotated[uuid.UUID | None, Query(description="only the actions on this account")] = None,  # noqa: N803
) -> AdminActionPage:
    """Every admin action that took effect, newest first."""
    rows = await admin.actions(session, limit=limit + 1, before=cursor, user_id=userId)
    page, next_cursor = split_page(rows, limit)
    items = [
        AdminActionOut(
            id=a.id,
            adminId=a.admin_id,
            adminEmail=a.admin_email,
            action=a.action,
            userId=a.user_id,
            reason=a.reason,
            details=a.details,
            createdAt=a.created_at,
        )
        for a in page
    ]
    return AdminActionPage(items=items, nextCursor=next_cursor)
