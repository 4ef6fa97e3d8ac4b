"""QwenClient against a local DashScope over real loopback HTTP: what goes up, what comes back, what fails."""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daygen.errors import (
    ContentRejected,
    ProviderBadRequest,
    ProviderError,
    ProviderMisconfigured,
    ProviderOutOfFunds,
    ProviderRateLimited,
    ProviderUnavailable,
)
from pipelines.providers import MAX_ANSWER_BYTES, ImageFile, provider_session, provider_timeout
from pipelines.qwen import QUOTA_RETRY_S, RATE_LIMIT_RETRY_S, QwenClient
from tests.fakes.dashscope import QUOTA_CODE, QUOTA_MESSAGE, FakeDashScope
from tests.fakes.server import FakeServer
from tests.images import encoded, png_size

SECRET_KEY = "sk-qwen-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def dashscope() -> Iterator[FakeDashScope]:
    with FakeDashScope(api_key=SECRET_KEY) as fake:
        yield fake


@pytest.fixture
def fake(dashscope: FakeDashScope) -> FakeDashScope:
    dashscope.reset()
    return dashscope


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with provider_session(16) as client:
        yield client


@pytest.fixture
def qwen(fake: FakeDashScope, http: aiohttp.ClientSession) -> QwenClient:
    return QwenClient(http, base_url=fake.base_url, api_key=SECRET_KEY)


def assert_keeps_the_key_secret(error: BaseException) -> None:
    assert SECRET_KEY not in str(error)
    assert SECRET_KEY not in repr(error)
    assert SECRET_KEY not in repr(getattr(error, "details", None))


# -- synchronous generate and edit ---------------------------------------------------------


async def test_generate_sends_prompt_and_parameters_and_returns_a_png_of_the_requested_size(
    fake: FakeDashScope, qwen: QwenClient, http: aiohttp.ClientSession
) -> None:
    params = {
        "prompt": "a lighthouse at dusk",
        "size": "1664*928",
        "seed": 42,
        "negative_prompt": "blurry",
        "prompt_extend": False,
        "watermark": False,
    }

    result = await qwen.generate(params)

    (call,) = fake.requests_to("generation")
    assert call.method == "POST"
    assert call.headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert "x-dashscope-async" not in call.headers
    assert call.json == {
        "model": "qwen-image",
        "input": {"messages": [{"role": "user", "content": [{"text": "a lighthouse at dusk"}]}]},
        "parameters": {
            "size": "1664*928",
            "seed": 42,
            "negative_prompt": "blurry",
            "prompt_extend": False,
            "watermark": False,
        },
    }
    assert call.status == 200
    assert len(result.image_urls) == 1
    assert result.seeds == [42]
    assert result.upstream_request_id
    assert await png_size(http, result.image_urls[0]) == (1664, 928)


async def test_generate_leaves_out_parameters_that_are_none_and_names_it_does_not_know(
    fake: FakeDashScope, qwen: QwenClient
) -> None:
    params = {"prompt": "two cats", "size": "928*1664", "seed": None, "negative_prompt": None, "style": "x"}

    result = await qwen.generate(params)

    (call,) = fake.requests_to("generation")
    assert call.json["parameters"] == {"size": "928*1664"}
    assert result.seeds == [None]


async def test_edit_sends_the_image_as_a_data_url_of_exactly_the_given_bytes(
    fake: FakeDashScope, qwen: QwenClient, http: aiohttp.ClientSession
) -> None:
    photo = encoded("PNG", size=(40, 30), colour="blue")
    params = {"image": "0b9d7c1e-0000-4000-8000-000000000001", "prompt": "make it red", "seed": 7, "watermark": True}

    result = await qwen.edit(params, image=ImageFile("photo.png", photo, "image/png"))

    (call,) = fake.requests_to("generation")
    assert call.headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert call.json["model"] == "qwen-image-edit"
    assert call.json["parameters"] == {"seed": 7, "watermark": True}
    (message,) = call.json["input"]["messages"]
    assert message["role"] == "user"
    image_part, text_part = message["content"]
    assert text_part == {"text": "make it red"}
    header, _, data = image_part["image"].partition(",")
    assert header == "data:image/png;base64"
    assert base64.b64decode(data, validate=True) == photo
    # The data URL went upstream only: nothing handed back carries it.
    assert not any(url.startswith("data:") for url in result.image_urls)
    assert result.seeds == [7]
    assert await png_size(http, result.image_urls[0]) == (40, 30)


async def test_edit_of_a_jpeg_names_its_own_content_type(fake: FakeDashScope, qwen: QwenClient) -> None:
    photo = encoded("JPEG", size=(64, 48))

    await qwen.edit({"prompt": "add a hat"}, image=ImageFile("me.jpg", photo, "image/jpeg"))

    (call,) = fake.requests_to("generation")
    image_part = call.json["input"]["messages"][0]["content"][0]["image"]
    assert image_part == "data:image/jpeg;base64," + base64.b64encode(photo).decode()


# -- asynchronous tasks --------------------------------------------------------------------


async def test_submitted_task_is_polled_from_pending_through_running_to_succeeded(
    fake: FakeDashScope, qwen: QwenClient, http: aiohttp.ClientSession
) -> None:
    params = {"prompt": "a paper boat", "size": "1472*1140", "seed": 5, "negative_prompt": "text", "watermark": False}

    task_id = await qwen.submit_generate_task(params)
    polls = [await qwen.task_status(task_id) for _ in range(3)]

    (submit,) = fake.requests_to("image-synthesis")
    assert submit.headers["x-dashscope-async"] == "enable"
    assert submit.headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert submit.json == {
        "model": "qwen-image",
        "input": {"prompt": "a paper boat", "negative_prompt": "text"},
        "parameters": {"size": "1472*1140", "seed": 5, "watermark": False},
    }
    assert [poll.status for poll in polls] == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert [poll.finished for poll in polls] == [False, False, True]
    assert polls[0].result is None and polls[0].error is None
    done = polls[-1]
    assert done.error is None and done.result is not None
    assert done.result.upstream_request_id
    (url,) = done.result.image_urls
    assert await png_size(http, url) == (1472, 1140)
    assert fake.poll_count(task_id) == 3
    assert all(call.path.endswith(f"/tasks/{task_id}") for call in fake.requests_to("tasks"))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("DataInspectionFailed", ContentRejected),
        ("InternalError.Algo", ProviderUnavailable),
        ("InvalidParameter", ProviderBadRequest),
        ("Arrearage", ProviderOutOfFunds),
        ("Throttling.RateQuota", ProviderRateLimited),
    ],
)
async def test_failed_task_ends_with_the_error_its_code_names(
    fake: FakeDashScope, qwen: QwenClient, code: str, expected: type[ProviderError]
) -> None:
    fake.task_polls = 1
    fake.fail_next_task(code, "Something about the task.")

    status = await qwen.task_status(await qwen.submit_generate_task({"prompt": "a storm"}))

    assert status.status == "FAILED"
    assert status.finished
    assert status.result is None
    assert type(status.error) is expected
    assert code in str(status.error)


async def test_canceled_task_is_finished_and_worth_another_try(fake: FakeDashScope, qwen: QwenClient) -> None:
    fake.task_polls = 1
    fake.fail_next_task(status="CANCELED")

    status = await qwen.task_status(await qwen.submit_generate_task({"prompt": "a storm"}))

    assert (status.status, status.finished) == ("CANCELED", True)
    assert isinstance(status.error, ProviderUnavailable)


async def test_unknown_task_id_is_reported_unknown_and_finished(fake: FakeDashScope, qwen: QwenClient) -> None:
    status = await qwen.task_status("no-such-task")

    assert (status.status, status.finished, status.result) == ("UNKNOWN", True, None)
    assert isinstance(status.error, ProviderUnavailable)


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [None, ""])
async def test_without_an_api_key_nothing_is_sent_and_the_operator_is_told(
    fake: FakeDashScope, http: aiohttp.ClientSession, missing: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    qwen = QwenClient(http, base_url=fake.base_url, api_key=missing)
    image = ImageFile("a.png", encoded(), "image/png")
    calls = [
        qwen.generate({"prompt": "x"}),
        qwen.edit({"prompt": "x"}, image=image),
        qwen.submit_generate_task({"prompt": "x"}),
        qwen.task_status("t-1"),
    ]

    with caplog.at_level(logging.WARNING, logger="daygen.qwen"):
        for call in calls:
            with pytest.raises(ProviderMisconfigured):
                await call

    assert fake.received == []
    assert any(record.name == "daygen.qwen" for record in caplog.records)


async def test_refused_key_is_misconfigured_and_warns_without_showing_the_key(
    fake: FakeDashScope, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_key = "sk-wrong-key-that-must-stay-hidden"
    qwen = QwenClient(http, base_url=fake.base_url, api_key=wrong_key)

    with caplog.at_level(logging.WARNING, logger="daygen.qwen"), pytest.raises(ProviderMisconfigured) as raised:
        await qwen.generate({"prompt": "x"})

    assert fake.requests_to("generation")[0].status == 401
    (warning,) = [r for r in caplog.records if r.name == "daygen.qwen" and r.levelno == logging.WARNING]
    assert "InvalidApiKey" in warning.getMessage()
    for text in (str(raised.value), repr(raised.value), caplog.text, repr(qwen)):
        assert wrong_key not in text


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (400, None, None, ProviderBadRequest),
        (400, "DataInspectionFailed", "Input data may contain inappropriate content.", ContentRejected),
        (400, "data_inspection_failed", "Input data may contain inappropriate content.", ContentRejected),
        (400, "Arrearage", "Access denied, please make sure your account is in good standing.", ProviderOutOfFunds),
        (401, None, None, ProviderMisconfigured),
        (402, "Arrearage", "Payment required.", ProviderOutOfFunds),
        (403, None, None, ProviderMisconfigured),
        (500, None, None, ProviderUnavailable),
        (503, None, None, ProviderUnavailable),
        (429, "Throttling.AllocationQuota", "Free allocated quota exceeded.", ProviderOutOfFunds),
    ],
)
async def test_each_error_status_becomes_the_error_that_names_it(
    fake: FakeDashScope,
    qwen: QwenClient,
    status: int,
    code: str | None,
    message: str | None,
    expected: type[ProviderError],
) -> None:
    fake.fail_next(status, code=code, message=message)

    with pytest.raises(ProviderError) as raised:
        await qwen.generate({"prompt": "a quiet harbour"})

    assert type(raised.value) is expected
    assert fake.received[0].status == status
    assert_keeps_the_key_secret(raised.value)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, ProviderBadRequest),
        (401, ProviderMisconfigured),
        (422, ContentRejected),
        (429, ProviderRateLimited),
        (500, ProviderUnavailable),
    ],
)
async def test_an_upstream_error_echoing_our_key_is_redacted_in_the_error_and_the_logs(
    fake: FakeDashScope,
    qwen: QwenClient,
    caplog: pytest.LogCaptureFixture,
    status: int,
    expected: type[ProviderError],
) -> None:
    fake.fail_next(status, message="Rejected the call.", echo_auth=True)

    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as raised:
        await qwen.generate({"prompt": "a quiet harbour"})

    assert type(raised.value) is expected
    assert fake.received[0].status == status
    if status != 401:  # a refused key is reported without DashScope's words at all
        assert "Rejected the call. (Authorization: Bearer <redacted>)" in str(raised.value)
    else:
        assert "(Authorization: Bearer <redacted>)" in caplog.text, "the operator's warning quotes it, redacted"
    assert_keeps_the_key_secret(raised.value)
    assert SECRET_KEY not in caplog.text


async def test_a_failed_task_whose_message_quotes_our_key_is_redacted(fake: FakeDashScope, qwen: QwenClient) -> None:
    fake.task_polls = 1
    fake.fail_next_task("InternalError.Algo", f"Worker saw header Bearer {SECRET_KEY} and gave up.")

    status = await qwen.task_status(await qwen.submit_generate_task({"prompt": "a storm"}))

    assert isinstance(status.error, ProviderUnavailable)
    assert "Worker saw header Bearer <redacted> and gave up." in str(status.error)
    assert_keeps_the_key_secret(status.error)


async def test_errors_on_task_calls_are_mapped_the_same_way(fake: FakeDashScope, qwen: QwenClient) -> None:
    fake.fail_next(503, endpoint="tasks")

    with pytest.raises(ProviderUnavailable):
        await qwen.task_status("t-1")


async def test_a_second_call_in_the_same_second_is_rate_limited_for_a_second(
    fake: FakeDashScope, qwen: QwenClient
) -> None:
    fake.set_rpm(60)  # DashScope derives 1 request per second from it
    await qwen.generate({"prompt": "first"})

    with pytest.raises(ProviderRateLimited) as raised:
        await qwen.generate({"prompt": "second"})

    assert "Requests rate limit exceeded" in str(raised.value)
    assert raised.value.retry_after == RATE_LIMIT_RETRY_S
    assert raised.value.retryable
    assert_keeps_the_key_secret(raised.value)


async def test_allocated_quota_exceeded_waits_longer_before_the_next_try(fake: FakeDashScope, qwen: QwenClient) -> None:
    fake.fail_next(429, code=QUOTA_CODE, message=QUOTA_MESSAGE, endpoint="image-synthesis")

    with pytest.raises(ProviderRateLimited) as raised:
        await qwen.submit_generate_task({"prompt": "x"})

    assert raised.value.retry_after == QUOTA_RETRY_S


async def test_an_answer_that_never_comes_is_unavailable_after_the_read_timeout(
    fake: FakeDashScope, http: aiohttp.ClientSession
) -> None:
    qwen = QwenClient(
        http,
        base_url=fake.base_url,
        api_key=SECRET_KEY,
        timeout=provider_timeout(connect_seconds=5.0, read_seconds=0.2),
    )
    fake.hang_next()

    with pytest.raises(ProviderUnavailable) as raised:
        await qwen.generate({"prompt": "waiting"})

    assert "did not answer in time" in str(raised.value)
    assert_keeps_the_key_secret(raised.value)


async def test_a_closed_port_is_unavailable(http: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    qwen = QwenClient(http, base_url=f"http://127.0.0.1:{port}/api/v1", api_key=SECRET_KEY)

    with pytest.raises(ProviderUnavailable) as raised:
        await qwen.generate({"prompt": "anyone there?"})

    assert_keeps_the_key_secret(raised.value)


# -- malformed 200s: FakeDashScope only answers well-formed, so a tiny upstream of our own ---


ODD_ANSWERS: dict[str, Any] = {
    "html": Response("<html>gateway</html>", 200, media_type="text/html"),
    "huge": Response(b'{"output": "' + b"x" * MAX_ANSWER_BYTES + b'"}', 200, media_type="application/json"),
    "list": JSONResponse(["not", "an", "object"]),
    "no-output": JSONResponse({"request_id": "r-1"}),
    "no-image": JSONResponse(
        {"request_id": "r-1", "output": {"choices": [{"message": {"content": [{"text": "hi"}]}}]}}
    ),
    "odd-status": JSONResponse({"request_id": "r-1", "output": {"task_id": "t", "task_status": "DREAMING"}}),
    "no-results": JSONResponse({"request_id": "r-1", "output": {"task_id": "t", "task_status": "SUCCEEDED"}}),
    "all-images-refused": JSONResponse(
        {
            "request_id": "r-1",
            "output": {
                "task_id": "t",
                "task_status": "SUCCEEDED",
                "results": [
                    {"code": "DataInspectionFailed", "message": "Output data may contain inappropriate content."}
                ],
            },
        }
    ),
}


@pytest.fixture(scope="module")
def odd_upstream() -> Iterator[str]:
    async def answer(request: Request) -> Response:
        return ODD_ANSWERS[request.path_params["kind"]]

    app = Starlette(routes=[Route("/{kind}/{rest:path}", answer, methods=["GET", "POST"])])
    with FakeServer(app) as base_url:
        yield base_url


@pytest.mark.parametrize("kind", ["html", "list", "no-output", "no-image"])
async def test_a_malformed_200_to_generate_is_unavailable(
    odd_upstream: str, http: aiohttp.ClientSession, kind: str
) -> None:
    qwen = QwenClient(http, base_url=f"{odd_upstream}/{kind}", api_key=SECRET_KEY)

    with pytest.raises(ProviderUnavailable):
        await qwen.generate({"prompt": "x"})


async def test_an_answer_too_large_to_be_json_of_an_image_is_unavailable_without_being_read_whole(
    odd_upstream: str, http: aiohttp.ClientSession
) -> None:
    qwen = QwenClient(http, base_url=f"{odd_upstream}/huge", api_key=SECRET_KEY)

    with pytest.raises(ProviderUnavailable) as raised:
        await qwen.generate({"prompt": "x"})

    assert f"more than {MAX_ANSWER_BYTES} bytes" in str(raised.value)


@pytest.mark.parametrize("kind", ["odd-status", "no-results", "no-output"])
async def test_a_malformed_task_poll_is_unavailable(odd_upstream: str, http: aiohttp.ClientSession, kind: str) -> None:
    qwen = QwenClient(http, base_url=f"{odd_upstream}/{kind}", api_key=SECRET_KEY)

    with pytest.raises(ProviderUnavailable):
        await qwen.task_status("t")


async def test_a_succeeded_task_whose_every_image_was_refused_is_a_failed_task(
    odd_upstream: str, http: aiohttp.ClientSession
) -> None:
    qwen = QwenClient(http, base_url=f"{odd_upstream}/all-images-refused", api_key=SECRET_KEY)

    status = await qwen.task_status("t")

    assert (status.status, status.finished, status.result) == ("FAILED", True, None)
    assert isinstance(status.error, ContentRejected)
