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
    client: stripe.StripeClient,
    *,
    user_id: uuid.UUID,
    pack_name: str,
    pack: Pack,
    return_url: str,
    save_card: bool = False,
) -> stripe.checkout.Session:
    """A Checkout Session for one pack, which names its buyer (`client_reference_id`) and the pack and
    credits bought (`metadata`), as the event that pays for it will carry them back. With `save_card`,
    Stripe keeps the card for charges made while the buyer is away (auto top-up) on a new customer."""
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
    if save_card:
        params["customer_creation"] = "always"
        params["payment_intent_data"] = {"setup_future_usage": "off_session"}
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
    """A pack paid for: the credits to add to the buyer's account, once per payment (its `key`: the
    Checkout Session, or the off-session payment intent of an auto top-up)."""

    user_id: uuid.UUID
    pack: str
    credits: Decimal
    key: str
    reason: str


def _event_object(event: dict[str, Any]) -> dict[str, Any] | None:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else None


def top_up_of(event: dict[str, Any]) -> TopUp | None:
    """What a paid Checkout Session or a succeeded auto top-up credits; None for any other event, an
    unpaid session, or a payment that did not come from here (logged: nothing can be credited for it)."""
    obj = _event_object(event)
    if obj is None:
        return None
    if event["type"] in CREDITING_EVENTS and obj.get("payment_status") == "paid":
        buyer, key = obj.get("client_reference_id"), f"stripe:checkout:{obj.get('id')}"
    elif event["type"] == "payment_intent.succeeded":
        buyer, key = (obj.get("metadata") or {}).get("user_id"), f"stripe:payment_intent:{obj.get('id')}"
    else:
        return None
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    try:
        top_up = TopUp(
            user_id=uuid.UUID(str(buyer)),
            pack=str(metadata["pack"]),
            credits=Decimal(str(metadata["credits"])),
            key=key,
            reason=f"{metadata['pack']} pack, Stripe {obj['id']} ({event['id']})",
        )
    except (KeyError, ValueError, TypeError, ArithmeticError):
        top_up = None
    if top_up is None or not (top_up.credits.is_finite() and top_up.credits > 0):
        log.error("a Stripe payment names no buyer or pack", extra={"stripe_event": event["id"]})
        return None
    return top_up


def customer_of(event: dict[str, Any]) -> tuple[uuid.UUID, str] | None:
    """(buyer, Stripe customer) of a paid Checkout Session that saved the buyer's card."""
    obj = _event_object(event)
    if obj is None or event["type"] not in CREDITING_EVENTS or not isinstance(obj.get("customer"), str):
        return None
    try:
        return uuid.UUID(str(obj.get("client_reference_id"))), obj["customer"]
    except ValueError:
        return None


async def charge_off_session(
    client: stripe.StripeClient, *, user_id: uuid.UUID, customer: str, pack_name: str, pack: Pack, key: str
) -> stripe.PaymentIntent | None:
    """Buy a pack with the customer's saved card, the buyer away (an auto top-up); once per `key`,
    however often it is asked (Stripe's idempotency). None when no card is saved. Raises
    stripe.CardError when the card is declined, another stripe.StripeError when Stripe can't answer."""
    methods = await client.v1.payment_methods.list_async(params={"customer": customer, "type": "card"})
    if not methods.data:
        return None
    params: dict[str, Any] = {
        "amount": pack.price,
        "currency": pack.currency,
        "customer": customer,
        "payment_method": methods.data[0].id,
        "off_session": True,
        "confirm": True,
        "description": f"daygen auto top-up: {pack_name}, {pack.credits} credits",
        "metadata": {"pack": pack_name, "credits": str(pack.credits), "user_id": str(user_id), "auto_top_up": key},
    }
    return await client.v1.payment_intents.create_async(params=params, options={"idempotency_key": key})


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
    obj = _event_object(event)
    if obj is None:
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
