"""Serves `file://` storage the way a CDN would: immutable, content-addressed objects."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from daygen.errors import NotFound
from serve_app.deps import ServicesDep
from storage.objects import CACHE_FOREVER, EXTENSIONS

router = APIRouter(tags=["files"])
CONTENT_TYPES = {ext: ctype for ctype, ext in EXTENSIONS.items()}


@router.get("/files/{key:path}", response_class=StreamingResponse)
async def get_file(key: str, services: ServicesDep) -> StreamingResponse:
    name = key.rsplit("/", 1)[-1]
    sha, _, ext = name.partition(".")
    if not services.store.is_local or not key.startswith("assets/") or ext not in CONTENT_TYPES:
        raise NotFound("file not found")
    try:
        size = await services.store.size(key)
    except (FileNotFoundError, ValueError):
        raise NotFound("file not found") from None
    headers = {
        "Cache-Control": CACHE_FOREVER,
        "ETag": f'"{sha}"',
        "Content-Length": str(size),
        "X-Content-Type-Options": "nosniff",
    }
    return StreamingResponse(services.store.read_chunks(key), media_type=CONTENT_TYPES[ext], headers=headers)
