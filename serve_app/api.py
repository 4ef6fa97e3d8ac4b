"""The FastAPI application: routers, error handlers and middleware."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from daygen.settings import Settings
from serve_app import errors
from serve_app.middleware import AccessLog, BodyLimit
from serve_app.routes import (
    admin,
    assets,
    auth,
    billing,
    compat_images,
    compat_tools,
    files,
    health,
    jobs,
    orgs,
    pages,
    providers,
    templates,
    webhooks,
    ws,
)
from serve_app.services import Services

CORS_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id"]


def create_api(settings: Settings, services: Services) -> FastAPI:
    """Built on each replica by the ingress deployment, with that replica's services."""
    app = FastAPI(
        title="daygen",
        version="0.1.0",
        description="Backend of an AI image studio: auth, templates, image jobs and credits.",
    )
    for router in (
        pages.router,
        health.router,
        auth.v1,
        auth.compat,
        templates.v1,
        templates.compat,
        jobs.v1,
        providers.v1,
        webhooks.v1,
        assets.v1,
        assets.compat,
        compat_images.compat,
        compat_tools.compat,
        billing.v1,
        billing.compat,
        orgs.v1,
        admin.v1,
        files.router,
        ws.router,
    ):
        app.include_router(router)
    errors.install(app)
    app.state.services = services
    base64_limit = -(-settings.max_upload_bytes // 3) * 4 + assets.MULTIPART_OVERHEAD
    # The per-tool routes take an image and a mask in one form; save_upload limits each file.
    tools_limit = 2 * settings.max_upload_bytes + assets.MULTIPART_OVERHEAD
    app.add_middleware(
        BodyLimit,
        limit=settings.max_json_body_bytes,
        # Uploads stream into the store, which applies DAYGEN_MAX_UPLOAD_BYTES itself.
        overrides=(
            ("/v1/assets", None),
            ("/api/upload/file", None),
            ("/api/upload/base64", base64_limit),
            ("/api/ideogram", tools_limit),
            ("/api/qwen", tools_limit),
        ),
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origin_list,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=CORS_HEADERS,
        expose_headers=["X-Request-Id", "Retry-After"],
        max_age=600,
    )
    # Serve's proxy already puts an x-request-id on every request (the client's or a new one)
    # and echoes it on the response; echoing it here too would send it twice.
    app.add_middleware(AccessLog, echo_request_id=False)
    return app
