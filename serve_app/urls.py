"""Where clients fetch an asset: the CDN, a presigned S3 URL, or the app's own (signed) /files URL."""

from __future__ import annotations

import time

from fastapi import Request

from serve_app import signing
from serve_app.services import Services


async def asset_url(services: Services, request: Request, key: str) -> str:
    settings = services.settings
    store = services.store
    if not settings.private_assets and settings.public_base_url:
        return f"{settings.public_base_url.rstrip('/')}/{key}"
    if not store.is_local:
        return await store.presigned_url(key, settings.signed_url_ttl_seconds)
    url = f"{str(request.base_url).rstrip('/')}/files/{key}"
    if settings.private_assets:
        url += "?" + signing.signed_query(services.files_secret, key, time.time(), settings.signed_url_ttl_seconds)
    return url
