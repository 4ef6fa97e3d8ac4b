"""Credits: the balance as the daygen frontend reads it (`GET /api/payments/wallet/balance`), and credit
packs bought through Stripe Checkout, credited by Stripe's signed events exactly once."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import jwt
import pytest
import stripe
from sqlalchemy import delete

from storage.models import User
from tests.conftest import STRIPE_WEBHOOK_SECRET
from tests.e2e.helpers import api_without_actors, assert_api_error, assert_v1_error, bearer, set_balance, signup

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


# -- credit packs through Stripe ------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_stripe(fake_stripe):
    fake_stripe.reset()


async def buy(client, headers, pack: str = "pro") -> dict:
    response = await client.post("/v1/billing/checkout", json={"pack": pack}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def paid(fake_stripe, session_id: str, kind: str = "checkout.session.completed", status: str = "paid") -> dict:
    """The event Stripe sends about a session the fake made: its session object, paid (or not)."""
    [made] = [m.session for m in fake_stripe.made if m.session["id"] == session_id]
    session = {**made, "payment_status": status, "status": "complete"}
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": session},
    }


async def deliver(client, event: dict, *, secret: str = STRIPE_WEBHOOK_SECRET, at: float | None = None):
    payload = json.dumps(event)
    signature = stripe.WebhookSignature.generate_signature_header(payload, secret, int(at or time.time()))
    headers = {"Content-Type": "application/json", "Stripe-Signature": signature}
    return await client.post("/v1/billing/stripe/webhook", content=payload, headers=headers)


async def test_a_checkout_session_names_the_buyer_and_the_pack_and_adds_nothing_yet(client, fake_stripe, settings):
    mine = await signup(client)
    session = await buy(client, bearer(mine["accessToken"]), "pro")
    assert session["sessionId"].startswith("cs_test_") and session["url"].startswith("https://")
    [made] = fake_stripe.made
    assert made.params["client_reference_id"] == mine["user"]["id"]
    assert (made.params["metadata[pack]"], made.params["metadata[credits]"]) == ("pro", "500")
    assert (made.session["amount_total"], made.session["currency"], made.params["mode"]) == (7900, "usd", "payment")
    assert made.params["success_url"].startswith(f"{settings.api_base}/studio?checkout=success")
    assert (await client.get(BALANCE, headers=bearer(mine["accessToken"]))).json() == {"balance": 20.0}


async def test_a_paid_session_credits_its_pack_once_however_often_its_event_comes(client, fake_stripe):
    mine = await signup(client)
    headers = bearer(mine["accessToken"])
    event = paid(fake_stripe, (await buy(client, headers, "starter"))["sessionId"])
    answers = await asyncio.gather(*(deliver(client, event) for _ in range(5)))
    assert [a.status_code for a in answers] == [200] * 5
    assert sorted(a.json()["credited"] for a in answers) == [False] * 4 + [True]
    assert (await client.get(BALANCE, headers=headers)).json() == {"balance": 120.0}
    assert (await deliver(client, event)).json() == {"received": True, "credited": False, "plan": None}, (
        "a replay days later"
    )
    assert (await client.get(BALANCE, headers=headers)).json() == {"balance": 120.0}


async def test_a_delayed_payment_credits_once_in_whichever_order_its_events_come(client, fake_stripe):
    mine = await signup(client)
    headers = bearer(mine["accessToken"])
    session_id = (await buy(client, headers, "pro"))["sessionId"]
    succeeded = paid(fake_stripe, session_id, "checkout.session.async_payment_succeeded")
    completed_unpaid = paid(fake_stripe, session_id, status="unpaid")
    assert (await deliver(client, succeeded)).json()["credited"] is True  # out of order: before `completed`
    assert (await deliver(client, completed_unpaid)).json()["credited"] is False
    assert (await client.get(BALANCE, headers=headers)).json() == {"balance": 520.0}

    other = (await buy(client, headers, "starter"))["sessionId"]
    assert (await deliver(client, paid(fake_stripe, other, status="unpaid"))).json()["credited"] is False
    failed = paid(fake_stripe, other, "checkout.session.async_payment_failed", status="unpaid")
    assert (await deliver(client, failed)).json()["credited"] is False
    assert (await client.get(BALANCE, headers=headers)).json() == {"balance": 520.0}, "an unpaid pack adds nothing"


async def test_events_with_a_bad_missing_or_old_signature_are_400_and_credit_nothing(client, fake_stripe):
    mine = await signup(client)
    headers = bearer(mine["accessToken"])
    event = paid(fake_stripe, (await buy(client, headers))["sessionId"])
    forged = await deliver(client, event, secret="whsec_" + "0" * 32)
    stale = await deliver(client, event, at=time.time() - 301)
    unsigned = await client.post("/v1/billing/stripe/webhook", json=event)
    signed_for_another_body = stripe.WebhookSignature.generate_signature_header(
        json.dumps(event), STRIPE_WEBHOOK_SECRET
    )
    tampered = await client.post(
        "/v1/billing/stripe/webhook",
        content=json.dumps({**event, "data": {"object": {**event["data"]["object"], "metadata": {"credits": "1e6"}}}}),
        headers={"Content-Type": "application/json", "Stripe-Signature": signed_for_another_body},
    )
    for response in (forged, stale, unsigned, tampered):
        assert_v1_error(response, 400, "invalid_signature")
    for garbage in ("not json", "[]", "null", "{}", '{"id": 3, "type": "checkout.session.completed"}'):
        signature = stripe.WebhookSignature.generate_signature_header(garbage, STRIPE_WEBHOOK_SECRET)
        response = await client.post(
            "/v1/billing/stripe/webhook",
            content=garbage,
            headers={"Content-Type": "application/json", "Stripe-Signature": signature},
        )
        assert_v1_error(response, 400, "malformed_body")
    assert (await client.get(BALANCE, headers=headers)).json() == {"balance": 20.0}


async def test_other_events_and_sessions_not_ours_are_acknowledged_and_credit_nothing(client, fake_stripe):
    mine = await signup(client)
    headers = bearer(mine["accessToken"])
    event = paid(fake_stripe, (await buy(client, headers))["sessionId"])
    renewal = {**event, "id": "evt_invoice", "type": "invoice.paid", "data": {"object": {"id": "in_1"}}}
    stranger = {**event, "data": {"object": {**event["data"]["object"], "client_reference_id": str(uuid.uuid4())}}}
    nameless = {**event, "data": {"object": {**event["data"]["object"], "metadata": {}}}}
    for other in (renewal, stranger, nameless):
        response = await deliver(client, other)
        assert response.json() == {"received": True, "credited": False, "plan": None}, response.text
    assert (await client.get(BALANCE, headers=headers)).json() == {"balance": 20.0}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"pack": "platinum"}, "invalid_input"),
        ({}, "validation_error"),
        ({"pack": "pro", "quantity": 2}, "validation_error"),
        ({"pack": 3}, "validation_error"),
        ({"pack": ""}, "validation_error"),
    ],
    ids=["unknown-pack", "no-pack", "extra-field", "not-a-string", "empty"],
)
async def test_a_bad_checkout_body_is_a_422_and_asks_stripe_for_nothing(client, fake_stripe, body, code):
    headers = bearer((await signup(client))["accessToken"])
    error = assert_v1_error(await client.post("/v1/billing/checkout", json=body, headers=headers), 422, code)
    if code == "invalid_input":
        assert "agency, pro, starter" in error["details"][0]["message"]
    assert fake_stripe.made == []


async def test_checkout_needs_a_token_and_stripe(client, fake_stripe, settings):
    assert_v1_error(await client.post("/v1/billing/checkout", json={"pack": "pro"}), 401, "not_authenticated")
    headers = bearer((await signup(client))["accessToken"])
    fake_stripe.fail_next(times=3)  # the client's own retries too
    down = await client.post("/v1/billing/checkout", json={"pack": "pro"}, headers=headers)
    assert_v1_error(down, 503, "billing_unavailable")
    async with api_without_actors(settings.model_copy(update={"stripe_secret_key": None})) as (app_client, _):
        headers = bearer((await signup(app_client))["accessToken"])
        response = await app_client.post("/v1/billing/checkout", json={"pack": "pro"}, headers=headers)
        assert_v1_error(response, 503, "billing_unavailable")
    assert fake_stripe.made == []
