"""The daygen frontend's generation calls: `POST /api/image/{provider}` and the job status it polls.

Each request is mapped onto one of our operations and submitted exactly like `POST /v1/jobs`
(validation, input resolution, credit reservation, queueing). Input images are named by our
own asset ids or by our own asset URLs; a `data:` URL is stored as a new upload of the caller.

Mapping (documented for the frontend):
- ideogram: `jobType` IMAGE_RESIZE → `ideogram.reframe` (needs `resolution`); RECREATE_IMAGE →
  `ideogram.remix`; a `mask` (or IMAGE_EDIT) → `ideogram.edit` with image = `imageUrl` or
  `references[0]`; otherwise `ideogram.generate`, with `references` as style references.
  An `imageUrl` alone (no mask, no jobType) is a remix.
- qwen: an image (`imageUrl` or `references[0]`) → `qwen.edit`, else `qwen.generate`; a mask is
  ignored, since Qwen's edit has none.
- Options: `providerOptions` merged with the unknown top-level keys (top-level wins); only the
  keys the operation's params know are passed on, the rest are ignored like any unknown /api field.
- The answer is a 202 with `{jobId}`.

`GET /api/jobs?type=` filters by provider (`ideogram`) or operation (`ideogram.edit`); any other
value (such as the original's `IMAGE_GENERATION`) does not filter, since every job here is an image job.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator
from sqlalchemy.ext.asyncio import AsyncSession

from daygen.errors import InvalidInput, NotFound
from pipelines.chains import final_image
from pipelines.operations import OPERATIONS
from serve_app.deps import CurrentUser, ServicesDep, SessionDep, require_json
from serve_app.pagination import split_page
from serve_app.routes.assets import decode_base64, save_bytes
from serve_app.routes.jobs import submit_job
from serve_app.schemas import NoNul, Out, _storable_json
from serve_app.services import Services
from serve_app.urls import asset_url
from storage import assets as asset_queries
from storage import jobs as job_queries
from storage.models import Job, User

compat = APIRouter(prefix="/api", tags=["daygen-compatible"])

PROVIDERS = ("ideogram", "qwen")
ASSET_KEY = re.compile(r"(?:^|/)(assets/[0-9a-f]{2}/[0-9a-f]{64}\.[a-z0-9]{1,8})$")
STATUS = {
    "queued": "PENDING",
    "running": "PROCESSING",
    "succeeded": "COMPLETED",
    "failed": "FAILED",
    "canceled": "CANCELLED",
}
ImageRef = Annotated[str, StringConstraints(min_length=1), NoNul]


# -- bodies ---------------------------------------------------------------------------------


class ApiImageIn(BaseModel):
    """Lenient: unknown top-level keys are provider options."""

    model_config = ConfigDict(extra="allow")

    prompt: Annotated[str, NoNul]
    model: str | None = None
    providerOptions: dict[str, Any] | None = None
    references: list[ImageRef] | None = None
    mask: ImageRef | None = None
    imageUrl: ImageRef | None = None
    jobType: Literal["IMAGE_EDIT", "IMAGE_RESIZE", "RECREATE_IMAGE"] | None = None

    @model_validator(mode="after")
    def _storable(self) -> ApiImageIn:
        _storable_json(self.options())
        return self

    def options(self) -> dict[str, Any]:
        return {**(self.providerOptions or {}), **(self.model_extra or {})}


class ApiImageAccepted(Out):
    jobId: uuid.UUID


class ApiJobMetadata(Out):
    operation: str
    params: dict[str, Any]
    assets: list[str]
    text: str | None = None


class ApiJob(Out):
    id: uuid.UUID
    status: Literal["PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]
    progress: int
    resultUrl: str | None
    error: str | None
    createdAt: datetime
    completedAt: datetime | None
    metadata: ApiJobMetadata


class ApiJobPage(Out):
    jobs: list[ApiJob]
    nextCursor: str | None
    hasNextPage: bool


# -- input images ---------------------------------------------------------------------------


async def resolve_image(services: Services, session: AsyncSession, user: User, value: str, field: str) -> str:
    """An asset id, one of our asset URLs, or a data URL (stored as an upload) → an asset id."""
    value = value.strip()
    try:
        return str(uuid.UUID(value))
    except ValueError:
        pass
    if value.startswith("data:"):
        return str((await save_bytes(services, user, decode_base64(value, field))).id)
    match = ASSET_KEY.search(urlsplit(value).path)
    if match is None:
        raise InvalidInput(
            f"{field} must be an asset id, an asset URL of this service, or a data URL",
            details=[{"field": field, "message": "not an asset reference"}],
        )
    asset_id = await asset_queries.asset_id_for_key(session, user.id, match.group(1))
    if asset_id is None:
        raise NotFound(f"{field}: image not found", details=[{"field": field, "message": "no such asset"}])
    return str(asset_id)


# -- mapping ----------------------------------------------------------------------------------


def _operation(provider: str, body: ApiImageIn) -> str:
    has_image = bool(body.imageUrl or body.references)
    if provider == "qwen":
        return "qwen.edit" if has_image else "qwen.generate"
    if body.jobType == "IMAGE_RESIZE":
        return "ideogram.reframe"
    if body.jobType == "RECREATE_IMAGE":
        return "ideogram.remix"
    if body.mask is not None or body.jobType == "IMAGE_EDIT":
        return "ideogram.edit"
    if body.imageUrl:
        return "ideogram.remix"
    return "ideogram.generate"


async def build_params(
    services: Services, session: AsyncSession, user: User, provider: str, body: ApiImageIn
) -> tuple[str, dict[str, Any]]:
    operation_name = _operation(provider, body)
    operation = OPERATIONS[operation_name]
    known = set(operation.params_model.model_fields)
    assets = set(operation.asset_params) | {"image", "mask"}
    params = {k: v for k, v in body.options().items() if k in known and k not in assets and k != "prompt"}
    if "prompt" in known:
        params["prompt"] = body.prompt
    if "image" in known:
        source = body.imageUrl or (body.references[0] if body.references else None)
        field = "imageUrl" if body.imageUrl else "references.0"
        if source is None:
            raise InvalidInput(
                f"{operation_name} needs an image: give imageUrl or references",
                details=[{"field": "references", "message": "an image is required"}],
            )
        params["image"] = await resolve_image(services, session, user, source, field)
    if "mask" in known:
        if body.mask is None:
            raise InvalidInput(
                "an edit needs a mask (black marks the area to edit)",
                details=[{"field": "mask", "message": "a mask is required"}],
            )
        params["mask"] = await resolve_image(services, session, user, body.mask, "mask")
    if operation_name == "ideogram.generate" and body.references:
        params["style_reference_images"] = [
            await resolve_image(services, session, user, ref, f"references.{i}")
            for i, ref in enumerate(body.references)
        ]
    return operation_name, params


@compat.post("/image/{provider}", status_code=status.HTTP_202_ACCEPTED, dependencies=[Depends(require_json)])
async def generate_image(
    provider: str, body: ApiImageIn, request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> ApiImageAccepted:
    """Queue a generation or edit; poll `GET /api/jobs/{jobId}` (or use `/v1/jobs/{id}?wait=`)."""
    if provider not in PROVIDERS:
        raise NotFound(f"unknown provider {provider!r}; use one of: " + ", ".join(PROVIDERS))
    operation_name, params = await build_params(services, session, user, provider, body)
    job_id = await submit_job(services, session, user, operation_name, params)
    request.state.job_id = str(job_id)
    return ApiImageAccepted(jobId=job_id)


# -- job status -----------------------------------------------------------------------------


async def api_job(services: Services, request: Request, session: AsyncSession, job: Job) -> ApiJob:
    urls: dict[str, str] = {}
    if job.status == "succeeded":
        urls = {
            str(a.id): await asset_url(services, request, a.key) for a in await job_queries.job_assets(session, job.id)
        }
    # A chain's result is what its last image-making step made, not the first image along the way
    # (if the user deleted that one, the latest image left).
    final = final_image(job.result)
    error = (job.error_message or job.error_code) if job.status in ("failed", "canceled") else None
    return ApiJob(
        id=job.id,
        status=STATUS.get(job.status, "PENDING"),
        progress=job.progress,
        resultUrl=urls.get(final or "") or next(reversed(urls.values()), None),
        error=error or None,
        createdAt=job.created_at,
        completedAt=job.completed_at,
        metadata=ApiJobMetadata(
            operation=job.operation, params=job.params, assets=list(urls.values()), text=(job.result or {}).get("text")
        ),
    )


def _operations_of(kind: str | None) -> list[str] | None:
    """`type` names an operation or a provider; anything else filters nothing."""
    if kind in OPERATIONS:
        return [kind]
    named = [name for name, op in OPERATIONS.items() if op.provider == kind]
    return named or None


@compat.get("/jobs")
async def list_jobs(
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[uuid.UUID | None, Query()] = None,
    kind: Annotated[
        str | None, Query(alias="type", description="a provider (ideogram) or an operation (ideogram.edit)")
    ] = None,
) -> ApiJobPage:
    kind = kind.strip().lower() if kind else None
    rows = await job_queries.list_jobs(
        session, user.id, limit=limit + 1, before=cursor, operations=_operations_of(kind)
    )
    page, next_cursor = split_page(rows, limit)
    jobs = [await api_job(services, request, session, j) for j in page]
    return ApiJobPage(jobs=jobs, nextCursor=next_cursor, hasNextPage=next_cursor is not None)


@compat.get("/jobs/{jobId}")
async def get_job(
    jobId: uuid.UUID, request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> ApiJob:
    request.state.job_id = str(jobId)
    job = await job_queries.get_job(session, user.id, jobId)
    if job is None:
        raise NotFound("job not found")
    return await api_job(services, request, session, job)
