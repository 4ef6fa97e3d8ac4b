"""Monthly plans bought through Stripe Checkout: a subscription's signed events set its subscriber's
plan, once and in whatever order they come, and a plan's allowance is granted at once."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

import pytest

from tests.e2e.helpers import assert_v1_error, bearer, signup
from tests.e2e.test_billing import BALANCE, deliver


@pytest.fixture(autouse=True)
def fresh_stripe(fake_stripe):
    fake_stripe.reset()


async def subscribe(client, headers, plan: str) -> dict:
    response = await client.post("/v1/billing/subscribe", json={"plan": plan}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def subscription_event(kind: str, user_id: str, plan: str, status: str = "active", *, created: int | None = None):
    """A `customer.subscription.*` event as Stripe sends it for a subscription `subscribe` started."""
    subscription = {
        "id": f"sub_{secrets.token_hex(8)}",
        "object": "subscription",
        "status": status,
        "metadata": {"plan": plan, "user_id": user_id},
    }
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "type": kind,
        "created": created or int(time.time()),
        "data": {"object": subscription},
    }


def invoice_event(kind: str, user_id: str, plan: str, reason: str = "subscription_cycle", *, created: int):
    invoice = {
        "id": f"in_{secrets.token_hex(8)}",
        "object": "invoice",
        "billing_reason": reason,
        "parent": {"subscription_details": {"metadata": {"plan": plan, "user_id": user_id}}},
    }
    return {"id": f"evt_{secrets.token_hex(12)}", "type": kind, "created": created, "data": {"object": invoice}}


async def plan_of(client, headers) -> dict:
    return (await client.get("/v1/billing/plan", headers=headers)).json()


async def test_a_subscription_checkout_is_a_monthly_price_naming_the_subscriber_and_the_plan(client, fake_stripe):
    mine = await signup(client)
    session = await subscribe(client, bearer(mine["accessToken"]), "pro")
    [made] = fake_stripe.made
    assert session["sessionId"] == made.session["id"]
    assert (made.params["mode"], made.params["line_items[0][price_data][recurring][interval]"]) == (
        "subscription",
        "month",
    )
    assert made.session["amount_total"] == 9900
    assert made.params["subscription_data[metadata][plan]"] == "pro"
    assert made.params["subscription_data[metadata][user_id]"] == mine["user"]["id"]
    assert (await plan_of(client, bearer(mine["accessToken"])))["plan"] == "free", "nothing until Stripe says"


async def test_subscribing_to_a_plan_without_a_price_or_an_unknown_one_is_422(client, fake_stripe):
    headers = bearer((await signup(client))["accessToken"])
    for plan in ("free", "gold"):
        response = await client.post("/v1/billing/subscribe", json={"plan": plan}, headers=headers)
        error = assert_v1_error(response, 422, "invalid_input")
        assert "plus" in error["details"][0]["message"]
    for body in ({}, {"plan": 1}, {"plan": "pro", "extra": True}):
        assert_v1_error(await client.post("/v1/billing/subscribe", json=body, headers=headers), 422, "validation_error")
    assert_v1_error(await client.post("/v1/billing/subscribe", json={"plan": "pro"}), 401, "not_authenticated")
    assert fake_stripe.made == []


async def test_a_live_subscription_sets_the_plan_and_grants_its_allowance_once(client):
    mine = await signup(client)
    headers, user_id = bearer(mine["accessToken"]), mine["user"]["id"]
    created = subscription_event("customer.subscription.created", user_id, "plus")
    answers = await asyncio.gather(*(deliver(client, created) for _ in range(4)))
    assert {a.status_code for a in answers} == {200}
    assert (await plan_of(client, headers))["plan"] == "plus"
    assert (await client.get(BALANCE, headers=headers)).json() == {"balance": 220.0}
    paid = invoice_event("invoice.paid", user_id, "plus", "subscription_create", created=int(time.time()))
    assert (await deliver(client, paid)).status_code == 200
    assert (await client.get(BALANCE, headers=headers)).json() == {"balance": 220.0}, "one allowance a month"


async def test_events_out_of_order_leave_the_plan_of_the_latest(client):
    mine = await signup(client)
    headers, user_id = bearer(mine["accessToken"]), mine["user"]["id"]
    now = int(time.time())
    upgraded = subscription_event("customer.subscription.updated", user_id, "studio", created=now)
    created = subscription_event("customer.subscription.created", user_id, "plus", created=now - 60)
    assert (await deliver(client, upgraded)).json()["plan"] == "studio"
    assert (await deliver(client, created)).json()["plan"] is None  # older: changes nothing
    assert (await plan_of(client, headers))["plan"] == "studio"
    deleted = subscription_event("customer.subscription.deleted", user_id, "studio", "canceled", created=now + 60)
    assert (await deliver(client, deleted)).json()["plan"] == "free"
    stale_renewal = invoice_event("invoice.paid", user_id, "studio", created=now + 30)
    assert (await deliver(client, stale_renewal)).json()["plan"] is None
    assert (await plan_of(client, headers))["plan"] == "free"


async def test_a_subscription_waiting_on_its_payment_keeps_its_plan_and_other_events_change_nothing(client):
    mine = await signup(client)
    headers, user_id = bearer(mine["accessToken"]), mine["user"]["id"]
    now = int(time.time())
    await deliver(client, subscription_event("customer.subscription.created", user_id, "pro", created=now))
    past_due = subscription_event("customer.subscription.updated", user_id, "pro", "past_due", created=now + 1)
    failed = invoice_event("invoice.payment_failed", user_id, "pro", created=now + 2)
    for event in (past_due, failed):
        response = await deliver(client, event)
        assert response.json() == {"received": True, "credited": False, "plan": None}
    assert (await plan_of(client, headers))["plan"] == "pro"


async def test_subscription_events_naming_no_account_or_plan_here_are_acknowledged_and_change_nothing(client):
    mine = await signup(client)
    headers, user_id = bearer(mine["accessToken"]), mine["user"]["id"]
    for event in (
        subscription_event("customer.subscription.created", str(uuid.uuid4()), "pro"),
        subscription_event("customer.subscription.created", user_id, "gold"),
        subscription_event("customer.subscription.created", "not-a-uuid", "pro"),
        {**subscription_event("customer.subscription.created", user_id, "pro"), "data": {"object": "x"}},
    ):
        response = await deliver(client, event)
        assert response.json() == {"received": True, "credited": False, "plan": None}
    assert (await plan_of(client, headers))["plan"] == "free"
    unsigned = subscription_event("customer.subscription.created", user_id, "pro")
    assert_v1_error(await deliver(client, unsigned, secret="whsec_wrong"), 400, "invalid_signature")
    assert (await plan_of(client, headers))["plan"] == "free"
