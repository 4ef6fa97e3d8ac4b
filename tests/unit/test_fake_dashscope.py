"""The DashScope fake speaks the documented wire format over real loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.fakes.dashscope import (
    ENDPOINT_PATHS,
    QUOTA_CODE,
    QUOTA_MESSAGE,
    RATE_LIMIT_CODE,
    RATE_LIMIT_MESSAGE,
    FakeDashScope,
    ManualClock,
)
from tests.images import encoded

GENERATION = ENDPOINT_PATHS["generation"]
SYNTHESIS = ENDPOINT_PATHS["image-synthesis"]
ASYNC = {"X-DashScope-Async": "enable"}


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="module")
def dashscope(clock: ManualClock) -> Iterator[FakeDashScope]:
    with FakeDashScope(clock=clock, url_ttl=30) as fake:
        yield fake


@pytest.fixture
def fake(dashscope: FakeDashScope) -> FakeDashScope:
    dashscope.reset()
    return dashscope


@pytest.fixture
async def api(fake: FakeDashScope) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with httpx.AsyncClient(base_url=fake.base_url, headers=headers, timeout=5, trust_env=False) as client:
        yield client


def generate_body(
    prompt: str = "a red fox in snow", model: str = "qwen-image", image: str | None = None, **parameters: Any
) -> dict[str, Any]:
    content: list[dict[str, str]] = [{"image": image}] if image is not None else []
    body: dict[str, Any] = {
        "model": model,
        "input": {"messages": [{"role": "user", "content": [*content, {"text": prompt}]}]},
    }
    if parameters:
        body["parameters"] = parameters
    return body


def synthesis_body(prompt: str = "a red fox in snow", model: str = "qwen-image", **parameters: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": prompt}, "parameters": {"n": 1, **parameters}}


def data_url(raw: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(raw).decode()}"


async def download(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        return await client.get(url)


def image_url(answer: dict[str, Any]) -> str:
    return answer["output"]["choices"][0]["message"]["content"][0]["image"]


def png_size(raw: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(raw)) as image:
        assert image.format == "PNG"
        return image.size


# -- synchronous generation ----------------------------------------------------------------


async def test_text_to_image_answers_a_link_to_a_png_of_the_requested_size_that_expires(
    fake: FakeDashScope, api: httpx.AsyncClient, clock: ManualClock
):
    response = await api.post(GENERATION, json=generate_body(size="1664*928", seed=7, watermark=False))

    assert response.status_code == 200
    answer = response.json()
    assert answer["request_id"]
    assert answer["output"]["choices"][0]["finish_reason"] == "stop"
    assert answer["output"]["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"] == {"width": 1664, "height": 928, "image_count": 1}
    url = image_url(answer)
    assert url.startswith(fake.origin + "/results/")

    image = await download(url)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert png_size(image.content) == (1664, 928)

    clock.advance(fake.url_ttl)
    expired = await download(url)
    assert expired.status_code == 403
    assert "Request has expired." in expired.text


async def test_text_to_image_without_a_size_is_the_1328_square(api: httpx.AsyncClient):
    answer = (await api.post(GENERATION, json=generate_body())).json()

    assert answer["usage"] == {"width": 1328, "height": 1328, "image_count": 1}
    assert png_size((await download(image_url(answer))).content) == (1328, 1328)


async def test_a_result_link_is_refused_with_a_forged_signature_an_unknown_name_or_once_expired(
    fake: FakeDashScope, api: httpx.AsyncClient
):
    url = image_url((await api.post(GENERATION, json=generate_body(size="928*1664"))).json())

    assert (await download(url.replace("Signature=", "Signature=x"))).status_code == 403
    assert (await download(f"{fake.origin}/results/nothing-here.png")).status_code == 404
    assert (await download(url)).status_code == 200
    fake.expire_urls()
    assert (await download(url)).status_code == 403


async def test_edit_fetches_a_loopback_image_and_answers_at_its_size(fake: FakeDashScope, api: httpx.AsyncClient):
    source = image_url((await api.post(GENERATION, json=generate_body(size="1664*928"))).json())

    response = await api.post(GENERATION, json=generate_body("make it night", "qwen-image-edit", image=source))

    assert response.status_code == 200, response.text
    assert response.json()["usage"] == {"width": 1664, "height": 928, "image_count": 1}
    assert png_size((await download(image_url(response.json()))).content) == (1664, 928)
    assert len(fake.downloads) == 2  # the fake fetched the source itself, then the test fetched the edit


async def test_edit_decodes_a_data_url_and_honours_an_asked_size(api: httpx.AsyncClient):
    picture = data_url(encoded(size=(40, 30)))

    as_is = await api.post(GENERATION, json=generate_body("add a hat", "qwen-image-edit", image=picture, seed=0))
    resized = await api.post(
        GENERATION, json=generate_body("add a hat", "qwen-image-edit", image=picture, size="1140*1472")
    )

    assert as_is.json()["usage"] == {"width": 40, "height": 30, "image_count": 1}
    assert resized.json()["usage"] == {"width": 1140, "height": 1472, "image_count": 1}
    assert png_size((await download(image_url(resized.json()))).content) == (1140, 1472)


def _with_messages(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "qwen-image", "input": {"messages": list(messages)}}


PICTURE = data_url(encoded())
BAD_GENERATIONS: list[tuple[str, Callable[[FakeDashScope], dict[str, Any]], str]] = [
    ("unknown-model", lambda f: generate_body(model="qwen-image-max"), "Model not exist."),
    ("no-model", lambda f: {"input": generate_body()["input"]}, "Model not exist."),
    ("two-messages", lambda f: _with_messages(*generate_body()["input"]["messages"] * 2), "exactly one message"),
    ("no-messages", lambda f: _with_messages(), "exactly one message"),
    ("system-role", lambda f: _with_messages({"role": "system", "content": [{"text": "hi"}]}), "role must be user"),
    ("no-text", lambda f: _with_messages({"role": "user", "content": []}), "exactly one non-blank text part"),
    ("blank-text", lambda f: generate_body("   "), "exactly one non-blank text part"),
    (
        "two-texts",
        lambda f: _with_messages({"role": "user", "content": [{"text": "a"}, {"text": "b"}]}),
        "exactly one non-blank text part",
    ),
    (
        "mixed-part",
        lambda f: _with_messages({"role": "user", "content": [{"text": "a", "image": PICTURE}]}),
        "Each content part",
    ),
    ("edit-without-image", lambda f: generate_body(model="qwen-image-edit"), "needs exactly one image"),
    ("generate-with-image", lambda f: generate_body(image=PICTURE), "takes no image"),
    (
        "edit-with-two-images",
        lambda f: (
            _with_messages({"role": "user", "content": [{"image": PICTURE}, {"image": PICTURE}, {"text": "a"}]})
            | {"model": "qwen-image-edit"}
        ),
        "at most one image",
    ),
    ("size-not-offered", lambda f: generate_body(size="1024*1024"), "size must be one of"),
    ("size-with-x", lambda f: generate_body(size="1328x1328"), "size must be one of"),
    ("negative-seed", lambda f: generate_body(seed=-1), "seed must be an integer"),
    ("seed-too-big", lambda f: generate_body(seed=2_147_483_648), "seed must be an integer"),
    ("seed-as-text", lambda f: generate_body(seed="7"), "seed must be an integer"),
    ("seed-as-bool", lambda f: generate_body(seed=True), "seed must be an integer"),
    ("misspelt-parameter", lambda f: generate_body(negativePrompt="blur"), "Unknown parameter: negativePrompt"),
    ("two-images-asked", lambda f: generate_body(n=2), "n must be 1"),
    ("watermark-as-text", lambda f: generate_body(watermark="false"), "watermark must be a boolean"),
    ("negative-prompt-as-list", lambda f: generate_body(negative_prompt=["blur"]), "negative_prompt must be a string"),
    (
        "edit-image-not-an-image",
        lambda f: generate_body(model="qwen-image-edit", image=data_url(b"certainly not a picture")),
        "could not be decoded",
    ),
    (
        "edit-image-on-the-internet",
        lambda f: generate_body(model="qwen-image-edit", image="http://example.com/cat.png"),
        "loopback",
    ),
    (
        "edit-image-missing-on-loopback",
        lambda f: generate_body(model="qwen-image-edit", image=f"{f.origin}/results/gone.png"),
        "HTTP 404",
    ),
    ("edit-image-as-a-path", lambda f: generate_body(model="qwen-image-edit", image="/tmp/cat.png"), "http(s) URL"),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in BAD_GENERATIONS], ids=[c[0] for c in BAD_GENERATIONS])
async def test_a_generation_breaking_a_documented_rule_is_400_invalid_parameter(
    fake: FakeDashScope, api: httpx.AsyncClient, make: Callable[[FakeDashScope], dict[str, Any]], message: str
):
    response = await api.post(GENERATION, json=make(fake))

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "InvalidParameter"
    assert message in body["message"]
    assert body["request_id"]


async def test_a_body_that_is_not_json_is_400(api: httpx.AsyncClient):
    response = await api.post(GENERATION, content=b"model=qwen-image", headers={"Content-Type": "text/plain"})

    assert response.status_code == 400
    assert response.json()["code"] == "InvalidParameter"


async def test_seed_bounds_are_inclusive(api: httpx.AsyncClient):
    for seed in (0, 2_147_483_647):
        assert (await api.post(GENERATION, json=generate_body(seed=seed, prompt_extend=False))).status_code == 200


async def test_the_synchronous_endpoint_refuses_the_async_header_as_dashscope_does(api: httpx.AsyncClient):
    response = await api.post(GENERATION, json=generate_body(), headers=ASYNC)

    assert response.status_code == 403
    assert response.json()["code"] == "AccessDenied"
    assert response.json()["message"] == "current user api does not support asynchronous calls"


# -- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer sk-wrong", "sk-fake-dashscope", "bearer sk-fake-dashscope"],
    ids=["missing", "wrong-key", "no-scheme", "lower-case-scheme"],
)
async def test_a_call_without_the_right_bearer_key_is_401_invalid_api_key(
    fake: FakeDashScope, authorization: str | None
):
    headers = {"Authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(base_url=fake.base_url, headers=headers, trust_env=False) as client:
        generation = await client.post(GENERATION, json=generate_body())
        poll = await client.get("/tasks/any")

    for response in (generation, poll):
        assert response.status_code == 401
        assert response.json()["code"] == "InvalidApiKey"
        assert response.json()["request_id"]


# -- asynchronous tasks --------------------------------------------------------------------


async def test_a_task_goes_pending_running_then_succeeded_with_a_downloadable_result(
    fake: FakeDashScope, api: httpx.AsyncClient
):
    submitted = await api.post(SYNTHESIS, json=synthesis_body(size="928*1664", seed=3), headers=ASYNC)

    assert submitted.status_code == 200
    assert submitted.json()["request_id"]
    task_id = submitted.json()["output"]["task_id"]
    assert submitted.json()["output"]["task_status"] == "PENDING"

    polls = [(await api.get(f"/tasks/{task_id}")).json() for _ in range(3)]
    assert [p["output"]["task_status"] for p in polls] == ["PENDING", "RUNNING", "SUCCEEDED"]
    done = polls[-1]
    assert done["usage"] == {"image_count": 1}
    assert done["output"]["results"][0]["orig_prompt"] == "a red fox in snow"
    assert {"submit_time", "scheduled_time", "end_time"} <= set(done["output"])
    url = done["output"]["results"][0]["url"]
    assert png_size((await download(url)).content) == (928, 1664)

    again = (await api.get(f"/tasks/{task_id}")).json()
    assert again["output"]["results"][0]["url"] == url
    assert fake.poll_count(task_id) == 4


async def test_a_task_can_finish_on_the_first_poll(fake: FakeDashScope, api: httpx.AsyncClient):
    fake.task_polls = 1
    task_id = (await api.post(SYNTHESIS, json=synthesis_body(), headers=ASYNC)).json()["output"]["task_id"]

    done = (await api.get(f"/tasks/{task_id}")).json()

    assert done["output"]["task_status"] == "SUCCEEDED"
    assert png_size((await download(done["output"]["results"][0]["url"])).content) == (1328, 1328)


async def test_a_scripted_task_ends_failed_with_its_code_and_message_and_the_next_succeeds(
    fake: FakeDashScope, api: httpx.AsyncClient
):
    fake.fail_next_task("DataInspectionFailed", "Output data may contain inappropriate content.")
    failing = (await api.post(SYNTHESIS, json=synthesis_body(), headers=ASYNC)).json()["output"]["task_id"]
    healthy = (await api.post(SYNTHESIS, json=synthesis_body(), headers=ASYNC)).json()["output"]["task_id"]

    for _ in range(3):
        last = (await api.get(f"/tasks/{failing}")).json()["output"]
        healthy_last = (await api.get(f"/tasks/{healthy}")).json()["output"]

    assert last["task_status"] == "FAILED"
    assert last["code"] == "DataInspectionFailed"
    assert last["message"] == "Output data may contain inappropriate content."
    assert "results" not in last
    assert healthy_last["task_status"] == "SUCCEEDED"


async def test_a_scripted_task_can_end_canceled(fake: FakeDashScope, api: httpx.AsyncClient):
    fake.task_polls = 2
    fake.fail_next_task(status="CANCELED")
    task_id = (await api.post(SYNTHESIS, json=synthesis_body(), headers=ASYNC)).json()["output"]["task_id"]

    statuses = [(await api.get(f"/tasks/{task_id}")).json()["output"]["task_status"] for _ in range(2)]

    assert statuses == ["PENDING", "CANCELED"]


async def test_polling_an_unknown_task_reports_unknown(api: httpx.AsyncClient):
    response = await api.get("/tasks/0385dc79-0000-0000-0000-000000000000")

    assert response.status_code == 200
    assert response.json()["output"] == {"task_id": "0385dc79-0000-0000-0000-000000000000", "task_status": "UNKNOWN"}


async def test_submitting_a_task_without_the_async_header_is_403_access_denied(api: httpx.AsyncClient):
    response = await api.post(SYNTHESIS, json=synthesis_body())

    assert response.status_code == 403
    assert response.json()["code"] == "AccessDenied"
    assert response.json()["message"] == "current user api does not support synchronous calls"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (synthesis_body(model="qwen-image-edit"), "Model not exist."),
        ({"model": "qwen-image", "input": {}}, "input.prompt is required"),
        (generate_body(), "Unknown field in input: messages"),
        (synthesis_body(size="1024*1024"), "size must be one of"),
        (synthesis_body(n=4), "n must be 1"),
    ],
    ids=["edit-model", "no-prompt", "messages-instead-of-prompt", "size-not-offered", "four-images"],
)
async def test_a_task_breaking_a_documented_rule_is_400(api: httpx.AsyncClient, body: dict[str, Any], message: str):
    response = await api.post(SYNTHESIS, json=body, headers=ASYNC)

    assert response.status_code == 400
    assert response.json()["code"] == "InvalidParameter"
    assert message in response.json()["message"]


# -- rate limits ---------------------------------------------------------------------------


async def test_calls_beyond_the_minute_limit_are_throttled_per_model_until_the_minute_passes(
    fake: FakeDashScope, api: httpx.AsyncClient, clock: ManualClock
):
    fake.set_rpm(3)
    for _ in range(3):
        assert (await api.post(GENERATION, json=generate_body())).status_code == 200
        clock.advance(1)

    throttled = await api.post(GENERATION, json=generate_body())
    other_model = await api.post(GENERATION, json=generate_body(model="qwen-image-plus"))
    clock.advance(60)
    recovered = await api.post(GENERATION, json=generate_body())

    assert throttled.status_code == 429
    assert throttled.json()["code"] == RATE_LIMIT_CODE == "Throttling.RateQuota"
    assert throttled.json()["message"] == RATE_LIMIT_MESSAGE == "Requests rate limit exceeded, please try again later."
    assert other_model.status_code == 200
    assert recovered.status_code == 200


async def test_the_per_second_limit_is_a_sixtieth_of_the_minute_limit(
    fake: FakeDashScope, api: httpx.AsyncClient, clock: ManualClock
):
    fake.set_rpm(120)
    answers = [(await api.post(SYNTHESIS, json=synthesis_body(), headers=ASYNC)).status_code for _ in range(3)]
    clock.advance(1)
    later = await api.post(SYNTHESIS, json=synthesis_body(), headers=ASYNC)

    assert answers == [200, 200, 429]
    assert later.status_code == 200


async def test_a_limit_on_one_model_leaves_the_others_alone(fake: FakeDashScope, api: httpx.AsyncClient):
    fake.set_rpm(1, model="qwen-image")

    first = await api.post(GENERATION, json=generate_body())
    second = await api.post(GENERATION, json=generate_body())
    plus = [(await api.post(GENERATION, json=generate_body(model="qwen-image-plus"))).status_code for _ in range(3)]

    assert (first.status_code, second.status_code) == (200, 429)
    assert plus == [200, 200, 200]


# -- scripted failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "script", "code", "message"),
    [
        (401, {}, "InvalidApiKey", "Invalid API-key provided."),
        (429, {}, RATE_LIMIT_CODE, RATE_LIMIT_MESSAGE),
        (429, {"code": QUOTA_CODE, "message": QUOTA_MESSAGE}, "Throttling.AllocationQuota", "Allocated quota exceeded"),
        (400, {}, "InvalidParameter", "invalid"),
        (500, {}, "InternalError", "internal error"),
    ],
    ids=["bad-key", "rate-limit", "quota", "bad-request", "server-error"],
)
async def test_a_scripted_failure_answers_once_with_the_dashscope_error_body(
    fake: FakeDashScope, api: httpx.AsyncClient, status: int, script: dict[str, str], code: str, message: str
):
    fake.fail_next(status, **script)

    failed = await api.post(GENERATION, json=generate_body())
    after = await api.post(GENERATION, json=generate_body())

    assert failed.status_code == status
    assert failed.json()["code"] == code
    assert message in failed.json()["message"]
    assert failed.json()["request_id"]
    assert after.status_code == 200


async def test_a_scripted_failure_can_echo_the_callers_authorization_header(
    fake: FakeDashScope, api: httpx.AsyncClient
):
    fake.fail_next(400, message="Bad header.", echo_auth=True)

    failed = await api.post(GENERATION, json=generate_body())

    assert failed.status_code == 400
    assert failed.json()["message"] == f"Bad header. (Authorization: Bearer {fake.api_key})"


async def test_failures_scripted_for_polls_leave_other_endpoints_alone(fake: FakeDashScope, api: httpx.AsyncClient):
    fake.fail_next(500, times=2, endpoint="tasks")
    task_id = (await api.post(SYNTHESIS, json=synthesis_body(), headers=ASYNC)).json()["output"]["task_id"]

    statuses = [(await api.get(f"/tasks/{task_id}")).status_code for _ in range(3)]

    assert statuses == [500, 500, 200]
    assert fake.poll_count(task_id) == 1
    assert len(fake.requests_to("tasks")) == 3


async def test_a_hung_call_answers_only_once_released(fake: FakeDashScope, api: httpx.AsyncClient):
    fake.hang_next()
    call = asyncio.create_task(api.post(GENERATION, json=generate_body()))

    await asyncio.to_thread(fake.wait_until_hung)
    assert not call.done()
    fake.release_hung()
    response = await asyncio.wait_for(call, 5)

    assert response.status_code == 200
    assert (await api.post(GENERATION, json=generate_body())).status_code == 200  # the hang was used up


async def test_stopping_the_fake_answers_hung_calls_with_503():
    fake = FakeDashScope()
    fake.start()
    try:
        fake.hang_next()
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {fake.api_key}"}, trust_env=False) as client:
            call = asyncio.create_task(client.get(f"{fake.base_url}/tasks/any"))
            await asyncio.to_thread(fake.wait_until_hung)
            await asyncio.to_thread(fake.stop)
            response = await asyncio.wait_for(call, 5)
    finally:
        fake.stop()

    assert response.status_code == 503


async def test_a_slow_call_is_delayed_once_and_latency_delays_every_call(fake: FakeDashScope, api: httpx.AsyncClient):
    fake.slow_next(0.3)
    started = time.perf_counter()
    await api.get("/tasks/any")
    slow = time.perf_counter() - started
    started = time.perf_counter()
    await api.get("/tasks/any")
    quick = time.perf_counter() - started

    fake.set_latency(0.15)
    started = time.perf_counter()
    await api.get("/tasks/any")
    await api.get("/tasks/any")
    delayed = time.perf_counter() - started

    assert slow >= 0.3
    assert quick < 0.3
    assert delayed >= 0.3


# -- records -------------------------------------------------------------------------------


async def test_every_call_is_recorded_without_the_key_in_its_repr(fake: FakeDashScope, api: httpx.AsyncClient):
    body = generate_body(seed=11)
    await api.post(GENERATION, json=body)
    missing = await api.post("/services/aigc/text2image/generation", json=body)

    generation, unknown = fake.received
    assert generation.method == "POST"
    assert generation.path == "/api/v1" + GENERATION
    assert generation.endpoint == "generation"
    assert generation.json == body
    assert generation.status == 200
    assert generation.headers["authorization"] == f"Bearer {fake.api_key}"
    assert fake.api_key not in repr(generation)
    assert missing.status_code == 404
    assert (unknown.endpoint, unknown.status) == ("unknown", 404)
