"""Auto top-up: an account's pack bought with its saved card, off-session, once for each time its
balance fell under its threshold (storage/auto_top_ups.py keeps that state). Run by the ledger, which
adds the credits; Stripe's own event for the payment (`payment_intent.succeeded`) adds nothing more,
as both are keyed by the payment intent.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

import stripe
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pipelines.billing_config import Pack
from pipelines.payments import charge_off_session
from storage import auto_top_ups, ledger

log = logging.getLogger("daygen.payments")


async def buy_auto_top_ups(
    sessions: async_sessionmaker[AsyncSession],
    client: stripe.StripeClient,
    packs: Mapping[str, Pack],
    user_id: uuid.UUID | None = None,
) -> int:
    """Arm the accounts (one, or every one) whose balance is back over the threshold, claim the
    crossings of those under it, and buy each pending crossing's pack; how many were bought now."""
    async with sessions.begin() as session:
        await auto_top_ups.rearm(session, user_id)
        await auto_top_ups.claim(session, user_id)
    async with sessions() as session:
        crossings = await auto_top_ups.pending(session, user_id)
    return sum([await _buy(sessions, client, packs.get(c.pack), c) for c in crossings])


async def _buy(
    sessions: async_sessionmaker[AsyncSession],
    client: stripe.StripeClient,
    pack: Pack | None,
    crossing: auto_top_ups.Crossing,
) -> bool:
    """One crossing's charge, and its credits once it succeeded; left pending when Stripe did not
    answer (the next try has the same idempotency key) unless that key may be forgotten by now,
    settled otherwise."""
    extra = {"user_id": str(crossing.user_id), "crossing": crossing.number}
    intent = None
    if pack is None:
        log.warning("an auto top-up names a pack no longer in configs", extra=extra)
    elif crossing.stale:
        log.warning(
            "an auto top-up Stripe did not answer for a day is given up, not charged again under a key it "
            "may have forgotten; if its first charge was made, Stripe's payment_intent.succeeded credits it",
            extra=extra,
        )
    else:
        try:
            intent = await charge_off_session(
                client,
                user_id=crossing.user_id,
                customer=crossing.customer,
                pack_name=crossing.pack,
                pack=pack,
                key=crossing.key,
            )
            if intent is None:
                log.warning("an auto top-up found no saved card to charge", extra=extra)
        except stripe.CardError as exc:
            log.warning("an auto top-up was declined", extra={**extra, "decline": exc.code})
        except stripe.StripeError:
            log.exception("Stripe did not answer an auto top-up; trying again later", extra=extra)
            return False
    async with sessions.begin() as session:
        added = False
        if pack is not None and intent is not None and intent.status == "succeeded":
            added = await ledger.append_entry(
                session,
                account_id=crossing.user_id,
                kind="topup",
                amount=pack.credits,
                idempotency_key=f"stripe:payment_intent:{intent.id}",
                reason=f"{crossing.pack} pack, auto top-up, Stripe {intent.id}",
            )
        await auto_top_ups.settled(session, crossing)
        await auto_top_ups.rearm(session, crossing.user_id)  # bought back over the threshold: the next fall counts
    return added
