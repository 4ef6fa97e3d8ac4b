"""Credits and payments. Now: the daygen frontend's wallet balance."""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.deps import CurrentUser, SessionDep
from serve_app.schemas import WalletBalance
from storage import ledger

compat = APIRouter(prefix="/api/payments", tags=["daygen-compatible"])


@compat.get("/wallet/balance")
async def wallet_balance(user: CurrentUser, session: SessionDep) -> WalletBalance:
    """The caller's credits: what `POST /v1/jobs` can still hold."""
    return WalletBalance(balance=float(await ledger.balance(session, user.id)))
