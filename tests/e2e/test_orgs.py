"""Organisations: teams whose members' jobs spend the team's balance, owners who manage them, a cap
per member, the team's own limits, and the team in usage reports."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.e2e.helpers import assert_v1_error, make_user
from tests.e2e.test_billing import deliver, paid
from tests.e2e.test_providers import credits
from tests.e2e.test_subscriptions import subscription_event

JOB = {"operation": "offline.generate", "params": {"prompt": "team work", "width": 64, "height": 64}}


@pytest.fixture(autouse=True)
def fresh_fakes(fake_ideogram):
    fake_ideogram.reset()


async def new_org(client, owner: dict, name: str = "Studio Nine") -> dict:
    response = await client.post("/v1/orgs", json={"name": name}, headers=owner["headers"])
    assert response.status_code == 201, response.text
    return response.json()


async def grant(client, admin: dict, org: dict, amount: float) -> None:
    body = {"amount": amount, "reason": "team budget"}
    response = await client.post(f"/v1/admin/orgs/{org['id']}/credits", json=body, headers=admin["headers"])
    assert response.status_code == 200, response.text


async def add(client, owner: dict, org: dict, member: dict, **extra) -> dict:
    body = {"email": member["email"], **extra}
    response = await client.post(f"/v1/orgs/{org['id']}/members", json=body, headers=owner["headers"])
    assert response.status_code == 201, response.text
    return response.json()


async def org_credits(client, member: dict, org: dict) -> float:
    return (await client.get(f"/v1/orgs/{org['id']}", headers=member["headers"])).json()["credits"]


async def test_an_organisation_is_made_with_its_creator_as_owner_and_seen_only_by_members(client):
    owner, stranger = await make_user(client), await make_user(client)
    org = await new_org(client, owner, "  Studio Nine  ")
    assert (org["name"], org["role"], org["plan"], org["credits"]) == ("Studio Nine", "owner", "free", 0)
    mine = (await client.get("/v1/orgs", headers=owner["headers"])).json()["items"]
    assert [o["id"] for o in mine] == [org["id"]]
    detail = (await client.get(f"/v1/orgs/{org['id']}", headers=owner["headers"])).json()
    assert [(m["email"], m["role"], m["creditsPerMonth"]) for m in detail["members"]] == [
        (owner["email"], "owner", None)
    ]
    assert (await client.get("/v1/orgs", headers=stranger["headers"])).json()["items"] == []
    for path in (f"/v1/orgs/{org['id']}", f"/v1/orgs/{uuid.uuid4()}"):
        assert_v1_error(await client.get(path, headers=stranger["headers"]), 404, "not_found")
    for body in ({}, {"name": ""}, {"name": " "}, {"name": "x" * 101}, {"name": 5}, {"name": "a", "extra": 1}):
        assert_v1_error(await client.post("/v1/orgs", json=body, headers=owner["headers"]), 422, "validation_error")
    assert_v1_error(await client.post("/v1/orgs", json={"name": "a"}), 401, "not_authenticated")


async def test_owners_manage_members_and_an_organisation_keeps_an_owner(client):
    owner, member, other = await make_user(client), await make_user(client), await make_user(client)
    org = await new_org(client, owner)
    added = await add(client, owner, org, member, creditsPerMonth=5)
    assert (added["role"], added["creditsPerMonth"], added["email"]) == ("member", 5.0, member["email"])
    path = f"/v1/orgs/{org['id']}/members"
    again = await client.post(path, json={"email": member["email"]}, headers=owner["headers"])
    assert_v1_error(again, 409, "conflict")
    nobody = await client.post(path, json={"email": "nobody@example.com"}, headers=owner["headers"])
    assert assert_v1_error(nobody, 404, "not_found")["details"][0]["field"] == "email"
    assert_v1_error(
        await client.post(path, json={"email": other["email"]}, headers=member["headers"]), 403, "forbidden"
    )
    assert_v1_error(await client.post(path, json={"email": other["email"]}, headers=other["headers"]), 404, "not_found")
    for body in ({"email": other["email"], "role": "admin"}, {"email": other["email"], "creditsPerMonth": -1}, {}):
        assert_v1_error(await client.post(path, json=body, headers=owner["headers"]), 422, "validation_error")

    changed = await client.patch(f"{path}/{member['id']}", json={"creditsPerMonth": None}, headers=owner["headers"])
    assert changed.json()["creditsPerMonth"] is None and changed.json()["role"] == "member"
    last = await client.patch(f"{path}/{owner['id']}", json={"role": "member"}, headers=owner["headers"])
    assert_v1_error(last, 409, "conflict")
    assert_v1_error(await client.delete(f"{path}/{owner['id']}", headers=owner["headers"]), 409, "conflict")
    promoted = await client.patch(f"{path}/{member['id']}", json={"role": "owner"}, headers=owner["headers"])
    assert promoted.json()["role"] == "owner"
    assert (await client.delete(f"{path}/{owner['id']}", headers=owner["headers"])).status_code == 204  # leaves
    assert_v1_error(await client.get(f"/v1/orgs/{org['id']}", headers=owner["headers"]), 404, "not_found")
    gone = await client.delete(f"{path}/{uuid.uuid4()}", headers=member["headers"])
    assert_v1_error(gone, 404, "not_found")


async def test_a_members_job_spends_the_organisations_balance_not_their_own(client, admin):
    owner, member, stranger = await make_user(client), await make_user(client), await make_user(client)
    org = await new_org(client, owner)
    await add(client, owner, org, member)
    await grant(client, admin, org, 10)
    quote = await client.post("/v1/jobs/quote", json={**JOB, "orgId": org["id"]}, headers=member["headers"])
    assert (quote.json()["credits"], quote.json()["balance"]) == (1.0, 10.0)
    accepted = await client.post("/v1/jobs", json={**JOB, "orgId": org["id"]}, headers=member["headers"])
    assert accepted.status_code == 202, accepted.text
    done = await client.get(f"/v1/jobs/{accepted.json()['jobId']}", params={"wait": 30}, headers=member["headers"])
    assert done.json()["status"] == "succeeded"
    assert await org_credits(client, owner, org) == 9
    assert await credits(client, member["headers"]) == 20
    # The job is the member's: another member of the team does not see it.
    assert_v1_error(
        await client.get(f"/v1/jobs/{accepted.json()['jobId']}", headers=owner["headers"]), 404, "not_found"
    )
    refused = await client.post("/v1/jobs", json={**JOB, "orgId": org["id"]}, headers=stranger["headers"])
    assert assert_v1_error(refused, 404, "not_found")["details"][0]["field"] == "orgId"
    assert await credits(client, stranger["headers"]) == 20 and await org_credits(client, owner, org) == 9
    batch = {"orgId": org["id"], "jobs": [JOB, JOB, {**JOB, "orgId": org["id"]}]}
    results = (await client.post("/v1/jobs/batch", json=batch, headers=member["headers"])).json()["results"]
    assert [r["status"] for r in results] == [202, 202, 422]
    assert await org_credits(client, owner, org) == 7


async def test_members_at_once_never_spend_more_than_the_organisation_has(client, admin):
    owner = await make_user(client)
    members = [await make_user(client) for _ in range(3)]
    org = await new_org(client, owner)
    for member in members:
        await add(client, owner, org, member)
    await grant(client, admin, org, 5)
    answers = await asyncio.gather(
        *(
            client.post("/v1/jobs", json={**JOB, "orgId": org["id"]}, headers=members[i % 3]["headers"])
            for i in range(20)
        )
    )
    assert sorted(a.status_code for a in answers) == [202] * 5 + [402] * 15
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 402} == {"insufficient_credits"}
    assert all([await credits(client, m["headers"]) == 20 for m in members])


async def test_a_member_cap_stops_that_member_alone_for_the_month(client, admin):
    owner, capped = await make_user(client), await make_user(client)
    org = await new_org(client, owner)
    await add(client, owner, org, capped, creditsPerMonth=2)
    await grant(client, admin, org, 50)
    for _ in range(2):
        assert (
            await client.post("/v1/jobs", json={**JOB, "orgId": org["id"]}, headers=capped["headers"])
        ).status_code == 202
    refused = await client.post("/v1/jobs", json={**JOB, "orgId": org["id"]}, headers=capped["headers"])
    error = assert_v1_error(refused, 402, "credit_limit_reached")
    assert error["details"] == {"limit": "member_credits_per_month", "max": 2.0, "used": 2.0, "required": 1.0}
    assert (await client.post("/v1/jobs", json=JOB, headers=capped["headers"])).status_code == 202  # their own
    assert (
        await client.post("/v1/jobs", json={**JOB, "orgId": org["id"]}, headers=owner["headers"])
    ).status_code == 202
    assert await org_credits(client, owner, org) == 47


async def test_an_organisations_limits_apply_to_every_members_jobs(client, admin, fake_ideogram):
    owner, member = await make_user(client), await make_user(client)
    org = await new_org(client, owner)
    await add(client, owner, org, member)
    await grant(client, admin, org, 50)
    body = {"limits": {"concurrentJobs": 1, "requestsPerMinute": 3}, "reason": "trial team"}
    limited = await client.put(f"/v1/admin/orgs/{org['id']}/limits", json=body, headers=admin["headers"])
    assert limited.status_code == 200, limited.text
    assert (limited.json()["limits"]["concurrentJobs"], limited.json()["limitOverrides"]) == (
        1,
        {"concurrentJobs": 1, "requestsPerMinute": 3},
    )
    slow = {"operation": "ideogram.generate", "params": {"prompt": "slow"}, "orgId": org["id"]}
    fake_ideogram.hang_next(endpoint="generate")
    try:
        first = await client.post("/v1/jobs", json=slow, headers=owner["headers"])
        assert first.status_code == 202, first.text
        busy = await client.post("/v1/jobs", json={**JOB, "orgId": org["id"]}, headers=member["headers"])
        assert_v1_error(busy, 429, "too_many_concurrent_jobs")
        assert (await client.post("/v1/jobs", json=JOB, headers=member["headers"])).status_code == 202  # their own
    finally:
        fake_ideogram.release_hung()
    ended = await client.get(f"/v1/jobs/{first.json()['jobId']}", params={"wait": 30}, headers=owner["headers"])
    assert ended.json()["status"] == "succeeded"
    # Three of the team's jobs a minute, whoever submits them: the owner's, the refused one, and one more.
    third = await client.post("/v1/jobs", json={**JOB, "orgId": org["id"]}, headers=member["headers"])
    assert third.status_code == 202, third.text
    late = await client.post("/v1/jobs", json={**JOB, "orgId": org["id"]}, headers=owner["headers"])
    assert_v1_error(late, 429, "rate_limited")
    nobody = await client.put(f"/v1/admin/orgs/{uuid.uuid4()}/limits", json=body, headers=admin["headers"])
    assert_v1_error(nobody, 404, "not_found")
    assert_v1_error(
        await client.put(f"/v1/admin/orgs/{org['id']}/limits", json=body, headers=owner["headers"]), 403, "forbidden"
    )


async def test_admins_list_organisations_and_report_their_usage(client, admin):
    owner = await make_user(client)
    org = await new_org(client, owner, "Reported")
    await grant(client, admin, org, 3)
    for body in ({**JOB, "orgId": org["id"]}, JOB):
        accepted = await client.post("/v1/jobs", json=body, headers=owner["headers"])
        await client.get(f"/v1/jobs/{accepted.json()['jobId']}", params={"wait": 30}, headers=owner["headers"])
    listed = (await client.get("/v1/admin/orgs", headers=admin["headers"])).json()["items"]
    [row] = [o for o in listed if o["id"] == org["id"]]
    assert (row["name"], row["credits"], row["members"]) == ("Reported", 2.0, 1)
    report = await client.get("/v1/admin/usage", params={"orgId": org["id"]}, headers=admin["headers"])
    [line] = report.json()["items"]
    assert (line["userId"], line["orgId"], line["operation"], line["credits"]) == (
        owner["id"],
        org["id"],
        "offline.generate",
        1.0,
    )
    mine = await client.get("/v1/admin/usage", params={"userId": owner["id"]}, headers=admin["headers"])
    assert sorted((line["orgId"] or "") for line in mine.json()["items"]) == ["", org["id"]]
    assert_v1_error(await client.get("/v1/admin/orgs", headers=owner["headers"]), 403, "forbidden")


async def test_an_owner_buys_credits_for_the_organisation_and_a_member_may_not(client, fake_stripe):
    fake_stripe.reset()
    owner, member = await make_user(client), await make_user(client)
    org = await new_org(client, owner)
    await add(client, owner, org, member)
    bought = await client.post(
        "/v1/billing/checkout", json={"pack": "starter", "orgId": org["id"]}, headers=owner["headers"]
    )
    assert bought.status_code == 200, bought.text
    assert fake_stripe.made[-1].params["client_reference_id"] == org["id"]
    assert (await deliver(client, paid(fake_stripe, bought.json()["sessionId"]))).json()["credited"] is True
    assert await org_credits(client, owner, org) == 100
    assert await credits(client, owner["headers"]) == 20
    refused = await client.post(
        "/v1/billing/checkout", json={"pack": "starter", "orgId": org["id"]}, headers=member["headers"]
    )
    assert_v1_error(refused, 403, "forbidden")


async def test_an_admin_moves_an_organisation_to_a_plan_and_its_allowance_is_its_balances(client, admin):
    owner = await make_user(client)
    org = await new_org(client, owner)
    path = f"/v1/admin/orgs/{org['id']}/plan"
    moved = await client.put(path, json={"plan": "pro", "reason": "enterprise deal"}, headers=admin["headers"])
    assert moved.status_code == 200, moved.text
    assert (moved.json()["plan"], moved.json()["credits"], moved.json()["limits"]["concurrentJobs"]) == (
        "pro",
        1000.0,
        None,  # the test app's plans have no limits
    )
    assert await org_credits(client, owner, org) == 1000 and await credits(client, owner["headers"]) == 20
    assert (await client.get("/v1/orgs", headers=owner["headers"])).json()["items"][0]["plan"] == "pro"
    again = await client.put(path, json={"plan": "pro", "reason": "again"}, headers=admin["headers"])
    assert again.json()["credits"] == 1000
    unknown = await client.put(path, json={"plan": "gold", "reason": "x"}, headers=admin["headers"])
    assert_v1_error(unknown, 422, "invalid_input")
    nobody = await client.put(
        f"/v1/admin/orgs/{uuid.uuid4()}/plan", json={"plan": "pro", "reason": "x"}, headers=admin["headers"]
    )
    assert_v1_error(nobody, 404, "not_found")


async def test_an_owner_subscribes_the_organisation_and_its_events_set_the_teams_plan(client, fake_stripe):
    fake_stripe.reset()
    owner, member = await make_user(client), await make_user(client)
    org = await new_org(client, owner)
    await add(client, owner, org, member)
    body = {"plan": "plus", "orgId": org["id"]}
    assert_v1_error(await client.post("/v1/billing/subscribe", json=body, headers=member["headers"]), 403, "forbidden")
    started = await client.post("/v1/billing/subscribe", json=body, headers=owner["headers"])
    assert started.status_code == 200, started.text
    assert fake_stripe.made[-1].params["subscription_data[metadata][user_id]"] == org["id"]
    event = subscription_event("customer.subscription.created", org["id"], "plus")
    assert (await deliver(client, event)).json()["plan"] == "plus"
    assert await org_credits(client, owner, org) == 200
    assert (await client.get("/v1/billing/plan", headers=owner["headers"])).json()["plan"] == "free"  # theirs
