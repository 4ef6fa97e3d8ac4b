"""Credits and payments: credit packs bought through Stripe Checkout, Stripe's events, and the daygen
frontend's wallet balance."""

from __future__ import annotations

import logging

import stripe
from fastapi import APIRouter, Depends, Request

from daygen.errors import BillingUnavailable, InvalidInput
from pipelines.payments import read_event, start_checkout, top_up_of
from serve_app.deps import CurrentUser, ServicesDep, SessionDep, require_json
from serve_app.schemas import CheckoutCreate, CheckoutOut, LimitsOut, PlanOut, StripeReceived, WalletBalance
from storage import ledger
from storage.users import get_user

log = logging.getLogger("daygen.billing")

v1 = APIRouter(prefix="/v1/billing", tags=["billing"], dependencies=[Depends(require_json)])
compat = APIRouter(prefix="/api/payments", tags=["daygen-compatible"])


@v1.post("/checkout")
async def checkout(body: CheckoutCreate, user: CurrentUser, services: ServicesDep) -> CheckoutOut:
    """A Stripe Checkout Session for a credit pack (configs/billing.yaml); the credits are added when
    Stripe says it is paid (`/v1/billing/stripe/webhook`), not before."""
    packs = services.billing.packs
    pack = packs.get(body.pack)
    if pack is None:
        known = ", ".join(sorted(packs)) or "none"
        raise InvalidInput(f"no pack {body.pack!r}", details=[{"field": "pack", "message": f"one of: {known}"}])
    if services.stripe is None:
        raise BillingUnavailable("payments are not configured on this server")
    try:
        session = await start_checkout(
            services.stripe,
            user_id=user.id,
            pack_name=body.pack,
            pack=pack,
            return_url=services.settings.checkout_return,
        )
    except stripe.StripeError as exc:
        log.error("Stripe refused a Checkout Session", extra={"stripe_error": type(exc).__name__})
        raise BillingUnavailable("the payment provider did not answer; try again") from None
    return CheckoutOut(sessionId=session.id, url=session.url)


@v1.post("/stripe/webhook")
async def stripe_webhook(request: Request, services: ServicesDep, session: SessionDep) -> StripeReceived:
    """Stripe's events, checked against their signature over the raw body (400 when it is missing,
    wrong or more than five minutes old). A paid Checkout Session credits its pack once, whichever of
    its events arrives first and however often; other events are acknowledged."""
    secret = services.settings.stripe_webhook_secret
    if secret is None:
        raise BillingUnavailable("payments are not configured on this server")
    event = read_event(await request.body(), request.headers.get("stripe-signature"), secret.get_secret_value())
    top_up = top_up_of(event)
    if top_up is None:
        return StripeReceived(received=True, credited=False)
    if await get_user(session, top_up.user_id) is None:
        log.error("a paid Checkout Session names no account here", extra={"stripe_event": event["id"]})
        return StripeReceived(received=True, credited=False)
    credited = await services.ledger.top_up.remote(top_up)
    return StripeReceived(received=True, credited=credited)


@v1.get("/plan")
async def my_plan(user: CurrentUser, services: ServicesDep, session: SessionDep) -> PlanOut:
    """The caller's plan and its monthly allowance, the limits that apply to them now, their balance and
    the credits they spent today and this month (UTC), which the daily and monthly limits count."""
    plan = services.billing.plans.get(user.plan, services.billing.plans[services.billing.default_plan])
    throttled = user.status == "throttled"
    standing = await ledger.standing(session, user.id)
    return PlanOut(
        plan=user.plan,
        allowance=float(plan.allowance),
        status="throttled" if throttled else "active",
        limits=LimitsOut.of(services.billing.limits(user.plan, user.limits, throttled=throttled)),
        balance=float(standing.balance),
        creditsToday=float(standing.spent_today),
        creditsThisMonth=float(standing.spent_this_month),
    )


@compat.get("/wallet/balance")
async def wallet_balance(user: CurrentUser, session: SessionDep) -> WalletBalance:
    """The caller's credits: what `POST /v1/jobs` can still hold."""
    return WalletBalance(balance=float(await ledger.balance(session, user.id)))
