"""The JSON access log, on a tiny app in-process."""

from __future__ import annotations

import json
import logging

import httpx
from fastapi import FastAPI, Request

from daygen.logs import JsonFormatter
from serve_app import errors
from serve_app.middleware import AccessLog, BodyLimit


def tiny_app() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.post("/v1/things/{thing_id}")
    async def thing(thing_id: str, request: Request) -> dict:
        request.state.user_id = "user-1"
        request.state.job_id = thing_id
        return {"size": len(await request.body())}

    app.add_middleware(AccessLog)
    return app


async def test_each_request_logs_one_json_line_with_ids_route_status_and_latency(caplog):
    transport = httpx.ASGITransport(app=tiny_app())
    with caplog.at_level(logging.INFO, logger="daygen.access"):
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.post("/v1/things/job-9", content=b"x" * 10, headers={"x-request-id": "req-123"})
    assert response.headers["x-request-id"] == "req-123"
    [record] = [r for r in caplog.records if r.name == "daygen.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-123"
    assert line["route"] == "/v1/things/{thing_id}"
    assert (line["status"], line["user_id"], line["job_id"]) == (200, "user-1", "job-9")
    assert isinstance(line["latency_ms"], float)


async def test_a_request_id_is_made_when_none_is_sent():
    transport = httpx.ASGITransport(app=tiny_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        first = await client.post("/v1/things/a")
        second = await client.post("/v1/things/b")
    assert len(first.headers["x-request-id"]) == 32
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_streamed_body_over_the_limit_is_a_json_413_without_a_declared_length(caplog):
    app = tiny_app()
    app.add_middleware(BodyLimit, limit=1000)

    async def chunks():
        for _ in range(50):
            yield b"y" * 100

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        response = await client.post("/v1/things/a", content=chunks())
        small = await client.post("/v1/things/a", content=b"z" * 1000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert small.json() == {"size": 1000}
