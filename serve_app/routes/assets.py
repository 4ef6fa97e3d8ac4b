"""Uploads and the asset library: streamed into the object store, sniffed, verified, owner-scoped."""

from __future__ import annotations

import binascii
import uuid
from base64 import b64decode
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status

from daygen.errors import InvalidInput, NotFound, PayloadTooLarge
from pipelines.chains import first_prompt, made_by
from serve_app import multipart
from serve_app.deps import CurrentUser, ServicesDep, SessionDep, require_json
from serve_app.pagination import split_page
from serve_app.schemas import ApiBase64Upload, ApiFile, ApiFilePage, ApiUploaded, AssetOut, AssetPage
from serve_app.services import Services
from serve_app.urls import asset_url
from storage import assets as queries
from storage.models import Asset, User

v1 = APIRouter(prefix="/v1/assets", tags=["assets"])
compat = APIRouter(prefix="/api", tags=["daygen-compatible"])

MULTIPART_OVERHEAD = 64 * 1024
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


async def asset_out(services: Services, request: Request, asset: Asset) -> AssetOut:
    return AssetOut(
        id=asset.id,
        url=await asset_url(services, request, asset.key),
        contentType=asset.content_type,
        size=asset.size,
        sha256=asset.sha256,
        width=asset.width,
        height=asset.height,
        source=asset.source,
        jobId=asset.job_id,
        expiresAt=asset.expires_at,
        createdAt=asset.created_at,
    )


def _file_chunks(request: Request, multipart_only: bool = False) -> AsyncIterator[bytes]:
    """The uploaded file's bytes: the `file` part of a multipart body, or the raw body."""
    content_type = request.headers.get("content-type", "")
    limit = request.app.state.services.settings.max_upload_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the upload is over {limit - MULTIPART_OVERHEAD} bytes")
    if content_type.lower().startswith("multipart/"):
        return multipart.file_field(request.stream(), content_type)
    if multipart_only:
        raise InvalidInput("send the file as multipart/form-data with a 'file' part")
    return request.stream()


async def save_upload(services: Services, user: User, chunks: AsyncIterator[bytes]) -> Asset:
    settings = services.settings
    ttl = settings.asset_ttl_seconds
    return await queries.save_image(
        services.sessions,
        services.store,
        chunks,
        owner_id=user.id,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl) if ttl else None,
    )


@v1.post("", status_code=status.HTTP_201_CREATED, openapi_extra=UPLOAD_BODY)
async def upload(request: Request, user: CurrentUser, services: ServicesDep) -> AssetOut:
    """Upload a PNG, JPEG or WebP as the raw body or as the `file` part of a multipart form."""
    asset = await save_upload(services, user, _file_chunks(request))
    return await asset_out(services, request, asset)


@v1.get("")
async def list_assets(
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[uuid.UUID | None, Query()] = None,
    source: Annotated[Literal["upload", "job"] | None, Query()] = None,
    jobId: Annotated[uuid.UUID | None, Query()] = None,
) -> AssetPage:
    rows = await queries.list_assets(session, user.id, limit=limit + 1, before=cursor, source=source, job_id=jobId)
    page, next_cursor = split_page(rows, limit)
    return AssetPage(items=[await asset_out(services, request, a) for a in page], nextCursor=next_cursor)


@v1.get("/{asset_id}")
async def get_asset(
    asset_id: uuid.UUID, request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> AssetOut:
    asset = await queries.get_asset(session, user.id, asset_id)
    if asset is None:
        raise NotFound("asset not found")
    return await asset_out(services, request, asset)


@v1.delete("/{asset_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_asset(asset_id: uuid.UUID, user: CurrentUser, services: ServicesDep) -> Response:
    if not await queries.delete_asset(services.sessions, services.store, user.id, asset_id):
        raise NotFound("asset not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _uploaded(services: Services, request: Request, asset: Asset) -> ApiUploaded:
    return ApiUploaded(
        id=asset.id,
        url=await asset_url(services, request, asset.key),
        key=asset.key,
        mimeType=asset.content_type,
        size=asset.size,
        width=asset.width,
        height=asset.height,
    )


@compat.post("/upload/file", status_code=status.HTTP_201_CREATED, openapi_extra=UPLOAD_BODY)
async def compat_upload_file(request: Request, user: CurrentUser, services: ServicesDep) -> ApiUploaded:
    asset = await save_upload(services, user, _file_chunks(request, multipart_only=True))
    return await _uploaded(services, request, asset)


def decode_base64(value: str, field: str) -> bytes:
    """Raw base64 or a `data:<type>;base64,` URL: the frontend's routes are the one place such input is accepted."""
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InvalidInput(f"{field} is a data URL without base64 content", details=[{"field": field}])
    try:
        return b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"{field} is not valid base64", details=[{"field": field, "message": "not base64"}]
        ) from None


async def save_bytes(services: Services, user: User, data: bytes) -> Asset:
    """Store decoded bytes as an upload, with the same checks as a streamed one."""

    async def one() -> AsyncIterator[bytes]:
        yield data

    return await save_upload(services, user, one())


@compat.post("/upload/base64", status_code=status.HTTP_201_CREATED, dependencies=[Depends(require_json)])
async def compat_upload_base64(
    body: ApiBase64Upload, request: Request, user: CurrentUser, services: ServicesDep
) -> ApiUploaded:
    asset = await save_bytes(services, user, decode_base64(body.base64Data, "base64Data"))
    return await _uploaded(services, request, asset)


@compat.get("/r2files")
async def compat_files(
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[uuid.UUID | None, Query()] = None,
) -> ApiFilePage:
    """The gallery: every upload and job output of the user, newest first."""
    page, next_cursor = split_page(await queries.list_assets(session, user.id, limit=limit + 1, before=cursor), limit)
    origins = await queries.job_origins(session, {a.job_id for a in page if a.job_id is not None})
    items = []
    for asset in page:
        origin = origins.get(asset.job_id) if asset.job_id else None
        # A chain's image shows the step that made it and the chain's prompt, not "pipeline" and none.
        operation = made_by(origin.operation, origin.result, str(asset.id)) if origin else None
        prompt = first_prompt(origin.operation, origin.params) if origin else None
        items.append(
            ApiFile(
                id=asset.id,
                fileName=asset.key.rsplit("/", 1)[-1],
                fileUrl=await asset_url(services, request, asset.key),
                fileSize=asset.size,
                mimeType=asset.content_type,
                prompt=prompt,
                model=operation,
                jobId=asset.job_id,
                isPublic=not services.settings.private_assets,
                width=asset.width,
                height=asset.height,
                createdAt=asset.created_at,
                updatedAt=asset.created_at,
            )
        )
    return ApiFilePage(
        items=items,
        totalCount=await queries.count_assets(session, user.id),
        nextCursor=next_cursor,
    )


@compat.delete("/r2files/{asset_id}", status_code=status.HTTP_204_NO_CONTENT)
async def compat_delete_file(asset_id: uuid.UUID, user: CurrentUser, services: ServicesDep) -> Response:
    if not await queries.delete_asset(services.sessions, services.store, user.id, asset_id):
        raise NotFound("file not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
