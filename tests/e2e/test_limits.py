"""Limits checked before a job is held or queued, through the public API: jobs a minute (429 and
Retry-After), open jobs at once (429), credits a day (402); plans, overrides and throttles set by an
admin; the caller's own plan and limits."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import yaml
from sqlalchemy import select, update

from storage.models import AdminAction, User
from tests.e2e.helpers import api_without_actors, assert_v1_error, bearer, make_user, signup
from tests.e2e.test_providers import credits
from tests.integration.test_shared_limits import eventually

GENERATE = {"operation": "offline.generate", "params": {"prompt": "a lighthouse"}}
NO_LIMITS = {"requestsPerMinute": None, "concurrentJobs": None, "creditsPerDay": None, "creditsPerMonth": None}


@pytest.fixture(autouse=True)
def fresh_fakes(fake_ideogram):
    fake_ideogram.reset()


async def set_limits(client, admin: dict, user: dict, limits: dict) -> dict:
    body = {"limits": limits, "reason": "support ticket 42"}
    response = await client.put(f"/v1/admin/users/{user['id']}/limits", json=body, headers=admin["headers"])
    assert response.status_code == 200, response.text
    return response.json()


async def plan_of(client, user: dict) -> dict:
    response = await client.get("/v1/billing/plan", headers=user["headers"])
    assert response.status_code == 200, response.text
    return response.json()


async def test_jobs_past_the_limit_a_minute_are_429_with_retry_after_and_hold_nothing(client, admin, user):
    await set_limits(client, admin, user, {"requestsPerMinute": 3})
    for _ in range(3):
        assert (await client.post("/v1/jobs", json=GENERATE, headers=user["headers"])).status_code == 202
    refused = await client.post("/v1/jobs", json=GENERATE, headers=user["headers"])
    error = assert_v1_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 20  # one job each 20 s at 3 a minute
    assert error["details"]["retryAfter"] == int(refused.headers["Retry-After"])
    assert await credits(client, user["headers"]) == 17
    # The limit is the account's: another account is not affected.
    other = await make_user(client)
    assert (await client.post("/v1/jobs", json=GENERATE, headers=other["headers"])).status_code == 202


async def test_a_batch_past_the_limit_a_minute_queues_the_first_jobs_and_answers_429_for_the_rest(client, admin, user):
    await set_limits(client, admin, user, {"requestsPerMinute": 3})
    response = await client.post("/v1/jobs/batch", json={"jobs": [GENERATE] * 5}, headers=user["headers"])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 202, 202, 429, 429]
    assert {r["error"]["code"] for r in results[3:]} == {"rate_limited"}
    assert all(1 <= r["error"]["details"]["retryAfter"] <= 20 for r in results[3:])
    assert await credits(client, user["headers"]) == 17


async def test_jobs_past_the_open_jobs_limit_are_429_until_one_ends(client, admin, user, fake_ideogram):
    await set_limits(client, admin, user, {"concurrentJobs": 2})
    slow = {"operation": "ideogram.generate", "params": {"prompt": "slow"}}
    fake_ideogram.hang_next(times=2, endpoint="generate")
    try:
        submitted = [await client.post("/v1/jobs", json=slow, headers=user["headers"]) for _ in range(2)]
        running = [response.json()["jobId"] for response in submitted]
        refused = await client.post("/v1/jobs", json=GENERATE, headers=user["headers"])
        error = assert_v1_error(refused, 429, "too_many_concurrent_jobs")
        assert error["details"]["open"] == 2 and refused.headers["Retry-After"] == "2"
        assert await credits(client, user["headers"]) == 18
    finally:
        fake_ideogram.release_hung()
    for job_id in running:
        ended = await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=user["headers"])
        assert ended.json()["status"] == "succeeded"
    assert (await client.post("/v1/jobs", json=GENERATE, headers=user["headers"])).status_code == 202


async def test_submits_at_once_never_pass_the_open_jobs_limit(client, admin, user, fake_ideogram):
    await set_limits(client, admin, user, {"concurrentJobs": 3})
    slow = {"operation": "ideogram.generate", "params": {"prompt": "slow"}}
    fake_ideogram.hang_next(times=10, endpoint="generate")
    try:
        submits = (client.post("/v1/jobs", json=slow, headers=user["headers"]) for _ in range(10))
        answers = await asyncio.gather(*submits)
        assert sorted(a.status_code for a in answers) == [202] * 3 + [429] * 7
    finally:
        fake_ideogram.release_hung()


async def test_a_job_past_the_credits_a_day_is_402_and_credits_given_back_count_again(
    client, admin, user, fake_ideogram
):
    await set_limits(client, admin, user, {"creditsPerDay": 2.5})
    two = {"operation": "ideogram.generate", "params": {"prompt": "two", "num_images": 2}}
    fake_ideogram.fail_next(422, endpoint="generate")
    failed = (await client.post("/v1/jobs", json=two, headers=user["headers"])).json()["jobId"]
    ended = await client.get(f"/v1/jobs/{failed}", params={"wait": 30}, headers=user["headers"])
    assert ended.json()["status"] == "failed"  # its 2 credits given back: they count no more
    assert (await plan_of(client, user))["creditsToday"] == 0
    assert (await client.post("/v1/jobs", json=two, headers=user["headers"])).status_code == 202
    refused = await client.post("/v1/jobs", json=two, headers=user["headers"])
    error = assert_v1_error(refused, 402, "credit_limit_reached")
    assert error["details"] == {"limit": "credits_per_day", "max": 2.5, "used": 2.0, "required": 2.0}
    assert_v1_error(await client.post("/v1/jobs", json=GENERATE, headers=user["headers"]), 402, "credit_limit_reached")
    assert await credits(client, user["headers"]) == 18
    plan = await plan_of(client, user)
    assert (plan["creditsToday"], plan["creditsThisMonth"], plan["limits"]["creditsPerDay"]) == (2.0, 2.0, 2.5)


async def test_a_throttled_account_gets_the_throttle_caps_until_unthrottled(client, admin, user, sessions):
    await set_limits(client, admin, user, {"concurrentJobs": 50})
    path = f"/v1/admin/users/{user['id']}"
    throttled = await client.post(f"{path}/throttle", json={"reason": "abuse"}, headers=admin["headers"])
    assert throttled.status_code == 200, throttled.text
    assert throttled.json()["status"] == "throttled"
    caps = {"requestsPerMinute": 6, "concurrentJobs": 1, "creditsPerDay": 20.0, "creditsPerMonth": None}
    assert throttled.json()["limits"] == caps
    assert (await plan_of(client, user))["limits"] == caps
    assert (await plan_of(client, user))["status"] == "throttled"
    answers = [await client.post("/v1/jobs", json=GENERATE, headers=user["headers"]) for _ in range(8)]
    assert sum(a.status_code == 202 for a in answers) <= 6  # the rest 429: a minute's jobs, or one open at once
    assert {a.status_code for a in answers} <= {202, 429}
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 429} <= {
        "rate_limited",
        "too_many_concurrent_jobs",
    }
    unthrottled = await client.post(f"{path}/unthrottle", json={"reason": "appeal"}, headers=admin["headers"])
    assert unthrottled.json()["status"] == "active" and unthrottled.json()["limits"]["concurrentJobs"] == 50
    # A ban beats a throttle, and a throttle does not lift a ban.
    banned = await client.post(f"{path}/ban", json={"reason": "x"}, headers=admin["headers"])
    assert banned.json()["status"] == "banned"
    again = await client.post(f"{path}/throttle", json={"reason": "x"}, headers=admin["headers"])
    assert again.json()["status"] == "banned"
    async with sessions() as session:
        actions = (
            await session.execute(
                select(AdminAction.action).where(AdminAction.user_id == uuid.UUID(user["id"])).order_by(AdminAction.id)
            )
        ).scalars()
        assert list(actions) == ["limits", "throttle", "unthrottle", "ban"]
    assert (await client.post(f"{path}/throttle", json={"reason": "x"}, headers=user["headers"])).status_code == 403
    own = await client.post(f"/v1/admin/users/{admin['id']}/throttle", json={"reason": "x"}, headers=admin["headers"])
    assert_v1_error(own, 409, "conflict")


async def test_a_plan_change_applies_its_limits_and_grants_its_allowance_once(client, admin, user):
    path = f"/v1/admin/users/{user['id']}/plan"
    before = await plan_of(client, user)
    assert (before["plan"], before["allowance"], before["balance"]) == ("free", 0.0, 20.0)
    moved = await client.put(path, json={"plan": "plus", "reason": "bought plus"}, headers=admin["headers"])
    assert moved.status_code == 200, moved.text
    assert moved.json()["plan"] == "plus"
    assert moved.json()["credits"] == 220  # this month's allowance, granted at once
    again = await client.put(path, json={"plan": "plus", "reason": "again"}, headers=admin["headers"])
    assert again.json()["credits"] == 220
    mine = await plan_of(client, user)
    assert (mine["plan"], mine["allowance"], mine["balance"]) == ("plus", 200.0, 220.0)
    # A new month's allowance comes on the ledger's clock; a test passes its own.
    unknown = await client.put(path, json={"plan": "gold", "reason": "x"}, headers=admin["headers"])
    error = assert_v1_error(unknown, 422, "invalid_input")
    assert "free" in error["details"][0]["message"]


async def test_overrides_replace_the_plans_limits_null_lifts_one_and_an_empty_set_drops_them(client, admin, user):
    # The test app's plans have no limits; an override adds one, null lifts one, {} goes back to the plan's.
    out = await set_limits(client, admin, user, {"requestsPerMinute": 100, "creditsPerMonth": 12.5})
    assert out["limits"] == {**NO_LIMITS, "requestsPerMinute": 100, "creditsPerMonth": 12.5}
    assert out["limitOverrides"] == {"requestsPerMinute": 100, "creditsPerMonth": 12.5}
    out = await set_limits(client, admin, user, {"requestsPerMinute": None})
    assert out["limits"] == NO_LIMITS and out["limitOverrides"] == {"requestsPerMinute": None}
    out = await set_limits(client, admin, user, {})
    assert out["limits"] == NO_LIMITS and out["limitOverrides"] == {}
    listed = await client.get("/v1/admin/users", params={"email": user["email"]}, headers=admin["headers"])
    [row] = listed.json()["items"]
    assert (row["plan"], row["limitOverrides"], row["creditsToday"], row["creditsThisMonth"]) == ("free", {}, 0, 0)


@pytest.mark.parametrize(
    "body",
    [
        {"limits": {"requestsPerMinute": 0}, "reason": "x"},
        {"limits": {"requestsPerMinute": "ten"}, "reason": "x"},
        {"limits": {"concurrentJobs": 1.5}, "reason": "x"},
        {"limits": {"creditsPerDay": -1}, "reason": "x"},
        {"limits": {"creditsPerDay": 0.0001}, "reason": "x"},
        {"limits": {"burst": 5}, "reason": "x"},
        {"limits": {"requestsPerMinute": 5}},
        {"limits": {"requestsPerMinute": 5}, "reason": ""},
        {"limits": [], "reason": "x"},
        {"reason": "x"},
        {"limits": {}, "reason": "x", "extra": 1},
    ],
)
async def test_a_bad_limits_body_is_a_422_and_changes_nothing(client, admin, user, body):
    response = await client.put(f"/v1/admin/users/{user['id']}/limits", json=body, headers=admin["headers"])
    assert_v1_error(response, 422, "validation_error")
    assert (await plan_of(client, user))["limits"] == NO_LIMITS


async def test_plan_and_limits_of_an_unknown_account_are_404(client, admin):
    nobody = uuid.uuid4()
    for method, path, body in [
        ("PUT", f"/v1/admin/users/{nobody}/plan", {"plan": "plus", "reason": "x"}),
        ("PUT", f"/v1/admin/users/{nobody}/limits", {"limits": {}, "reason": "x"}),
        ("POST", f"/v1/admin/users/{nobody}/throttle", {"reason": "x"}),
        ("POST", f"/v1/admin/users/{nobody}/unthrottle", {"reason": "x"}),
    ]:
        assert_v1_error(await client.request(method, path, json=body, headers=admin["headers"]), 404, "not_found")


async def test_the_ledger_grants_a_new_plans_allowance_on_its_own_schedule(client, admin, user, sessions):
    """The ledger's scheduled pass, not only the admin route, grants what is due (here: a plan set
    straight in the database, as a subscription event would)."""
    async with sessions.begin() as session:
        await session.execute(update(User).where(User.id == uuid.UUID(user["id"])).values(plan="pro"))

    async def granted() -> bool:
        return await credits(client, user["headers"]) == 1020

    await eventually(granted)


async def test_a_providers_limit_a_minute_refuses_its_jobs_from_any_account_before_anything_is_held(settings, tmp_path):
    """A provider's jobs a minute across every account (`provider_limits`): once they are spent, a
    submit for it is a 429 with Retry-After, before the ledger is asked (this app has none)."""
    config = yaml.safe_load(settings.billing_config.read_text())
    config["provider_limits"] = {"ideogram": {"requests_per_minute": 2}}
    path = tmp_path / "billing.yaml"
    path.write_text(yaml.safe_dump(config))
    namespace = f"{settings.redis_namespace}:{uuid.uuid4().hex}"  # a minute of its own
    app_settings = settings.model_copy(update={"billing_config": path, "redis_namespace": namespace})
    async with api_without_actors(app_settings) as (app_client, services):
        assert (await services.submit_rates.admit([], [("ideogram",)] * 2, {"ideogram": 2})).jobs == 2
        for _ in range(2):  # two accounts: the provider's minute is everyone's
            headers = bearer((await signup(app_client))["accessToken"])
            slow = {"operation": "ideogram.generate", "params": {"prompt": "one more"}}
            refused = await app_client.post("/v1/jobs", json=slow, headers=headers)
            error = assert_v1_error(refused, 429, "rate_limited")
            assert 1 <= int(refused.headers["Retry-After"]) <= 30 and error["details"]["admitted"] == 0
            # A chain that reaches the provider only at its second step counts against it too.
            chain = {"steps": [GENERATE, {"operation": "ideogram.upscale", "input": "previous"}]}
            assert_v1_error(await app_client.post("/v1/jobs", json=chain, headers=headers), 429, "rate_limited")
            assert (await app_client.get("/v1/auth/me", headers=headers)).json()["credits"] == 20
