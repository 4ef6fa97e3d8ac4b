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
from decimal import Decimal
from typing import Any

import stripe

from daygen.errors import InvalidSignature, MalformedBody
from pipelines.billing_config import Pack

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
