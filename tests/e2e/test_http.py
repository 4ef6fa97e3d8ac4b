"""The HTTP surface around the API: health, readiness, files, pages, unknown routes."""

from __future__ import annotations


async def test_health_and_readiness_report_every_dependency(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok", "objectStore": "ok"}}


async def test_files_outside_the_asset_space_are_404(client):
    for path in (
        "/files/assets/00/" + "0" * 64 + ".png",
        "/files/assets/../jwt_secret",
        "/files/tmp/whatever",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/assets/ab/abc.exe",
    ):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


async def test_pages_docs_and_openapi_are_served(client):
    studio = await client.get("/studio")
    assert studio.status_code == 200 and "offline engine" in studio.text
    assert (await client.get("/docs")).status_code == 200
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/v1/jobs", "/v1/auth/signup", "/api/auth/me", "/v1/templates"} <= set(paths)


async def test_unknown_routes_and_methods_answer_json_errors(client):
    missing = await client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong_method = await client.delete("/v1/jobs")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    compat_missing = await client.get("/api/nothing-here")
    assert compat_missing.json() == {"statusCode": 404, "message": "Not Found", "error": "Not Found"}
