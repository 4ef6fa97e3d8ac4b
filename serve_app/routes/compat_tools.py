"""The daygen frontend's older per-tool routes: one request runs one job and answers when it ends.

Each route maps its form (or JSON) fields onto one operation, stores the uploaded files as the
caller's assets, submits exactly like `POST /v1/jobs`, then waits for the job server-side.

Mapping (documented for the frontend):
- `POST /api/ideogram/generate` → `ideogram.generate`; JSON or multipart, with optional repeatable
  files `style_reference_images` and `character_reference_images`.
- `POST /api/ideogram/edit` → `ideogram.edit`; files `image` and `mask`.
- `POST /api/ideogram/reframe` → `ideogram.reframe`; file `image`.
- `POST /api/ideogram/replace-background` → `ideogram.replace_background`; file `image`.
- `POST /api/ideogram/upscale` → `ideogram.upscale`; file `image`.
- `POST /api/ideogram/describe` → `ideogram.describe`; file `image`, `model_version` is our
  `describe_model_version`.
- `POST /api/qwen/image` → `qwen.generate`; JSON (or form fields).
- `POST /api/qwen/image-edit` → `qwen.edit`; file `image`.

Fields are the operation's params; form values arrive as text and are read leniently ("1" is 1,
"false" is False), blank fields count as absent and unknown fields are ignored, like the rest of /api.
The params are checked before any file is stored, so a refused request stores nothing.

Answers keep the original server's shapes, with storage URLs where it had data URLs:
image routes `{dataUrls, mimeType}`, describe `{descriptions: [{text}]}`, qwen
`{dataUrl, contentType, usage: {image_count, width, height}}`. A job still running after
`?wait=` seconds (1..120, default 120) is a 504 naming the job, to be polled at
`GET /api/jobs/{id}`; a failed job answers 422 (refused content or input), 503 (our provider
account) or 502 (any other upstream failure).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile

from daygen.errors import (
    DaygenError,
    InvalidInput,
    MalformedBody,
    PayloadTooLarge,
    ServiceUnavailable,
    StillRunning,
    UnsupportedMediaType,
    UpstreamFailed,
)
from pipelines.operations import OPERATIONS, validate_request
from serve_app.deps import CurrentUser, ServicesDep, SessionDep
from serve_app.routes.assets import save_upload
from serve_app.routes.jobs import submit_job
from serve_app.schemas import Out, _storable_json
from serve_app.services import Services
from serve_app.urls import asset_url
from storage import assets as asset_queries
from storage import jobs as job_queries
from storage.models import Asset, Job, User

compat = APIRouter(prefix="/api", tags=["daygen-compatible"])

WAIT_SECONDS = 120
WaitSeconds = Annotated[
    float, Query(ge=1, le=WAIT_SECONDS, description="how long to wait for the job before answering 504")
]
CHUNK_BYTES = 64 * 1024
MAX_FILES = 8
MAX_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024
# Stands in for the uploads while the params are checked, before anything is stored.
PLACEHOLDER = str(uuid.UUID(int=0))
# What a failed job's error code means to the caller; anything else is the upstream's failure (502).
FAILED_JOB_ERRORS: dict[str, type[DaygenError]] = {
    "content_rejected": InvalidInput,
    "invalid_input": InvalidInput,
    "provider_misconfigured": ServiceUnavailable,
    "provider_out_of_funds": ServiceUnavailable,
}


@dataclass(frozen=True)
class Tool:
    operation: str
    files: tuple[str, ...] = ()  # one file each, required
    file_lists: tuple[str, ...] = ()  # any number of files each, optional
    renamed: dict[str, str] = field(default_factory=dict)  # the frontend's field name → our param
    takes_json: bool = False


GENERATE = Tool(
    "ideogram.generate", file_lists=("style_reference_images", "character_reference_images"), takes_json=True
)
EDIT = Tool("ideogram.edit", files=("image", "mask"))
REFRAME = Tool("ideogram.reframe", files=("image",))
REPLACE_BACKGROUND = Tool("ideogram.replace_background", files=("image",))
UPSCALE = Tool("ideogram.upscale", files=("image",))
DESCRIBE = Tool("ideogram.describe", files=("image",), renamed={"model_version": "describe_model_version"})
QWEN_GENERATE = Tool("qwen.generate", takes_json=True)
QWEN_EDIT = Tool("qwen.edit", files=("image",))


# -- answers --------------------------------------------------------------------------------


class ApiImages(Out):
    dataUrls: list[str]
    mimeType: str


class ApiDescription(Out):
    text: str


class ApiDescriptions(Out):
    descriptions: list[ApiDescription]


class ApiQwenUsage(Out):
    image_count: int
    width: int | None
    height: int | None


class ApiQwenImage(Out):
    dataUrl: str
    contentType: str
    usage: ApiQwenUsage


# -- reading the request --------------------------------------------------------------------


@dataclass
class ToolRequest:
    fields: dict[str, Any]
    files: dict[str, list[UploadFile]]


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _json_object(request: Request, limit: int) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"a JSON body is limited to {limit} bytes")
    try:
        value = json.loads(body)
    except ValueError:
        raise MalformedBody("the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidInput("the request body must be a JSON object")
    return value


@asynccontextmanager
async def read_tool_request(request: Request, services: Services, tool: Tool) -> AsyncIterator[ToolRequest]:
    """The body's fields and files; a form's spooled files are closed on the way out."""
    media_type = _media_type(request)
    if media_type == "application/json" and tool.takes_json:
        yield ToolRequest(await _json_object(request, services.settings.max_json_body_bytes), {})
        return
    # A form without files comes url-encoded; it is read the same way (and then misses its file).
    if media_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        wanted = "multipart/form-data or application/json" if tool.takes_json else "multipart/form-data"
        raise UnsupportedMediaType(f"send the body as {wanted}")
    form_fields: dict[str, Any] = {}
    files: dict[str, list[UploadFile]] = {}
    async with request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.setdefault(name, []).append(value)
            else:
                form_fields[name] = value
        yield ToolRequest(form_fields, files)


# -- mapping --------------------------------------------------------------------------------


def _params(tool: Tool, given: dict[str, Any]) -> dict[str, Any]:
    """The operation's params among the fields; blank ones are absent, unknown ones ignored."""
    operation = OPERATIONS[tool.operation]
    known = set(operation.params_model.model_fields) - set(operation.asset_params)
    params = {}
    for name, value in given.items():
        name = tool.renamed.get(name, name)
        if name not in known or value is None or (isinstance(value, str) and not value.strip()):
            continue
        params[name] = value
    try:
        _storable_json(params)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return params


def _uploads(tool: Tool, body: ToolRequest) -> dict[str, list[UploadFile]]:
    """The files the tool takes, by param; a missing required file is named."""
    uploads: dict[str, list[UploadFile]] = {}
    for name in tool.files:
        given = body.files.get(name, [])
        if len(given) != 1:
            problem = "is missing" if not given else "must be a single file"
            raise InvalidInput(
                f"the {name!r} file {problem}: send it as a multipart file part",
                details=[{"field": name, "message": f"one {name} file is required"}],
            )
        uploads[name] = given
    for name in tool.file_lists:
        if body.files.get(name):
            uploads[name] = body.files[name]
    return uploads


def _as_params(tool: Tool, refs: dict[str, list[str]]) -> dict[str, Any]:
    return {name: ids if name in tool.file_lists else ids[0] for name, ids in refs.items()}


def check_params(tool: Tool, params: dict[str, Any], uploads: dict[str, list[UploadFile]]) -> None:
    """Validate with placeholder ids for the files, naming the fields as the frontend sent them."""
    placeholders = {name: [PLACEHOLDER] * len(files) for name, files in uploads.items()}
    try:
        validate_request(tool.operation, {**params, **_as_params(tool, placeholders)})
    except InvalidInput as exc:
        original = {ours: theirs for theirs, ours in tool.renamed.items()}
        problems = []
        for detail in exc.details or []:
            name = detail["field"].removeprefix("params.")
            problems.append(f"{original.get(name, name)}: {detail['message']}")
        message = "invalid request: " + "; ".join(problems) if problems else exc.message
        raise InvalidInput(message, details=exc.details) from None


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


async def run_tool(
    tool: Tool, request: Request, user: User, services: Services, session: AsyncSession, wait: float
) -> tuple[Job, list[Asset]]:
    """Check, store the uploads, submit, wait: the finished job and its output assets."""
    async with read_tool_request(request, services, tool) as body:
        params = _params(tool, body.fields)
        uploads = _uploads(tool, body)
        check_params(tool, params, uploads)
        stored: list[Asset] = []
        try:
            refs: dict[str, list[str]] = {}
            for name, files in uploads.items():
                for upload in files:
                    stored.append(await save_upload(services, user, _chunks(upload)))
                    refs.setdefault(name, []).append(str(stored[-1].id))
            job_id = await submit_job(services, session, user, tool.operation, {**params, **_as_params(tool, refs)})
        except DaygenError:
            # A refused request keeps nothing: the uploads it stored go again.
            for asset in stored:
                await asset_queries.delete_asset(services.sessions, services.store, user.id, asset.id)
            raise
    request.state.job_id = str(job_id)
    async with (await services.event_hub()).watching(user.id, job_id) as watch:
        job = await job_queries.get_job(session, user.id, job_id)
        assert job is not None, "the job was submitted by this user"
        if job.status not in job_queries.TERMINAL:
            await session.commit()  # the database connection goes back to the pool while it waits
            await watch.wait_for_end(wait)
            await session.refresh(job)
    if job.status not in job_queries.TERMINAL:
        raise StillRunning(f"job {job_id} is still {job.status} after {wait:g} s; poll GET /api/jobs/{job_id}")
    if job.status != "succeeded":
        message = job.error_message or job.error_code or f"job {job_id} was {job.status}"
        error = FAILED_JOB_ERRORS.get(job.error_code or "")
        if error is not None:
            raise error(message)
        raise UpstreamFailed(job.error_code or "failed", message)
    return job, await job_queries.job_assets(session, job.id)


async def _images(
    tool: Tool, request: Request, user: User, services: Services, session: AsyncSession, wait: float
) -> ApiImages:
    _, assets = await run_tool(tool, request, user, services, session, wait)
    return ApiImages(
        dataUrls=[await asset_url(services, request, a.key) for a in assets],
        mimeType=assets[0].content_type if assets else "image/png",
    )


async def _qwen_image(
    tool: Tool, request: Request, user: User, services: Services, session: AsyncSession, wait: float
) -> ApiQwenImage:
    job, assets = await run_tool(tool, request, user, services, session, wait)
    if not assets:
        raise UpstreamFailed("no_image", f"job {job.id} ended without an image")
    first = assets[0]
    return ApiQwenImage(
        dataUrl=await asset_url(services, request, first.key),
        contentType=first.content_type,
        usage=ApiQwenUsage(image_count=len(assets), width=first.width, height=first.height),
    )


# -- routes ---------------------------------------------------------------------------------


@compat.post("/ideogram/generate")
async def ideogram_generate(
    request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep, wait: WaitSeconds = WAIT_SECONDS
) -> ApiImages:
    return await _images(GENERATE, request, user, services, session, wait)


@compat.post("/ideogram/edit")
async def ideogram_edit(
    request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep, wait: WaitSeconds = WAIT_SECONDS
) -> ApiImages:
    return await _images(EDIT, request, user, services, session, wait)


@compat.post("/ideogram/reframe")
async def ideogram_reframe(
    request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep, wait: WaitSeconds = WAIT_SECONDS
) -> ApiImages:
    return await _images(REFRAME, request, user, services, session, wait)


@compat.post("/ideogram/replace-background")
async def ideogram_replace_background(
    request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep, wait: WaitSeconds = WAIT_SECONDS
) -> ApiImages:
    return await _images(REPLACE_BACKGROUND, request, user, services, session, wait)


@compat.post("/ideogram/upscale")
async def ideogram_upscale(
    request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep, wait: WaitSeconds = WAIT_SECONDS
) -> ApiImages:
    return await _images(UPSCALE, request, user, services, session, wait)


@compat.post("/ideogram/describe")
async def ideogram_describe(
    request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep, wait: WaitSeconds = WAIT_SECONDS
) -> ApiDescriptions:
    job, _ = await run_tool(DESCRIBE, request, user, services, session, wait)
    texts = (job.result or {}).get("texts", [])
    return ApiDescriptions(descriptions=[ApiDescription(text=t) for t in texts])


@compat.post("/qwen/image")
async def qwen_image(
    request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep, wait: WaitSeconds = WAIT_SECONDS
) -> ApiQwenImage:
    return await _qwen_image(QWEN_GENERATE, request, user, services, session, wait)


@compat.post("/qwen/image-edit")
async def qwen_image_edit(
    request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep, wait: WaitSeconds = WAIT_SECONDS
) -> ApiQwenImage:
    return await _qwen_image(QWEN_EDIT, request, user, services, session, wait)
