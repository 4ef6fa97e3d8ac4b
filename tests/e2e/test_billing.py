"""Credits as the daygen frontend reads them: `GET /api/payments/wallet/balance`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import jwt
from sqlalchemy import delete

from storage.models import User
from tests.e2e.helpers import assert_api_error, bearer, set_balance, signup

BALANCE = "/api/payments/wallet/balance"


async def test_the_wallet_shows_the_signup_credits_then_what_a_job_left(client, sessions):
    mine, theirs = await signup(client), await signup(client)
    headers = bearer(mine["accessToken"])
    assert (await client.get(BALANCE, headers=headers)).json() == {"balance": 20.0}
    await set_balance(sessions, mine["user"]["id"], Decimal("2.5"))
    job = {"operation": "offline.generate", "params": {"prompt": "spent", "width": 64, "height": 64}}
    accepted = await client.post("/v1/jobs", json=job, headers=headers)
    assert accepted.status_code == 202, accepted.text
    done = await client.get(f"/v1/jobs/{accepted.json()['jobId']}", params={"wait": 30}, headers=headers)
    assert done.json()["status"] == "succeeded"
    assert (await client.get(BALANCE, headers=headers)).json() == {"balance": 1.5}
    assert (await client.get(BALANCE, headers=bearer(theirs["accessToken"]))).json() == {"balance": 20.0}


async def test_the_wallet_needs_a_valid_token_of_a_user_who_still_exists(client, sessions, settings):
    assert_api_error(await client.get(BALANCE), 401)
    created = await signup(client)
    secret, now = settings.jwt_secret.get_secret_value(), datetime.now(UTC)
    claims = {"sub": created["user"]["id"], "iat": now - timedelta(hours=2), "exp": now - timedelta(hours=1)}
    expired = jwt.encode(claims, secret, algorithm="HS256")
    forged = jwt.encode({**claims, "exp": now + timedelta(hours=1)}, "f" * 40, algorithm="HS256")
    for token in (expired, forged, "garbage"):
        assert_api_error(await client.get(BALANCE, headers=bearer(token)), 401)
    async with sessions.begin() as session:
        await session.execute(delete(User).where(User.id == uuid.UUID(created["user"]["id"])))
    assert_api_error(await client.get(BALANCE, headers=bearer(created["accessToken"])), 401)
