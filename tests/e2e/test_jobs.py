"""The path of one job: submit, run on the offline pool, store the PNG, charge exactly once."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
from PIL import Image
from sqlalchemy import select, text

from pipelines import offline
from storage.models import Job, LedgerEntry
from storage.objects import content_key
from tests.e2e.helpers import bearer, set_balance, signup


async def submit(client: httpx.AsyncClient, headers: dict, params: dict, operation: str = "offline.generate"):
    return await client.post("/v1/jobs", json={"operation": operation, "params": params}, headers=headers)


async def wait_for_end(client: httpx.AsyncClient, headers: dict, job_id: str) -> dict:
    response = await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] in ("succeeded", "failed"), job
    return job


async def credits(client: httpx.AsyncClient, headers: dict) -> float:
    return (await client.get("/v1/auth/me", headers=headers)).json()["credits"]


async def test_generated_png_is_stored_downloadable_and_charged_one_credit(client):
    account = await signup(client)
    headers = bearer(account["accessToken"])
    params = {"prompt": "a red fox in white snow", "width": 256, "height": 192, "seed": 42}

    accepted = await submit(client, headers, params)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "queued"

    job = await wait_for_end(client, headers, accepted.json()["jobId"])
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 100
    assert job["error"] is None
    [asset] = job["result"]["assets"]
    assert (asset["contentType"], asset["width"], asset["height"]) == ("image/png", 256, 192)

    download = await client.get(asset["url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    assert len(download.content) == asset["size"]
    assert hashlib.sha256(download.content).hexdigest() == asset["sha256"]
    assert Image.open(io.BytesIO(download.content)).size == (256, 192)
    expected = offline.encode_png(offline.render_generate(params["prompt"], 256, 192, 42))
    assert download.content == expected, "the offline engine is deterministic in prompt and seed"

    assert await credits(client, headers) == 19


async def test_job_without_seed_gets_one_so_it_can_be_rerun(client):
    headers = bearer((await signup(client))["accessToken"])
    accepted = await submit(client, headers, {"prompt": "seedless", "width": 64, "height": 64})
    job = await wait_for_end(client, headers, accepted.json()["jobId"])
    assert isinstance(job["params"]["seed"], int)
    assert job["status"] == "succeeded"


async def test_failed_job_releases_its_credit(client, settings, sessions):
    account = await signup(client)
    headers = bearer(account["accessToken"])
    objects = Path(settings.storage_url.removeprefix("file://"))
    # Make the store unable to save this exact output: a file where its shard folder must go.
    for seed in range(1000):
        data = offline.encode_png(offline.render_generate("doomed", 64, 64, seed))
        shard = objects / Path(content_key(hashlib.sha256(data).hexdigest(), "image/png")).parent
        if not shard.exists():
            break
    shard.parent.mkdir(parents=True, exist_ok=True)
    shard.write_text("not a folder")
    try:
        accepted = await submit(client, headers, {"prompt": "doomed", "width": 64, "height": 64, "seed": seed})
        job = await wait_for_end(client, headers, accepted.json()["jobId"])
    finally:
        shard.unlink()

    assert job["status"] == "failed"
    assert job["error"]["code"] == "storage_unavailable"
    assert job["result"] is None
    assert await credits(client, headers) == 20
    async with sessions() as session:
        kinds = (
            await session.execute(
                select(LedgerEntry.kind, LedgerEntry.amount)
                .where(LedgerEntry.job_id == uuid.UUID(job["id"]))
                .order_by(LedgerEntry.id)
            )
        ).all()
    assert [(k, float(a)) for k, a in kinds] == [("reserve", -1.0), ("release", 1.0)]


async def test_submit_without_credits_is_402_and_creates_no_job(client, sessions):
    account = await signup(client)
    headers = bearer(account["accessToken"])
    await set_balance(sessions, account["user"]["id"], Decimal("0.5"))

    response = await submit(client, headers, {"prompt": "too poor", "width": 64, "height": 64})

    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "insufficient_credits"
    assert error["details"] == {"required": 1.0, "balance": 0.5}
    async with sessions() as session:
        owned = (await session.execute(select(Job.id).where(Job.owner_id == uuid.UUID(account["user"]["id"])))).all()
    assert owned == []


async def test_concurrent_submissions_never_overspend(client, sessions):
    """Issue 7's race: 200 one-credit submissions at once against a balance of 50."""
    account = await signup(client)
    headers = bearer(account["accessToken"])
    await set_balance(sessions, account["user"]["id"], Decimal(50))

    answers = await asyncio.gather(
        *(submit(client, headers, {"prompt": f"race {i}", "width": 64, "height": 64}) for i in range(200))
    )

    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 50 + [402] * 150
    for accepted in (a for a in answers if a.status_code == 202):
        assert (await wait_for_end(client, headers, accepted.json()["jobId"]))["status"] == "succeeded"
    assert await credits(client, headers) == 0
    async with sessions() as session:
        lowest = await session.scalar(
            text(
                "SELECT min(running) FROM (SELECT sum(amount) OVER (ORDER BY id) AS running"
                " FROM ledger_entries WHERE account_id = :account) AS history"
            ),
            {"account": uuid.UUID(account["user"]["id"])},
        )
    assert lowest == 0, "the balance never went below zero, entry by entry"


async def test_bad_params_are_422_naming_the_field_and_cost_nothing(client):
    headers = bearer((await signup(client))["accessToken"])
    cases = [
        ({"operation": "offline.paint", "params": {"prompt": "x"}}, "operation"),
        ({"operation": "offline.generate", "params": {"prompt": "x", "width": 10}}, "params.width"),
        ({"operation": "offline.generate", "params": {"prompt": "x", "style": "noir"}}, "params.style"),
        ({"operation": "offline.generate", "params": {"width": 64}}, "params.prompt"),
        ({"operation": "offline.generate", "params": {"prompt": "x", "seed": "lucky"}}, "params.seed"),
        ({"operation": "offline.generate", "params": {"prompt": ""}}, "params.prompt"),
        ({"params": {"prompt": "x"}}, "operation"),
        ({"operation": "offline.generate", "params": [1, 2]}, "params"),
        ({"operation": "offline.generate", "params": {"prompt": "x"}, "priority": 9}, "priority"),
    ]
    for body, field in cases:
        response = await client.post("/v1/jobs", json=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        fields = [d["field"] for d in response.json()["error"]["details"]]
        assert field in fields, (body, fields)
    assert await credits(client, headers) == 20


async def test_another_users_job_is_404_and_lists_show_only_own_jobs(client):
    owner = bearer((await signup(client))["accessToken"])
    stranger = bearer((await signup(client))["accessToken"])
    job_ids = []
    for i in range(3):
        job_ids.append(
            (await submit(client, owner, {"prompt": f"mine {i}", "width": 64, "height": 64})).json()["jobId"]
        )

    assert (await client.get(f"/v1/jobs/{job_ids[0]}", headers=stranger)).status_code == 404
    assert (await client.get(f"/v1/jobs/{uuid.uuid4()}", headers=owner)).status_code == 404
    assert (await client.get("/v1/jobs", headers=stranger)).json() == {"items": [], "nextCursor": None}

    first = (await client.get("/v1/jobs", params={"limit": 2}, headers=owner)).json()
    assert [j["id"] for j in first["items"]] == job_ids[:0:-1]
    second = (await client.get("/v1/jobs", params={"limit": 2, "cursor": first["nextCursor"]}, headers=owner)).json()
    assert [j["id"] for j in second["items"]] == job_ids[:1]
    assert second["nextCursor"] is None


async def test_jobs_need_a_valid_token(client):
    response = await client.post("/v1/jobs", json={"operation": "offline.generate", "params": {"prompt": "x"}})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


async def test_params_postgres_cannot_store_are_422_not_500(client):
    headers = bearer((await signup(client))["accessToken"])
    for raw in (
        b'{"operation": "offline.generate", "params": {"prompt": "nul \\u0000 inside"}}',
        b'{"operation": "offline.generate", "params": {"prompt": "x", "seed": NaN}}',
    ):
        response = await client.post("/v1/jobs", content=raw, headers={**headers, "Content-Type": "application/json"})
        assert response.status_code == 422, response.text
    assert await credits(client, headers) == 20
