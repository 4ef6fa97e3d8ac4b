"""Credit packs bought through Stripe Checkout: the session a purchase starts with, and what a Stripe
event credits. Plain code over the `stripe` package; the ledger actor adds the credits.

A pack is credited once per Checkout Session (its ledger key): Stripe delivers events at least once
and in any order, and a session paid by a delayed method sends `checkout.session.completed`
unpaid, then `checkout.session.async_payment_succeeded` paid; whichever paid one arrives first
credits the pack, every other is a repeat.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import stripe

from daygen.errors import InvalidSignature, MalformedBody
from pipelines.billing_config import Pack, Plan

log = logging.getLogger("daygen.payments")

SIGNATURE_TOLERANCE_SECONDS = 300
CREDITING_EVENTS = {"checkout.session.completed", "checkout.session.async_payment_succeeded"}


def make_client(secret_key: str, api_base: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        secret_key, base_addresses={"api": api_base}, http_client=stripe.HTTPXClient(), max_network_retries=2
    )


async def start_checkout(
    client: stripe.StripeClient, *, user_id: uuid.UUID, pack_name: str, pack: Pack, return_url: str
) -> stripe.checkout.Session:
    """A Checkout Session for one pack, which names its buyer (`client_reference_id`) and the pack and
    credits bought (`metadata`), as the event that pays for it will carry them back."""
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": pack.currency,
                    "unit_amount": pack.price,
                    "product_data": {"name": f"daygen {pack_name}: {pack.credits} credits"},
                },
            }
        ],
        "client_reference_id": str(user_id),
        "metadata": {"pack": pack_name, "credits": str(pack.credits), "user_id": str(user_id)},
        "success_url": f"{return_url}?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{return_url}?checkout=canceled",
    }
    return await client.v1.checkout.sessions.create_async(params=params)


async def start_subscription(
    client: stripe.StripeClient, *, user_id: uuid.UUID, plan_name: str, plan: Plan, return_url: str
) -> stripe.checkout.Session:
    """A Checkout Session for a monthly plan; the subscription it makes names the subscriber and the
    plan (`subscription_data.metadata`), as its events will carry them back."""
    metadata = {"plan": plan_name, "user_id": str(user_id)}
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": plan.currency,
                    "unit_amount": plan.price,
                    "recurring": {"interval": "month"},
                    "product_data": {"name": f"daygen {plan_name}: {plan.allowance} credits a month"},
                },
            }
        ],
        "client_reference_id": str(user_id),
        "metadata": metadata,
        "subscription_data": {"metadata": metadata},
        "success_url": f"{return_url}?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{return_url}?checkout=canceled",
    }
    return await client.v1.checkout.sessions.create_async(params=params)


def read_event(payload: bytes, signature: str | None, secret: str) -> dict[str, Any]:
    """The event a request carries, if Stripe signed this very body in the last five minutes."""
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, SIGNATURE_TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError:
        raise InvalidSignature(
            "the Stripe-Signature header is missing, does not match the body, or is too old"
        ) from None
    try:
        event = json.loads(payload)
    except ValueError:
        raise MalformedBody("the body is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        raise MalformedBody("the body is not a Stripe event")
    return event


@dataclass(frozen=True)
class TopUp:
    """A pack paid for: the credits to add to the buyer's account, once per Checkout Session."""

    user_id: uuid.UUID
    pack: str
    credits: Decimal
    session_id: str
    event_id: str

    @property
    def key(self) -> str:
        return f"stripe:checkout:{self.session_id}"


def top_up_of(event: dict[str, Any]) -> TopUp | None:
    """What a paid Checkout Session credits; None for any other event, an unpaid session, or a session
    that did not come from `start_checkout` (logged: nothing can be credited for it)."""
    if event["type"] not in CREDITING_EVENTS:
        return None
    data = event.get("data")
    session = data.get("object") if isinstance(data, dict) else None
    if not isinstance(session, dict) or session.get("payment_status") != "paid":
        return None
    metadata = session.get("metadata") if isinstance(session.get("metadata"), dict) else {}
    try:
        top_up = TopUp(
            user_id=uuid.UUID(str(session.get("client_reference_id"))),
            pack=str(metadata["pack"]),
            credits=Decimal(str(metadata["credits"])),
            session_id=str(session["id"]),
            event_id=event["id"],
        )
    except (KeyError, ValueError, TypeError, ArithmeticError):
        top_up = None
    if top_up is None or not (top_up.credits.is_finite() and top_up.credits > 0):
        log.error("a paid Checkout Session names no buyer or pack", extra={"stripe_event": event["id"]})
        return None
    return top_up


# A subscription in these states is paid for (or in its trial); in these, it is over. Others
# (`past_due`, `incomplete`) leave the plan as it is while Stripe retries the payment.
LIVE_SUBSCRIPTION = {"active", "trialing"}
ENDED_SUBSCRIPTION = {"canceled", "unpaid", "incomplete_expired"}
SUBSCRIPTION_EVENTS = {
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
}


@dataclass(frozen=True)
class PlanSet:
    """A subscriber's plan as a Stripe event says it is now (None: the subscription is over), and when
    the event was made, so an older event delivered later changes nothing."""

    user_id: uuid.UUID
    plan: str | None
    event_id: str
    made_at: datetime


def _subscription_metadata(event: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """The metadata `start_subscription` gave the subscription: on the subscription itself, or on an
    invoice's subscription details (where Stripe's API versions put them)."""
    if event["type"] in SUBSCRIPTION_EVENTS:
        metadata = obj.get("metadata")
    else:
        details = obj.get("subscription_details") or (obj.get("parent") or {}).get("subscription_details") or {}
        metadata = details.get("metadata") if isinstance(details, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def plan_set_of(event: dict[str, Any]) -> PlanSet | None:
    """The plan a subscription event sets: a live subscription its plan, an ended one none, and a paid
    invoice of a subscription its plan (a renewal); None for other events and states."""
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        return None
    if event["type"] in SUBSCRIPTION_EVENTS:
        status = "canceled" if event["type"] == "customer.subscription.deleted" else obj.get("status")
        if status not in LIVE_SUBSCRIPTION | ENDED_SUBSCRIPTION:
            return None
        live = status in LIVE_SUBSCRIPTION
    elif event["type"] == "invoice.paid" and obj.get("billing_reason") in ("subscription_create", "subscription_cycle"):
        live = True
    else:
        return None
    metadata = _subscription_metadata(event, obj)
    try:
        plan_set = PlanSet(
            user_id=uuid.UUID(str(metadata["user_id"])),
            plan=str(metadata["plan"]) if live else None,
            event_id=event["id"],
            made_at=datetime.fromtimestamp(int(event["created"]), UTC),
        )
    except (KeyError, ValueError, TypeError, OverflowError):
        log.error("a subscription event names no subscriber or plan", extra={"stripe_event": event["id"]})
        return None
    return plan_set
