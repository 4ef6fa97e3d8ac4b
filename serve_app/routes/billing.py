"""Credits and payments: credit packs bought through Stripe Checkout, Stripe's events, and the daygen
frontend's wallet balance."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Mapping
from typing import TypeVar

import stripe
from fastapi import APIRouter, Depends, Request

from daygen.errors import BillingUnavailable, Forbidden, InvalidInput, NoSavedCard, NotFound
from pipelines.payments import (
    PlanSet,
    customer_of,
    plan_set_of,
    read_event,
    start_checkout,
    start_subscription,
    top_up_of,
)
from serve_app.deps import CurrentUser, ServicesDep, SessionDep, require_json
from serve_app.schemas import (
    AutoTopUpOut,
    AutoTopUpSet,
    CheckoutCreate,
    CheckoutOut,
    LimitsOut,
    PlanOut,
    StripeReceived,
    SubscribeCreate,
    WalletBalance,
)
from storage import auto_top_ups, ledger, orgs
from storage.models import User
from storage.orgs import account_exists
from storage.users import set_plan_from_event

log = logging.getLogger("daygen.billing")
T = TypeVar("T")

v1 = APIRouter(prefix="/v1/billing", tags=["billing"], dependencies=[Depends(require_json)])
compat = APIRouter(prefix="/api/payments", tags=["daygen-compatible"])


@v1.post("/checkout")
async def checkout(body: CheckoutCreate, user: CurrentUser, services: ServicesDep, session: SessionDep) -> CheckoutOut:
    """A Stripe Checkout Session for a credit pack (configs/billing.yaml); the credits are added when
    Stripe says it is paid (`/v1/billing/stripe/webhook`), not before. With `orgId`, to an
    organisation's balance (its owners only)."""
    pack = one_of("pack", body.pack, services.billing.packs)
    buyer = await _buyer(session, user.id, body.orgId)
    starting = start_checkout(
        _stripe(services),
        user_id=buyer,
        pack_name=body.pack,
        pack=pack,
        return_url=services.settings.checkout_return,
        save_card=body.saveCard and body.orgId is None,
    )
    return await _checkout_out(starting)


def one_of(field: str, name: str, known: Mapping[str, T]) -> T:
    """The `field` named `name` among those `known` (configs/billing.yaml); else a 422 that lists them."""
    if name not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise InvalidInput(f"no {field} {name!r}", details=[{"field": field, "message": f"one of: {listed}"}])
    return known[name]


def _stripe(services: ServicesDep) -> stripe.StripeClient:
    if services.stripe is None:
        raise BillingUnavailable("payments are not configured on this server")
    return services.stripe


async def _checkout_out(starting: Awaitable[stripe.checkout.Session]) -> CheckoutOut:
    try:
        checkout_session = await starting
    except stripe.StripeError as exc:
        log.error("Stripe refused a Checkout Session", extra={"stripe_error": type(exc).__name__})
        raise BillingUnavailable("the payment provider did not answer; try again") from None
    return CheckoutOut(sessionId=checkout_session.id, url=checkout_session.url)


def _auto_top_up_out(user: User) -> AutoTopUpOut:
    on = user.auto_top_up_pack is not None
    return AutoTopUpOut(
        enabled=on,
        pack=user.auto_top_up_pack,
        threshold=float(user.auto_top_up_threshold) if on and user.auto_top_up_threshold is not None else None,
        cardSaved=user.stripe_customer_id is not None,
    )


@v1.get("/auto-top-up")
async def auto_top_up(user: CurrentUser) -> AutoTopUpOut:
    return _auto_top_up_out(user)


@v1.put("/auto-top-up")
async def set_auto_top_up(
    body: AutoTopUpSet, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> AutoTopUpOut:
    """Buy `pack` with the card saved at checkout whenever the balance falls under `threshold`: once
    each time it falls (never twice for one fall), charged while you are away. 409 `no_saved_card`
    before a checkout with `saveCard`."""
    one_of("pack", body.pack, services.billing.packs)
    if user.stripe_customer_id is None:
        raise NoSavedCard("save a card first: buy a pack with saveCard")
    user_id = user.id
    await auto_top_ups.set_auto_top_up(session, user_id, body.pack, body.threshold)
    await session.commit()
    await services.ledger.auto_top_up.remote(user_id)  # already under the threshold: bought now
    return _auto_top_up_out(await _reread(session, user_id))


@v1.delete("/auto-top-up")
async def stop_auto_top_up(user: CurrentUser, session: SessionDep) -> AutoTopUpOut:
    user_id = user.id
    await auto_top_ups.set_auto_top_up(session, user_id, None, None)
    await session.commit()
    return _auto_top_up_out(await _reread(session, user_id))


async def _reread(session: SessionDep, user_id: uuid.UUID) -> User:
    """The account as it is now (the request's user was read elsewhere, before the change)."""
    fresh = await session.get(User, user_id, populate_existing=True)
    assert fresh is not None  # the request's own account
    return fresh


@v1.post("/subscribe")
async def subscribe(
    body: SubscribeCreate, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> CheckoutOut:
    """A Stripe Checkout Session for a monthly plan (configs/billing.yaml, those with a price); the plan
    is the account's when Stripe says the subscription is live (`customer.subscription.*`,
    `invoice.paid`), not before. With `orgId`, the organisation's (its owners only)."""
    paid_plans = {name: plan for name, plan in services.billing.plans.items() if plan.price}
    plan = one_of("plan", body.plan, paid_plans)
    subscriber = await _buyer(session, user.id, body.orgId)
    starting = start_subscription(
        _stripe(services),
        user_id=subscriber,
        plan_name=body.plan,
        plan=plan,
        return_url=services.settings.checkout_return,
    )
    return await _checkout_out(starting)


async def _buyer(session: SessionDep, user_id: uuid.UUID, org_id: uuid.UUID | None) -> uuid.UUID:
    """Whose balance or plan a purchase is for: the user's own, or an organisation they own."""
    if org_id is None:
        return user_id
    found = await orgs.membership(session, org_id, user_id)
    if found is None:
        raise NotFound("no such organisation", details=[{"field": "orgId", "message": "not one of yours"}])
    if not found.owner:
        raise Forbidden("only the organisation's owners may buy for it")
    return org_id


@v1.post("/stripe/webhook")
async def stripe_webhook(request: Request, services: ServicesDep, session: SessionDep) -> StripeReceived:
    """Stripe's events, checked against their signature over the raw body (400 when it is missing,
    wrong or more than five minutes old). A paid Checkout Session credits its pack once, whichever of
    its events arrives first and however often. A subscription's events set its subscriber's plan
    (a live one its plan, an ended one the default plan), an older event delivered later changing
    nothing; other events are acknowledged."""
    secret = services.settings.stripe_webhook_secret
    if secret is None:
        raise BillingUnavailable("payments are not configured on this server")
    event = read_event(await request.body(), request.headers.get("stripe-signature"), secret.get_secret_value())
    if (plan_set := plan_set_of(event)) is not None:
        return await _set_plan(services, session, plan_set)
    top_up = top_up_of(event)
    if top_up is None:
        return StripeReceived(received=True, credited=False)
    if (saved := customer_of(event)) is not None and saved[0] == top_up.user_id:
        await auto_top_ups.save_customer(session, *saved)
        await session.commit()
    if not await account_exists(session, top_up.user_id):
        log.error("a paid Checkout Session names no account here", extra={"stripe_event": event["id"]})
        return StripeReceived(received=True, credited=False)
    credited = await services.ledger.top_up.remote(top_up)
    if credited:
        await services.ledger.auto_top_up.remote(top_up.user_id)  # back over its threshold: armed again
    return StripeReceived(received=True, credited=credited)


@v1.get("/plan")
async def my_plan(user: CurrentUser, services: ServicesDep, session: SessionDep) -> PlanOut:
    """The caller's plan and its monthly allowance, the limits that apply to them now, their balance and
    the credits they spent today and this month (UTC), which the daily and monthly limits count."""
    standing = await ledger.standing(session, user.id)
    return PlanOut(
        plan=user.plan,
        allowance=float(services.billing.plan_of(user.plan).allowance),
        status="throttled" if user.throttled else "active",
        limits=LimitsOut.of(services.billing.limits(user.plan, user.limits, throttled=user.throttled)),
        balance=float(standing.balance),
        creditsToday=float(standing.spent_today),
        creditsThisMonth=float(standing.spent_this_month),
    )


async def _set_plan(services: ServicesDep, session: SessionDep, plan_set: PlanSet) -> StripeReceived:
    billing = services.billing
    plan = plan_set.plan or billing.default_plan
    if plan not in billing.plans:
        log.error("a subscription names a plan not in configs", extra={"stripe_event": plan_set.event_id})
        return StripeReceived(received=True, credited=False)
    if not await account_exists(session, plan_set.user_id):
        log.error("a subscription event names no account here", extra={"stripe_event": plan_set.event_id})
        return StripeReceived(received=True, credited=False)
    applied = await set_plan_from_event(session, plan_set.user_id, plan, plan_set.made_at)
    await session.commit()
    if applied:
        await services.ledger.reset_allowances.remote()  # a plan with an allowance: this month's, now
    return StripeReceived(received=True, credited=False, plan=plan if applied else None)


@compat.get("/wallet/balance")
async def wallet_balance(user: CurrentUser, session: SessionDep) -> WalletBalance:
    """The caller's credits: what `POST /v1/jobs` can still hold."""
    return WalletBalance(balance=float(await ledger.balance(session, user.id)))
