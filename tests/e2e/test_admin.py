"""The admin API: accounts and balances, credits granted and revoked, bans, and the audit log."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid

import pytest
from sqlalchemy import text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.helpers import assert_api_error, assert_v1_error, make_user, signup
from tests.e2e.test_providers import credits

PASSWORD = "correct horse"


def routes(user_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/v1/admin/users", None),
        ("POST", f"/v1/admin/users/{user_id}/credits", {"amount": 5, "reason": "goodwill"}),
        ("POST", f"/v1/admin/users/{user_id}/ban", {"reason": "spam"}),
        ("POST", f"/v1/admin/users/{user_id}/unban", {"reason": "appeal"}),
        ("POST", f"/v1/admin/users/{user_id}/throttle", {"reason": "abuse"}),
        ("POST", f"/v1/admin/users/{user_id}/unthrottle", {"reason": "appeal"}),
        ("PUT", f"/v1/admin/users/{user_id}/plan", {"plan": "studio", "reason": "free upgrade"}),
        ("PUT", f"/v1/admin/users/{user_id}/limits", {"limits": {"requestsPerMinute": 1}, "reason": "x"}),
        ("GET", "/v1/admin/audit", None),
        ("GET", "/v1/admin/orgs", None),
        ("POST", f"/v1/admin/orgs/{user_id}/credits", {"amount": 5, "reason": "goodwill"}),
        ("PUT", f"/v1/admin/orgs/{user_id}/limits", {"limits": {}, "reason": "x"}),
    ]


async def test_everyone_but_an_admin_is_refused_and_nothing_changes(client, user):
    other = await make_user(client)
    for method, path, body in routes(other["id"]):
        assert_v1_error(await client.request(method, path, json=body, headers=user["headers"]), 403, "forbidden")
        assert_v1_error(await client.request(method, path, json=body), 401, "not_authenticated")
    assert await credits(client, other["headers"]) == 20
    assert (await client.get("/v1/auth/me", headers=other["headers"])).status_code == 200


async def test_an_admin_lists_accounts_newest_first_with_their_balances(client, admin):
    tag = uuid.uuid4().hex[:8]
    made = [await signup(client, f"listed-{tag}-{i}@example.com") for i in range(3)]
    first = await client.get("/v1/admin/users", params={"email": f"LISTED-{tag}", "limit": 2}, headers=admin["headers"])
    assert first.status_code == 200, first.text
    page = first.json()
    assert [u["email"] for u in page["items"]] == [f"listed-{tag}-2@example.com", f"listed-{tag}-1@example.com"]
    assert {(u["credits"], u["status"], u["role"]) for u in page["items"]} == {(20.0, "active", "user")}
    params = {"email": f"listed-{tag}", "limit": 2, "cursor": page["nextCursor"]}
    rest = (await client.get("/v1/admin/users", params=params, headers=admin["headers"])).json()
    assert [u["id"] for u in rest["items"]] == [made[0]["user"]["id"]] and rest["nextCursor"] is None
    for params in ({"limit": 0}, {"limit": 101}, {"cursor": "nope"}, {"email": "x" * 300}):
        response = await client.get("/v1/admin/users", params=params, headers=admin["headers"])
        assert_v1_error(response, 422, "validation_error")


async def test_granted_and_revoked_credits_reach_the_balance_once_and_the_audit_log(client, admin, user):
    url = f"/v1/admin/users/{user['id']}/credits"
    granted = await client.post(url, json={"amount": 12.5, "reason": "outage refund"}, headers=admin["headers"])
    assert granted.status_code == 200, granted.text
    assert granted.json() == {"userId": user["id"], "amount": 12.5, "balance": 32.5, "repeat": False}
    revoked = await client.post(url, json={"amount": -2.5, "reason": "double refund"}, headers=admin["headers"])
    assert revoked.json()["balance"] == 30.0
    assert await credits(client, user["headers"]) == 30

    log = (await client.get("/v1/admin/audit", params={"userId": user["id"]}, headers=admin["headers"])).json()
    assert [(a["action"], a["reason"], a["details"]["amount"]) for a in log["items"]] == [
        ("credits", "double refund", "-2.5"),
        ("credits", "outage refund", "12.5"),
    ]
    assert {(a["adminId"], a["adminEmail"], a["userId"]) for a in log["items"]} == {
        (admin["id"], admin["email"], user["id"])
    }


async def test_a_revoke_of_more_than_the_balance_is_a_409_and_changes_nothing(client, admin, user):
    url = f"/v1/admin/users/{user['id']}/credits"
    response = await client.post(url, json={"amount": -20.001, "reason": "too much"}, headers=admin["headers"])
    error = assert_v1_error(response, 409, "balance_too_low")
    assert error["details"] == {"balance": 20.0, "amount": -20.001}
    everything = await client.post(url, json={"amount": -20, "reason": "all of it"}, headers=admin["headers"])
    assert everything.json()["balance"] == 0.0
    log = (await client.get("/v1/admin/audit", params={"userId": user["id"]}, headers=admin["headers"])).json()
    assert [a["reason"] for a in log["items"]] == ["all of it"], "only what took effect is in the log"


async def test_an_idempotency_key_applies_a_grant_once_even_sent_at_once(client, admin, user):
    url = f"/v1/admin/users/{user['id']}/credits"
    headers = {**admin["headers"], "Idempotency-Key": "ticket-4711"}
    body = {"amount": 7, "reason": "ticket 4711"}
    answers = await asyncio.gather(*(client.post(url, json=body, headers=headers) for _ in range(8)))
    assert sorted(a.json()["repeat"] for a in answers) == [False] + [True] * 7
    assert await credits(client, user["headers"]) == 27
    other = await client.post(url, json={"amount": 8, "reason": "ticket 4711"}, headers=headers)
    assert_v1_error(other, 409, "conflict")
    assert await credits(client, user["headers"]) == 27


@pytest.mark.parametrize(
    "body",
    [
        {"reason": "no amount"},
        {"amount": 5},
        {"amount": 0, "reason": "nothing"},
        {"amount": "five", "reason": "x"},
        {"amount": 1.0005, "reason": "finer than the ledger"},
        {"amount": 10**10, "reason": "too many"},
        {"amount": 5, "reason": "   "},
        {"amount": 5, "reason": "x" * 501},
        {"amount": 5, "reason": "x", "note": "extra"},
        [5, "x"],
    ],
    ids=[
        "no-amount",
        "no-reason",
        "zero",
        "string",
        "four-decimals",
        "huge",
        "blank-reason",
        "long-reason",
        "extra",
        "list",
    ],
)
async def test_a_bad_credits_body_is_a_422_and_changes_nothing(client, admin, user, body):
    response = await client.post(f"/v1/admin/users/{user['id']}/credits", json=body, headers=admin["headers"])
    assert_v1_error(response, 422, "validation_error")
    assert await credits(client, user["headers"]) == 20


async def test_credits_for_an_account_that_does_not_exist_are_a_404(client, admin):
    body = {"amount": 5, "reason": "x"}
    missing = await client.post(f"/v1/admin/users/{uuid.uuid4()}/credits", json=body, headers=admin["headers"])
    assert_v1_error(missing, 404, "not_found")
    not_an_id = await client.post("/v1/admin/users/nope/credits", json=body, headers=admin["headers"])
    assert_v1_error(not_an_id, 422, "validation_error")
    plain = {**admin["headers"], "Content-Type": "text/plain"}
    as_text = await client.post(f"/v1/admin/users/{uuid.uuid4()}/credits", content=b"amount=5", headers=plain)
    assert_v1_error(as_text, 415, "unsupported_media_type")
    huge = {"amount": 5, "reason": "x" * 1_100_000}
    assert_v1_error(
        await client.post(f"/v1/admin/users/{uuid.uuid4()}/credits", json=huge, headers=admin["headers"]),
        413,
        "payload_too_large",
    )


async def test_a_banned_account_is_refused_everywhere_until_it_is_unbanned(client, app_url, admin, user):
    banned = await client.post(
        f"/v1/admin/users/{user['id']}/ban", json={"reason": "chargebacks"}, headers=admin["headers"]
    )
    assert banned.status_code == 200, banned.text
    assert banned.json()["status"] == "banned"
    job = {"operation": "offline.generate", "params": {"prompt": "x", "width": 64, "height": 64}}
    assert_v1_error(await client.get("/v1/auth/me", headers=user["headers"]), 403, "account_banned")
    assert_v1_error(await client.post("/v1/jobs", json=job, headers=user["headers"]), 403, "account_banned")
    assert_api_error(await client.get("/api/auth/me", headers=user["headers"]), 403)
    assert_api_error(await client.get("/api/payments/wallet/balance", headers=user["headers"]), 403)
    login = await client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert_v1_error(login, 403, "account_banned")
    wrong = await client.post("/v1/auth/login", json={"email": user["email"], "password": "not the password"})
    assert_v1_error(wrong, 401, "not_authenticated")  # only the right password learns of the ban
    token = user["headers"]["Authorization"].split()[1]
    async with connect(app_url.replace("http://", "ws://") + f"/v1/ws?token={token}") as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await socket.send(json.dumps({"action": "subscribe", "channel": "user:me"}))
            await socket.recv()
    assert closed.value.rcvd.code == 1008

    again = await client.post(f"/v1/admin/users/{user['id']}/ban", json={"reason": "twice"}, headers=admin["headers"])
    assert again.json()["status"] == "banned"
    unbanned = await client.post(
        f"/v1/admin/users/{user['id']}/unban", json={"reason": "paid"}, headers=admin["headers"]
    )
    assert unbanned.json()["status"] == "active"
    assert (await client.get("/v1/auth/me", headers=user["headers"])).status_code == 200
    log = (await client.get("/v1/admin/audit", params={"userId": user["id"]}, headers=admin["headers"])).json()
    assert [(a["action"], a["reason"]) for a in log["items"]] == [("unban", "paid"), ("ban", "chargebacks")]


async def test_an_admin_cannot_ban_themselves_nor_an_account_that_does_not_exist(client, admin):
    own = await client.post(f"/v1/admin/users/{admin['id']}/ban", json={"reason": "oops"}, headers=admin["headers"])
    assert_v1_error(own, 409, "conflict")
    missing = await client.post(f"/v1/admin/users/{uuid.uuid4()}/ban", json={"reason": "x"}, headers=admin["headers"])
    assert_v1_error(missing, 404, "not_found")
    for body in ({}, {"reason": ""}, {"reason": "x", "until": "never"}):
        bad = await client.post(f"/v1/admin/users/{admin['id']}/unban", json=body, headers=admin["headers"])
        assert_v1_error(bad, 422, "validation_error")


async def test_the_audit_log_cannot_be_edited_or_deleted(client, sessions, admin, user):
    await client.post(f"/v1/admin/users/{user['id']}/ban", json={"reason": "kept"}, headers=admin["headers"])
    for statement in ("UPDATE admin_actions SET reason = 'forged'", "DELETE FROM admin_actions"):
        async with sessions() as session:
            with pytest.raises(Exception, match="append-only"):
                await session.execute(text(statement))
    log = (await client.get("/v1/admin/audit", params={"userId": user["id"]}, headers=admin["headers"])).json()
    assert [a["reason"] for a in log["items"]] == ["kept"]


# -- usage reports --------------------------------------------------------------------------


async def run_job(client, headers, body: dict) -> dict:
    accepted = await client.post("/v1/jobs", json=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    job = await client.get(f"/v1/jobs/{accepted.json()['jobId']}", params={"wait": 30}, headers=headers)
    return job.json()


async def test_the_usage_report_sums_each_accounts_provider_calls_as_json_or_csv(client, admin, user, fake_ideogram):
    fake_ideogram.reset()
    small = {"prompt": "used", "width": 64, "height": 64}
    assert (await run_job(client, user["headers"], {"operation": "offline.generate", "params": small}))["status"] == (
        "succeeded"
    )
    chain = {
        "steps": [
            {"operation": "offline.generate", "params": small},
            {"operation": "offline.describe", "input": "previous"},
        ]
    }
    assert (await run_job(client, user["headers"], chain))["status"] == "succeeded"
    fake_ideogram.fail_next(400, endpoint="generate")
    refused = await run_job(client, user["headers"], {"operation": "ideogram.generate", "params": {"prompt": "no"}})
    assert refused["status"] == "failed"
    fake_ideogram.hang_next(endpoint="generate")  # canceled mid-call: no usage is recorded for it
    try:
        canceled = await client.post(
            "/v1/jobs", json={"operation": "ideogram.generate", "params": {"prompt": "never"}}, headers=user["headers"]
        )
        await asyncio.to_thread(fake_ideogram.wait_until_hung)
        await client.post(f"/v1/jobs/{canceled.json()['jobId']}/cancel", headers=user["headers"])
        ended = await client.get(f"/v1/jobs/{canceled.json()['jobId']}", params={"wait": 30}, headers=user["headers"])
        assert ended.json()["status"] == "canceled"
    finally:
        fake_ideogram.release_hung()

    report = await client.get("/v1/admin/usage", params={"userId": user["id"]}, headers=admin["headers"])
    assert report.status_code == 200, report.text
    lines = {(line["provider"], line["operation"]): line for line in report.json()["items"]}
    assert set(lines) == {
        ("offline", "offline.generate"),
        ("offline", "offline.describe"),
        ("ideogram", "ideogram.generate"),
    }
    counted = {key: (v["calls"], v["failed"], v["images"], v["credits"]) for key, v in lines.items()}
    assert counted == {
        ("offline", "offline.generate"): (2, 0, 2, 2.0),
        ("offline", "offline.describe"): (1, 0, 0, 0.5),
        ("ideogram", "ideogram.generate"): (1, 1, 0, 0.0),
    }
    assert all(line["upstreamMs"] > 0 and line["email"] == user["email"] for line in lines.values())
    assert report.json()["totals"]["credits"] == 2.5 == 20 - await credits(client, user["headers"])

    as_csv = await client.get(
        "/v1/admin/usage", params={"userId": user["id"], "format": "csv"}, headers=admin["headers"]
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert {(r["operation"], r["calls"], r["credits"]) for r in rows} == {
        ("offline.generate", "2", "2.0"),
        ("offline.describe", "1", "0.5"),
        ("ideogram.generate", "1", "0.0"),
    }

    only = await client.get(
        "/v1/admin/usage", params={"userId": user["id"], "provider": "ideogram"}, headers=admin["headers"]
    )
    assert [line["operation"] for line in only.json()["items"]] == ["ideogram.generate"]
    later = {"userId": user["id"], "from": "2999-01-01T00:00:00Z"}
    assert (await client.get("/v1/admin/usage", params=later, headers=admin["headers"])).json()["items"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"provider": "midjourney"},
        {"operation": "offline.paint"},
        {"from": "2026-01-01T00:00:00"},
        {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "yesterday"},
        {"format": "xml"},
        {"userId": "someone"},
    ],
    ids=["provider", "operation", "no-zone", "backwards", "not-a-date", "format", "user-id"],
)
async def test_a_bad_usage_filter_is_a_422(client, admin, params):
    response = await client.get("/v1/admin/usage", params=params, headers=admin["headers"])
    assert response.status_code == 422, response.text


async def test_the_usage_report_is_for_admins_only(client, user):
    assert_v1_error(await client.get("/v1/admin/usage", headers=user["headers"]), 403, "forbidden")
    assert_v1_error(await client.get("/v1/admin/usage", params={"format": "csv"}), 401, "not_authenticated")
