"""The admin API: accounts with their balances, credits granted or revoked, bans, and the audit log of
every action that took effect (who, what, when, why). Admins only: everyone else gets 403."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import Response

from daygen.errors import BalanceTooLow, Conflict, InvalidInput, NotFound
from pipelines.billing_config import BillingConfig
from pipelines.operations import OPERATIONS
from serve_app.deps import AdminUser, ServicesDep, SessionDep, require_json
from serve_app.pagination import Cursor, Limit, split_page
from serve_app.routes.billing import one_of
from serve_app.schemas import (
    AccountAction,
    AdminActionOut,
    AdminActionPage,
    AdminOrgOut,
    AdminOrgPage,
    AdminUserOut,
    AdminUserPage,
    CreditsAdjust,
    CreditsAdjusted,
    LimitsChange,
    LimitsOut,
    PlanChange,
    UsageLineOut,
    UsageReport,
    camel_limits,
)
from storage import admin, ledger, orgs
from storage.models import Organisation, User
from storage.usage import UsageFilter, usage_report
from storage.users import get_user

v1 = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_json)])


def _acting(user: User) -> admin.Admin:
    return admin.Admin(user.id, user.email)


def _user_out(billing: BillingConfig, user: User, standing: ledger.Standing) -> AdminUserOut:
    return AdminUserOut(
        id=user.id,
        email=user.email,
        displayName=user.display_name,
        role=user.role,
        status=user.status,
        plan=user.plan,
        limits=LimitsOut.of(billing.limits(user.plan, user.limits, throttled=user.throttled)),
        limitOverrides=camel_limits(user.limits or {}),
        credits=float(standing.balance),
        creditsToday=float(standing.spent_today),
        creditsThisMonth=float(standing.spent_this_month),
        createdAt=user.created_at,
    )


async def _account_out(services: ServicesDep, session: SessionDep, user_id: uuid.UUID) -> AdminUserOut:
    target = await get_user(session, user_id)
    if target is None:
        raise NotFound("no such user")
    return _user_out(services.billing, target, await ledger.standing(session, user_id))


@v1.get("/users")
async def list_users(
    _: AdminUser,
    services: ServicesDep,
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    email: Annotated[str | None, Query(max_length=254, description="keep addresses that contain this")] = None,
) -> AdminUserPage:
    """Accounts, newest first, with their plans, limits, balances and credits spent today and this month."""
    rows = await admin.users_with_standing(session, limit=limit + 1, before=cursor, email=email)
    page, next_cursor = split_page([user for user, _ in rows], limit)
    standings = {user.id: standing for user, standing in rows}
    items = [_user_out(services.billing, user, standings[user.id]) for user in page]
    return AdminUserPage(items=items, nextCursor=next_cursor)


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
    return await _adjust(services, acting, user_id, body, idempotency_key)


@v1.post("/orgs/{org_id}/credits")
async def adjust_org_credits(
    org_id: uuid.UUID,
    body: CreditsAdjust,
    acting: AdminUser,
    services: ServicesDep,
    session: SessionDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)] = None,
) -> CreditsAdjusted:
    """The same for an organisation's balance."""
    if await session.get(Organisation, org_id) is None:
        raise NotFound("no such organisation")
    return await _adjust(services, acting, org_id, body, idempotency_key)


async def _adjust(
    services: ServicesDep, acting: User, account_id: uuid.UUID, body: CreditsAdjust, idempotency_key: str | None
) -> CreditsAdjusted:
    key = f"{acting.id}:{idempotency_key}" if idempotency_key is not None else f"{acting.id}:{uuid.uuid4()}"
    adjustment = admin.Adjustment(_acting(acting), account_id, body.amount, body.reason, key)
    adjusted: ledger.Adjusted = await services.ledger.adjust.remote(adjustment)
    if adjusted.outcome == "refused":
        details = {"balance": float(adjusted.balance), "amount": float(body.amount)}
        raise BalanceTooLow("the account has fewer credits than that", details=details)
    if adjusted.outcome == "key_taken":
        raise Conflict("this Idempotency-Key was used for another change")
    repeat = adjusted.outcome == "repeat"
    return CreditsAdjusted(userId=account_id, amount=float(body.amount), balance=float(adjusted.balance), repeat=repeat)


@v1.put("/orgs/{org_id}/limits")
async def set_org_limits(
    org_id: uuid.UUID, body: LimitsChange, acting: AdminUser, services: ServicesDep, session: SessionDep
) -> AdminOrgOut:
    """Replace an organisation's overrides of its plan's limits, as for an account: they apply to every
    job charged to it (its members' own limits a minute still count too)."""
    overrides = body.limits.overrides()
    if await admin.set_limits(session, _acting(acting), org_id, overrides, body.reason, kind=Organisation) is None:
        raise NotFound("no such organisation")
    await session.commit()
    return await _one_org(services, session, org_id)


@v1.put("/orgs/{org_id}/plan")
async def set_org_plan(
    org_id: uuid.UUID, body: PlanChange, acting: AdminUser, services: ServicesDep, session: SessionDep
) -> AdminOrgOut:
    """Move an organisation to a plan: its limits at once, its monthly allowance (if the plan has one)
    for this month unless it had one already."""
    _known_plan(services, body.plan)
    if await admin.set_plan(session, _acting(acting), org_id, body.plan, body.reason, kind=Organisation) is None:
        raise NotFound("no such organisation")
    await session.commit()
    await services.ledger.reset_allowances.remote()
    return await _one_org(services, session, org_id)


async def _one_org(services: ServicesDep, session: SessionDep, org_id: uuid.UUID) -> AdminOrgOut:
    [row] = await orgs.orgs_with_standing(session, limit=1, org_id=org_id)
    return _org_out(services.billing, *row)


def _known_plan(services: ServicesDep, plan: str) -> None:
    one_of("plan", plan, services.billing.plans)


def _org_out(billing: BillingConfig, org: Organisation, standing: ledger.Standing, members: int) -> AdminOrgOut:
    return AdminOrgOut(
        id=org.id,
        name=org.name,
        plan=org.plan,
        limits=LimitsOut.of(billing.limits(org.plan, org.limits, throttled=False)),
        limitOverrides=camel_limits(org.limits or {}),
        credits=float(standing.balance),
        creditsToday=float(standing.spent_today),
        creditsThisMonth=float(standing.spent_this_month),
        members=members,
        createdAt=org.created_at,
    )


@v1.get("/orgs")
async def list_orgs(
    _: AdminUser, services: ServicesDep, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> AdminOrgPage:
    """Organisations, newest first, with their plans, limits, balances and member counts."""
    rows = await orgs.orgs_with_standing(session, limit=limit + 1, before=cursor)
    page, next_cursor = split_page([org for org, _, _ in rows], limit)
    found = {org.id: (standing, count) for org, standing, count in rows}
    items = [_org_out(services.billing, org, *found[org.id]) for org in page]
    return AdminOrgPage(items=items, nextCursor=next_cursor)


async def _change_status(
    services: ServicesDep, session: SessionDep, acting: User, user_id: uuid.UUID, action: str, reason: str
) -> AdminUserOut:
    if action in ("ban", "throttle") and user_id == acting.id:
        raise Conflict(f"an admin can't {action} their own account")
    if await admin.change_status(session, _acting(acting), user_id, action, reason) is None:
        raise NotFound("no such user")
    await session.commit()
    return await _account_out(services, session, user_id)


@v1.post("/users/{user_id}/ban")
async def ban(
    user_id: uuid.UUID, body: AccountAction, acting: AdminUser, services: ServicesDep, session: SessionDep
) -> AdminUserOut:
    """Every authenticated call of the account is a 403 from now on (its logins too); a ban of a
    banned account changes nothing."""
    return await _change_status(services, session, acting, user_id, "ban", body.reason)


@v1.post("/users/{user_id}/unban")
async def unban(
    user_id: uuid.UUID, body: AccountAction, acting: AdminUser, services: ServicesDep, session: SessionDep
) -> AdminUserOut:
    """A banned account is active again (with its plan's limits, not a throttle it had)."""
    return await _change_status(services, session, acting, user_id, "unban", body.reason)


@v1.post("/users/{user_id}/throttle")
async def throttle(
    user_id: uuid.UUID, body: AccountAction, acting: AdminUser, services: ServicesDep, session: SessionDep
) -> AdminUserOut:
    """The account's limits are lowered to the `throttled` caps of configs/billing.yaml (where its own
    are higher) until it is unthrottled; a banned account stays banned."""
    return await _change_status(services, session, acting, user_id, "throttle", body.reason)


@v1.post("/users/{user_id}/unthrottle")
async def unthrottle(
    user_id: uuid.UUID, body: AccountAction, acting: AdminUser, services: ServicesDep, session: SessionDep
) -> AdminUserOut:
    return await _change_status(services, session, acting, user_id, "unthrottle", body.reason)


@v1.put("/users/{user_id}/plan")
async def set_plan(
    user_id: uuid.UUID, body: PlanChange, acting: AdminUser, services: ServicesDep, session: SessionDep
) -> AdminUserOut:
    """Move the account to a plan of configs/billing.yaml: its limits apply at once, and its monthly
    allowance, if it has one, is granted for this month unless one was already (then from the next)."""
    _known_plan(services, body.plan)
    if await admin.set_plan(session, _acting(acting), user_id, body.plan, body.reason) is None:
        raise NotFound("no such user")
    await session.commit()
    await services.ledger.reset_allowances.remote()
    return await _account_out(services, session, user_id)


@v1.put("/users/{user_id}/limits")
async def set_limits(
    user_id: uuid.UUID, body: LimitsChange, acting: AdminUser, services: ServicesDep, session: SessionDep
) -> AdminUserOut:
    """Replace the account's overrides of its plan's limits: a limit given replaces the plan's (null
    lifts it), one left out is the plan's; `{}` drops every override."""
    if await admin.set_limits(session, _acting(acting), user_id, body.limits.overrides(), body.reason) is None:
        raise NotFound("no such user")
    await session.commit()
    return await _account_out(services, session, user_id)


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


USAGE_COLUMNS = (
    "userId",
    "email",
    "orgId",
    "provider",
    "operation",
    "calls",
    "failed",
    "images",
    "upstreamMs",
    "credits",
    "providerCost",
)


def _cell(value: object) -> object:
    """A cell a spreadsheet will not run: text starting like a formula gets a leading quote."""
    return f"'{value}" if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") else value


@v1.get("/usage", response_model=UsageReport)
async def usage(
    _: AdminUser,
    session: SessionDep,
    userId: Annotated[uuid.UUID | None, Query()] = None,  # noqa: N803
    orgId: Annotated[uuid.UUID | None, Query(description="calls charged to this organisation")] = None,  # noqa: N803
    provider: Annotated[str | None, Query(max_length=40)] = None,
    operation: Annotated[str | None, Query(max_length=80)] = None,
    since: Annotated[datetime | None, Query(alias="from", description="inclusive, ISO 8601 with a zone")] = None,
    until: Annotated[datetime | None, Query(alias="to", description="exclusive, ISO 8601 with a zone")] = None,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",  # noqa: A002
) -> UsageReport | Response:
    """The provider calls jobs made, per account, provider and operation: calls (and how many failed),
    images, upstream milliseconds, credits charged and the provider's cost. `?format=csv` for a file."""
    if provider is not None and provider not in {op.provider for op in OPERATIONS.values()}:
        raise InvalidInput(f"no provider {provider!r}", details=[{"field": "provider", "message": "unknown provider"}])
    if operation is not None and operation not in OPERATIONS:
        raise InvalidInput(f"no operation {operation!r}", details=[{"field": "operation", "message": "unknown"}])
    for name, moment in (("from", since), ("to", until)):
        if moment is not None and moment.tzinfo is None:
            raise InvalidInput(f"{name} needs a time zone", details=[{"field": name, "message": "add Z or +hh:mm"}])
    if since is not None and until is not None and since >= until:
        raise InvalidInput("from must come before to", details=[{"field": "to", "message": "must be after from"}])
    lines = await usage_report(session, UsageFilter(userId, provider, operation, since, until, orgId))
    items = [
        UsageLineOut(
            userId=line.user_id,
            email=line.email,
            orgId=line.org_id,
            provider=line.provider,
            operation=line.operation,
            calls=line.calls,
            failed=line.failed,
            images=line.images,
            upstreamMs=line.upstream_ms,
            credits=float(line.credits),
            providerCost=float(line.provider_cost),
        )
        for line in lines
    ]
    if format == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(USAGE_COLUMNS)
        for item in items:
            writer.writerow([_cell(getattr(item, column)) for column in USAGE_COLUMNS])
        headers = {"Content-Disposition": 'attachment; filename="usage.csv"'}
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)
    totals = {
        "calls": sum(i.calls for i in items),
        "failed": sum(i.failed for i in items),
        "images": sum(i.images for i in items),
        "upstreamMs": sum(i.upstreamMs for i in items),
        "credits": float(sum(line.credits for line in lines)),
        "providerCost": float(sum(line.provider_cost for line in lines)),
    }
    return UsageReport(items=items, totals=totals)
