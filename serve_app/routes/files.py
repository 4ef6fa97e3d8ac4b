"""Serves `file://` storage the way a CDN would: immutable content-addressed objects, ETags,
conditional requests and byte ranges, streamed in constant memory."""

from __future__ import annotations

import time
from email.utils import format_datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from daygen.errors import NotFound
from serve_app import byte_ranges, signing
from serve_app.deps import ServicesDep
from serve_app.errors import error_response
from storage.objects import CACHE_FOREVER, CONTENT_TYPES

router = APIRouter(tags=["files"])


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates


@router.api_route("/files/{key:path}", methods=["GET", "HEAD"], response_class=StreamingResponse)
async def get_file(
    key: str,
    request: Request,
    services: ServicesDep,
    expires: Annotated[int | None, Query()] = None,
    signature: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    sha, _, ext = key.rpartition("/")[2].partition(".")
    if not services.store.is_local or not key.startswith("assets/") or ext not in CONTENT_TYPES:
        raise NotFound("file not found")
    settings = services.settings
    if settings.private_assets:
        signing.check(services.files_secret, key, expires, signature, time.time())
    try:
        info = await services.store.info(key)
    except (FileNotFoundError, ValueError):
        raise NotFound("file not found") from None

    etag = f'"{sha}"'
    headers = {
        "Cache-Control": f"private, max-age={settings.signed_url_ttl_seconds}"
        if settings.private_assets
        else CACHE_FOREVER,
        "ETag": etag,
        "Last-Modified": format_datetime(info.last_modified, usegmt=True),
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
    }
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    try:
        wanted = byte_ranges.parse(request.headers.get("range"), info.size)
    except byte_ranges.Unsatisfiable:
        return error_response(
            request,
            416,
            "range_not_satisfiable",
            f"the file has {info.size} bytes",
            headers={**headers, "Content-Range": f"bytes */{info.size}"},
        )
    media_type = CONTENT_TYPES[ext]
    if wanted is None:
        start, length, status = 0, info.size, 200
    else:
        start, length, status = wanted.start, wanted.length, 206
        headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{info.size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    body = services.store.read_chunks(key, start=start, length=length)
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=headers)
