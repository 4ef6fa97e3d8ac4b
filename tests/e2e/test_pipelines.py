"""Chains of steps end to end: `{"steps": [...]}` with `"input": "previous"`, per-step progress,
what each step received, and what the chain was charged when it ran whole or in part."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from storage.events import JobEvents
from storage.redis import make_redis
from tests.e2e.helpers import assert_v1_error, bearer, set_balance, signup
from tests.e2e.test_providers import credits, fetch, png, upload


@pytest.fixture(autouse=True)
def fresh_fakes(fake_ideogram, fake_dashscope):
    fake_ideogram.reset()
    fake_dashscope.reset()


@pytest.fixture
async def headers(client) -> dict:
    return bearer((await signup(client))["accessToken"])


async def run_chain(client: httpx.AsyncClient, headers: dict, steps: list[dict]) -> dict:
    accepted = await client.post("/v1/jobs", json={"steps": steps}, headers=headers)
    assert accepted.status_code == 202, accepted.text
    response = await client.get(f"/v1/jobs/{accepted.json()['jobId']}", params={"wait": 30}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def event_log(settings, owner_id: str, job_id: str) -> list[tuple[str, dict]]:
    """The job's events as announced on its owner's stream."""
    redis = make_redis(settings.redis_url)
    try:
        entries = await redis.xrange(JobEvents(redis, settings.redis_namespace).user_stream(owner_id))
    finally:
        await redis.aclose()
    announced = [event for _, fields in entries for event in json.loads(fields[b"events"])]
    return [(event["type"], event["data"]) for event in announced if event["job"] == job_id]


OFFLINE_CHAIN = [
    {"operation": "offline.generate", "params": {"prompt": "a red kite", "width": 96, "height": 64, "seed": 3}},
    {"operation": "offline.upscale", "input": "previous", "params": {"factor": 2}},
    {"operation": "offline.describe", "input": "previous"},
]


async def test_a_three_step_chain_passes_each_image_on_and_reports_every_step(client, headers, settings):
    job = await run_chain(client, headers, OFFLINE_CHAIN)

    assert job["status"] == "succeeded", job["error"]
    assert (job["operation"], job["progress"], job["cost"]) == ("pipeline", 100, 3.5)
    generated, upscaled, described = job["steps"]
    assert [s["status"] for s in job["steps"]] == ["succeeded"] * 3
    assert [s["input"] for s in job["steps"]] == [None, "previous", "previous"]
    [first] = generated["assets"]
    [second] = upscaled["assets"]
    assert (first["width"], first["height"]) == (96, 64)
    assert (second["width"], second["height"]) == (192, 128), "the upscale worked on the generated image"
    assert (await fetch(client, second)).size == (192, 128)
    assert described["assets"] == [] and "192x128" in described["text"], "describe read the upscaled image"
    assert job["result"]["text"] == described["text"]
    assert [a["id"] for a in job["result"]["assets"]] == [first["id"], second["id"]]
    assert await credits(client, headers) == 20 - 3.5

    me = (await client.get("/v1/auth/me", headers=headers)).json()
    events = await event_log(settings, me["id"], job["id"])
    progress = [data["progress"] for kind, data in events if kind == "job.progress"]
    finished = [(data["step"], data["progress"]) for kind, data in events if kind == "job.step_succeeded"]
    assert progress == [0, 33, 66]
    assert finished == [(0, 33), (1, 66), (2, 100)]
    assert events[-1][0] == "job.succeeded"


async def test_ideogram_chain_sends_the_generated_image_to_upscale_and_describe(client, headers, fake_ideogram):
    job = await run_chain(
        client,
        headers,
        [
            {"operation": "ideogram.generate", "params": {"prompt": "a harbour", "num_images": 2}},
            {"operation": "ideogram.upscale", "input": "previous", "params": {"detail": 70}},
            {"operation": "ideogram.describe", "input": "previous"},
        ],
    )

    assert job["status"] == "succeeded", job["error"]
    generated, upscaled, described = job["steps"]
    assert len(generated["assets"]) == 2
    [sent_upscale] = fake_ideogram.requests_to("upscale")
    [sent_describe] = fake_ideogram.requests_to("describe")
    first_generated = generated["assets"][0]["sha256"]
    assert hashlib.sha256(sent_upscale.file("image_file").data).hexdigest() == first_generated
    assert json.loads(sent_upscale.fields["image_request"])["detail"] == 70
    [upscaled_asset] = upscaled["assets"]
    assert hashlib.sha256(sent_describe.file("image_file").data).hexdigest() == upscaled_asset["sha256"]
    assert described["text"]
    assert job["cost"] == 2 + 2 + 0.5
    assert await credits(client, headers) == 20 - 4.5


async def test_a_failing_step_keeps_what_ran_charges_only_it_and_skips_the_rest(client, headers, fake_ideogram):
    fake_ideogram.fail_next(422, times=1, endpoint="upscale")
    job = await run_chain(
        client,
        headers,
        [
            {"operation": "ideogram.generate", "params": {"prompt": "a harbour"}},
            {"operation": "ideogram.upscale", "input": "previous"},
            {"operation": "ideogram.describe", "input": "previous"},
        ],
    )

    assert job["status"] == "failed"
    assert job["error"]["code"] == "content_rejected"
    assert [s["status"] for s in job["steps"]] == ["succeeded", "failed", "canceled"]
    assert len(job["steps"][0]["assets"]) == 1, "the first step's image is kept"
    assert job["result"] is None
    assert fake_ideogram.requests_to("describe") == []
    assert await credits(client, headers) == 20 - 1, "only the generate step was charged"
    assets = (await client.get("/v1/assets", params={"jobId": job["id"]}, headers=headers)).json()["items"]
    assert [a["id"] for a in assets] == [job["steps"][0]["assets"][0]["id"]]


async def test_a_chain_can_start_from_an_uploaded_image(client, headers):
    image = await upload(client, headers, png(size=(80, 64)))
    job = await run_chain(
        client,
        headers,
        [
            {"operation": "offline.reframe", "params": {"image": image, "width": 128, "height": 64}},
            {"operation": "offline.upscale", "input": "previous", "params": {"factor": 2}},
        ],
    )
    assert job["status"] == "succeeded", job["error"]
    [reframed], [upscaled] = (s["assets"] for s in job["steps"])
    assert (reframed["width"], upscaled["width"]) == (128, 256)


async def gallery_items(client: httpx.AsyncClient, headers: dict) -> dict[str, dict]:
    response = await client.get("/api/r2files", headers=headers)
    assert response.status_code == 200, response.text
    return {item["id"]: item for item in response.json()["items"]}


async def test_a_chains_images_are_in_the_gallery_under_the_step_that_made_them_and_the_chains_prompt(client, headers):
    upload_id = await upload(client, headers, png(size=(80, 64)))
    job = await run_chain(
        client,
        headers,
        [
            {"operation": "offline.upscale", "params": {"image": upload_id, "factor": 2}},
            {"operation": "offline.remix", "input": "previous", "params": {"prompt": "the same at dusk"}},
            {"operation": "offline.describe", "input": "previous"},
        ],
    )
    assert job["status"] == "succeeded", job["error"]
    [upscaled], [remixed] = job["steps"][0]["assets"], job["steps"][1]["assets"]

    items = await gallery_items(client, headers)
    assert set(items) == {upload_id, upscaled["id"], remixed["id"]}
    assert (items[upscaled["id"]]["model"], items[upscaled["id"]]["prompt"]) == ("offline.upscale", "the same at dusk")
    assert (items[remixed["id"]]["model"], items[remixed["id"]]["prompt"]) == ("offline.remix", "the same at dusk")
    assert items[remixed["id"]]["jobId"] == job["id"]
    assert (items[upload_id]["model"], items[upload_id]["prompt"], items[upload_id]["jobId"]) == (None, None, None)
    assert items[remixed["id"]]["fileUrl"] == remixed["url"]


async def test_a_chains_result_url_in_the_compat_job_is_its_final_image(client, headers, fake_ideogram):
    job = await run_chain(
        client,
        headers,
        [
            {"operation": "ideogram.generate", "params": {"prompt": "a harbour", "num_images": 2}},
            {"operation": "ideogram.upscale", "input": "previous"},
            {"operation": "ideogram.describe", "input": "previous"},
        ],
    )
    assert job["status"] == "succeeded", job["error"]
    generated = job["steps"][0]["assets"]
    [upscaled] = job["steps"][1]["assets"]

    compat = (await client.get(f"/api/jobs/{job['id']}", headers=headers)).json()
    assert compat["status"] == "COMPLETED"
    assert compat["resultUrl"] == upscaled["url"], "the upscale is the result, not the first generated image"
    assert compat["metadata"]["assets"] == [generated[0]["url"], generated[1]["url"], upscaled["url"]]
    assert compat["metadata"]["text"] == job["steps"][2]["text"]
    [listed] = (await client.get("/api/jobs", headers=headers)).json()["jobs"]
    assert listed["resultUrl"] == upscaled["url"]
    assert (await fetch(client, upscaled)).size == (512, 512)

    items = await gallery_items(client, headers)
    assert [items[a["id"]]["model"] for a in generated] == ["ideogram.generate"] * 2
    assert (items[upscaled["id"]]["model"], items[upscaled["id"]]["prompt"]) == ("ideogram.upscale", "a harbour")


async def test_a_chained_check_that_needs_the_image_fails_the_step_not_the_submit(client, headers):
    job = await run_chain(
        client,
        headers,
        [
            {"operation": "offline.generate", "params": {"prompt": "big", "width": 2048, "height": 2048}},
            {"operation": "offline.upscale", "input": "previous", "params": {"factor": 4}},
        ],
    )
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_input"
    assert "over" in job["error"]["message"]
    assert await credits(client, headers) == 20 - 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"steps": []}, "steps"),
        ({"steps": [{"operation": "offline.generate", "params": {"prompt": "x"}}] * 11}, "steps"),
        ({"steps": [{"operation": "offline.upscale", "input": "previous"}]}, "steps.0.input"),
        (
            {"steps": [{"operation": "offline.generate", "params": {"prompt": "x"}}, {"operation": "nope.op"}]},
            "steps.1.operation",
        ),
        (
            {
                "steps": [
                    {"operation": "offline.generate", "params": {"prompt": "x"}},
                    {"operation": "offline.upscale", "input": "previous", "params": {"factor": 3}},
                ]
            },
            "steps.1.params.factor",
        ),
        (
            {
                "steps": [
                    {"operation": "offline.generate", "params": {"prompt": "x"}},
                    {"operation": "offline.generate", "input": "previous", "params": {"prompt": "y"}},
                ]
            },
            "steps.1.input",
        ),
        (
            {
                "steps": [
                    {"operation": "offline.generate", "params": {"prompt": "x"}},
                    {"operation": "offline.describe", "input": "previous"},
                    {"operation": "offline.upscale", "input": "previous"},
                ]
            },
            "steps.2.input",
        ),
        (
            {
                "steps": [
                    {"operation": "offline.generate", "params": {"prompt": "x"}},
                    {
                        "operation": "offline.upscale",
                        "input": "previous",
                        "params": {"image": "00000000-0000-0000-0000-000000000001"},
                    },
                ]
            },
            "steps.1.params.image",
        ),
        ({"steps": [{"operation": "offline.generate", "params": {"prompt": "x"}, "input": "next"}]}, "steps.0.input"),
        ({"steps": [{"operation": "offline.generate", "params": {"prompt": "x"}, "extra": 1}]}, "steps.0.extra"),
        ({"steps": "offline.generate"}, "steps"),
        ({"operation": "offline.generate", "steps": [{"operation": "offline.generate"}]}, "steps"),
        ({"steps": [{"operation": "offline.generate", "params": {"prompt": "x"}}], "params": {}}, "params"),
    ],
)
async def test_a_bad_chain_is_422_naming_the_step_and_field_and_costs_nothing(client, headers, body, field):
    response = await client.post("/v1/jobs", json=body, headers=headers)
    error = assert_v1_error(response, 422, response.json()["error"]["code"])
    assert field in [d["field"] for d in error["details"]], error
    assert await credits(client, headers) == 20


async def test_another_users_asset_in_a_later_step_is_404_and_costs_nothing(client, headers):
    stranger = bearer((await signup(client))["accessToken"])
    theirs = await upload(client, stranger, png())
    response = await client.post(
        "/v1/jobs",
        json={
            "steps": [
                {"operation": "offline.generate", "params": {"prompt": "x"}},
                {"operation": "offline.edit", "input": "previous", "params": {"mask": theirs, "prompt": "y"}},
            ]
        },
        headers=headers,
    )
    error = assert_v1_error(response, 404, "not_found")
    assert [d["field"] for d in error["details"]] == ["steps.1.params.mask"]
    assert await credits(client, headers) == 20


async def test_a_chain_reserves_its_whole_price_up_front(client, headers, sessions):
    me = (await client.get("/v1/auth/me", headers=headers)).json()
    await set_balance(sessions, me["id"], 2)
    response = await client.post("/v1/jobs", json={"steps": OFFLINE_CHAIN}, headers=headers)
    error = assert_v1_error(response, 402, "insufficient_credits")
    assert error["details"] == {"required": 3.5, "balance": 2.0}
    assert await credits(client, headers) == 2
