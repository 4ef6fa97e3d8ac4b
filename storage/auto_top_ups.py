"""Auto top-up's state on the account: armed while the balance is at or over its threshold; each fall
under it (a crossing) is claimed once, charged once, and the account is armed again only once its
balance is back at or over the threshold, so one crossing never buys twice.

A claimed crossing stays `pending` until its charge is settled either way: a charge that Stripe could
not answer is tried again with the same idempotency key (the crossing's number), so a retry after a
crash buys nothing more. Stripe keeps a key for 24 hours: a crossing claimed longer ago than
`RETRY_HOURS` is not charged again (Stripe might have made the first charge and forgotten its key),
but given up; if that charge was made, Stripe's `payment_intent.succeeded` event credits it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import LedgerBalance, User

# Under the 24 hours Stripe keeps an idempotency key, with an hour to spare for the clocks and the pass.
RETRY_HOURS = 23


@dataclass(frozen=True)
class Crossing:
    """A fall of an account's balance under its threshold, to be bought back once."""

    user_id: uuid.UUID
    number: int
    pack: str
    customer: str
    stale: bool = False  # claimed longer ago than RETRY_HOURS: not to be charged again

    @property
    def key(self) -> str:
        return f"daygen-auto-top-up:{self.user_id}:{self.number}"


def _balance() -> ColumnElement[Decimal]:
    return func.coalesce(select(LedgerBalance.balance).where(LedgerBalance.account_id == User.id).scalar_subquery(), 0)


def _accounts(user_id: uuid.UUID | None) -> list[ColumnElement[bool]]:
    on = [User.auto_top_up_pack.is_not(None)]
    return on if user_id is None else [*on, User.id == user_id]


async def set_auto_top_up(
    session: AsyncSession, user_id: uuid.UUID, pack: str | None, threshold: Decimal | None
) -> None:
    """Turn auto top-up on (a pack and a threshold) or off (None), armed; the caller commits."""
    values = {"auto_top_up_pack": pack, "auto_top_up_threshold": threshold, "auto_top_up_armed": True}
    await session.execute(update(User).where(User.id == user_id).values(values))


async def save_customer(session: AsyncSession, user_id: uuid.UUID, customer: str) -> None:
    await session.execute(update(User).where(User.id == user_id).values(stripe_customer_id=customer))


async def rearm(session: AsyncSession, user_id: uuid.UUID | None = None) -> None:
    """Arm again the accounts (one, or every one with auto top-up) whose balance is back at or over the
    threshold, with no charge pending."""
    await session.execute(
        update(User)
        .where(*_accounts(user_id), ~User.auto_top_up_armed, User.auto_top_up_pending.is_(None))
        .where(_balance() >= User.auto_top_up_threshold)
        .values(auto_top_up_armed=True)
    )


async def claim(session: AsyncSession, user_id: uuid.UUID | None = None) -> None:
    """Claim the crossing of each armed account (one, or every one) whose balance is under its threshold
    and which has a saved card: disarmed, the crossing pending. The caller commits before charging."""
    await session.execute(
        update(User)
        .where(*_accounts(user_id), User.auto_top_up_armed, User.stripe_customer_id.is_not(None))
        .where(_balance() < User.auto_top_up_threshold)
        .values(
            auto_top_up_armed=False,
            auto_top_up_crossings=User.auto_top_up_crossings + 1,
            auto_top_up_pending=User.auto_top_up_crossings + 1,
            auto_top_up_claimed_at=func.now(),
        )
    )


async def pending(session: AsyncSession, user_id: uuid.UUID | None = None) -> list[Crossing]:
    """The crossings claimed but not yet settled, each saying whether it is too old to charge again."""
    stale = User.auto_top_up_claimed_at < func.now() - timedelta(hours=RETRY_HOURS)
    rows = await session.execute(
        select(
            User.id, User.auto_top_up_pending, User.auto_top_up_pack, User.stripe_customer_id, stale.is_(True)
        ).where(*_accounts(user_id), User.auto_top_up_pending.is_not(None), User.stripe_customer_id.is_not(None))
    )
    return [Crossing(*row) for row in rows]


async def settled(session: AsyncSession, crossing: Crossing) -> None:
    """The crossing's charge is over, bought or declined."""
    await session.execute(
        update(User)
        .where(User.id == crossing.user_id, User.auto_top_up_pending == crossing.number)
        .values(auto_top_up_pending=None, auto_top_up_claimed_at=None)
    )
