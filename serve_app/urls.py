"""Where clients fetch an asset: the CDN, a presigned S3 URL, or the app's own (signed) /files URL."""

from __future__ import annotations

import time

from fastapi import Request

from daygen.settings import Settings
from serve_app import signing
from serve_app.services import Services
from storage.objects import ObjectStore


async def build_asset_url(settings: Settings, store: ObjectStore, files_secret: bytes, api_base: str, key: str) -> str:
    """The URL for `key`; `api_base` is where this client reaches the app (for `/files` URLs)."""
    if not settings.private_assets and settings.public_base_url:
        return f"{settings.public_base_url.rstrip('/')}/{key}"
    if not store.is_local:
        return await store.presigned_url(key, settings.signed_url_ttl_seconds)
    url = f"{api_base.rstrip('/')}/files/{key}"
    if settings.private_assets:
        url += "?" + signing.signed_query(files_secret, key, time.time(), settings.signed_url_ttl_seconds)
    return url


async def asset_url(services: Services, request: Request, key: str) -> str:
    return await build_asset_url(services.settings, services.store, services.files_secret, str(request.base_url), key)
