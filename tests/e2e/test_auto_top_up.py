"""Auto top-up: a card saved at checkout buys the chosen pack, off-session, when the balance falls
under the threshold: once for each fall, never twice for one, whatever Stripe does meanwhile."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import ray
from sqlalchemy import select, update

from actors.ledger import LEDGER_NAME
from daygen.runtime import RAY_NAMESPACE
from storage.models import User
from tests.e2e.helpers import assert_v1_error, bearer, set_balance, signup
from tests.e2e.test_billing import BALANCE, deliver, paid
from tests.integration.test_shared_limits import eventually

JOB = {"operation": "offline.generate", "params": {"prompt": "spend", "width": 64, "height": 64}}


@pytest.fixture(autouse=True)
def fresh_stripe(fake_stripe):
    fake_stripe.reset()


async def balance(client, headers) -> float:
    return (await client.get(BALANCE, headers=headers)).json()["balance"]


async def with_saved_card(client, fake_stripe) -> dict:
    """A user who bought the starter pack (120 credits then) and saved the card."""
    created = await signup(client)
    headers = bearer(created["accessToken"])
    response = await client.post("/v1/billing/checkout", json={"pack": "starter", "saveCard": True}, headers=headers)
    assert response.status_code == 200, response.text
    assert (await deliver(client, paid(fake_stripe, response.json()["sessionId"]))).json()["credited"] is True
    return {"headers": headers, "id": created["user"]["id"]}


async def turn_on(client, headers, threshold: float, pack: str = "starter") -> dict:
    response = await client.put("/v1/billing/auto-top-up", json={"pack": pack, "threshold": threshold}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def spend(client, headers, jobs: int = 1) -> None:
    for _ in range(jobs):
        accepted = await client.post("/v1/jobs", json=JOB, headers=headers)
        assert accepted.status_code == 202, accepted.text


async def test_a_checkout_that_saves_the_card_makes_a_customer_to_charge_later(client, fake_stripe):
    user = await with_saved_card(client, fake_stripe)
    [made] = fake_stripe.made
    assert made.params["payment_intent_data[setup_future_usage]"] == "off_session"
    assert made.params["customer_creation"] == "always"
    state = (await client.get("/v1/billing/auto-top-up", headers=user["headers"])).json()
    assert state == {"enabled": False, "pack": None, "threshold": None, "cardSaved": True}
    assert fake_stripe.charges == []


async def test_a_fall_under_the_threshold_buys_the_pack_once_and_a_later_fall_once_more(client, fake_stripe, sessions):
    user = await with_saved_card(client, fake_stripe)
    headers = user["headers"]
    assert await turn_on(client, headers, 118) == {
        "enabled": True,
        "pack": "starter",
        "threshold": 118.0,
        "cardSaved": True,
    }
    await spend(client, headers, 2)  # 118: not under yet
    assert fake_stripe.charges == []
    await spend(client, headers, 3)  # 115: under

    async def bought(expected: float):
        async def check() -> bool:
            return await balance(client, headers) == expected

        return check

    await eventually(await bought(215))
    [charge] = fake_stripe.charges
    assert (charge.intent["amount"], charge.intent["currency"], charge.params["off_session"]) == (1900, "usd", "true")
    assert charge.intent["metadata"]["user_id"] == user["id"]
    # Stripe's own event for that payment adds nothing more.
    event = {"id": "evt_pi", "type": "payment_intent.succeeded", "created": 1, "data": {"object": charge.intent}}
    assert (await deliver(client, event)).json()["credited"] is False
    await spend(client, headers, 5)  # over the threshold: nothing
    await set_balance(sessions, user["id"], Decimal(119))  # back near it, as after a lot of work
    await spend(client, headers, 2)  # under again: a second fall
    await eventually(await bought(217))
    assert len(fake_stripe.charges) == 2
    assert len({c.params["metadata[auto_top_up]"] for c in fake_stripe.charges}) == 2


async def test_many_submits_under_the_threshold_at_once_buy_once(client, fake_stripe):
    user = await with_saved_card(client, fake_stripe)
    headers = user["headers"]
    await turn_on(client, headers, 115)
    answers = await asyncio.gather(*(client.post("/v1/jobs", json=JOB, headers=headers) for _ in range(10)))
    assert [a.status_code for a in answers] == [202] * 10

    async def bought() -> bool:
        return await balance(client, headers) == 210

    await eventually(bought)
    await spend(client, headers)
    assert len(fake_stripe.charges) == 1


async def test_turning_it_on_under_the_threshold_buys_at_once_and_off_stops_it(client, fake_stripe, sessions):
    user = await with_saved_card(client, fake_stripe)
    headers = user["headers"]
    await turn_on(client, headers, 500)
    assert await balance(client, headers) == 220
    off = await client.delete("/v1/billing/auto-top-up", headers=headers)
    assert off.json() == {"enabled": False, "pack": None, "threshold": None, "cardSaved": True}
    await set_balance(sessions, user["id"], Decimal(1))
    await spend(client, headers)
    ledger = ray.get_actor(LEDGER_NAME, namespace=RAY_NAMESPACE)
    assert await ledger.auto_top_up.remote() == 0  # the ledger's own pass buys nothing either
    assert len(fake_stripe.charges) == 1


async def test_a_declined_card_is_not_charged_again_for_the_same_fall(client, fake_stripe):
    user = await with_saved_card(client, fake_stripe)
    headers = user["headers"]
    fake_stripe.decline_next()
    await turn_on(client, headers, 200)  # 120: under at once, and declined
    assert len(fake_stripe.charges) == 1 and fake_stripe.charges[0].intent["status"] == "requires_payment_method"
    await spend(client, headers, 3)
    assert await balance(client, headers) == 117
    assert len(fake_stripe.charges) == 1
    # A pack bought by hand takes the balance back over the threshold: the next fall buys again.
    response = await client.post("/v1/billing/checkout", json={"pack": "pro"}, headers=headers)
    assert (await deliver(client, paid(fake_stripe, response.json()["sessionId"]))).json()["credited"] is True
    assert await balance(client, headers) == 617
    await spend(client, headers)
    assert len(fake_stripe.charges) == 1  # 616: over the threshold


async def test_a_charge_stripe_did_not_answer_is_tried_again_and_bought_once(client, fake_stripe):
    user = await with_saved_card(client, fake_stripe)
    headers = user["headers"]
    fake_stripe.fail_next(6)  # the first try and the client's own retries (2), twice: left pending twice
    await turn_on(client, headers, 200)  # under at once: the ledger tries, and its passes try again

    async def bought() -> bool:
        return await balance(client, headers) == 220

    await eventually(bought)
    assert len(fake_stripe.charges) == 1


async def test_a_charge_unanswered_for_a_day_is_given_up_not_made_again_and_stripes_event_credits_it(
    client, fake_stripe, sessions
):
    user = await with_saved_card(client, fake_stripe)
    headers = user["headers"]
    fake_stripe.lose_next_answers(1000)  # Stripe charges, and no answer ever arrives
    await turn_on(client, headers, 200)

    async def charged() -> bool:
        return len(fake_stripe.charges) == 1

    await eventually(charged)
    # A day later (the ledger tried all day, under the same key): given up.
    async with sessions.begin() as session:
        aged = datetime.now(UTC) - timedelta(hours=24)
        await session.execute(update(User).where(User.id == user["id"]).values(auto_top_up_claimed_at=aged))

    async def given_up() -> bool:
        async with sessions() as session:
            return await session.scalar(select(User.auto_top_up_pending).where(User.id == user["id"])) is None

    await eventually(given_up)
    # Stripe has forgotten the key by now, and answers again: still nothing is charged.
    fake_stripe.forget_keys()
    fake_stripe.lose_next_answers(0)
    ledger = ray.get_actor(LEDGER_NAME, namespace=RAY_NAMESPACE)
    assert await ledger.auto_top_up.remote() == 0
    assert len(fake_stripe.charges) == 1  # not charged again under a forgotten key
    assert await balance(client, headers) == 120
    # The charge Stripe did make is credited by its own event, once.
    [charge] = fake_stripe.charges
    event = {"id": "evt_lost", "type": "payment_intent.succeeded", "created": 1, "data": {"object": charge.intent}}
    assert (await deliver(client, event)).json()["credited"] is True
    assert (await deliver(client, event)).json()["credited"] is False
    assert await balance(client, headers) == 220
    assert await ledger.auto_top_up.remote() == 0  # over the threshold again: armed, nothing to buy
    assert len(fake_stripe.charges) == 1


async def test_auto_top_up_needs_a_saved_card_a_known_pack_and_a_sane_threshold(client):
    headers = bearer((await signup(client))["accessToken"])
    no_card = await client.put("/v1/billing/auto-top-up", json={"pack": "starter", "threshold": 10}, headers=headers)
    assert_v1_error(no_card, 409, "no_saved_card")
    unknown = await client.put("/v1/billing/auto-top-up", json={"pack": "mega", "threshold": 10}, headers=headers)
    assert "starter" in assert_v1_error(unknown, 422, "invalid_input")["details"][0]["message"]
    for body in (
        {"pack": "starter"},
        {"threshold": 10},
        {"pack": "starter", "threshold": -1},
        {"pack": "starter", "threshold": "lots"},
        {"pack": "starter", "threshold": 10**7},
        {"pack": "starter", "threshold": 1, "extra": 1},
        [],
    ):
        response = await client.put("/v1/billing/auto-top-up", json=body, headers=headers)
        assert_v1_error(response, 422, "validation_error")
    assert_v1_error(await client.get("/v1/billing/auto-top-up"), 401, "not_authenticated")
    state = (await client.get("/v1/billing/auto-top-up", headers=headers)).json()
    assert state == {"enabled": False, "pack": None, "threshold": None, "cardSaved": False}
