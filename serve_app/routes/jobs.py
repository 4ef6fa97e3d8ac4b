"""Submitting jobs and reading them back; the dispatcher does the work."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from daygen.errors import InsufficientCredits, NotFound
from daygen.ids import uuid7
from pipelines.operations import check_inputs, validate_request
from serve_app.deps import CurrentUser, ServicesDep, SessionDep, require_json
from serve_app.pagination import split_page
from serve_app.routes.assets import asset_out
from serve_app.schemas import JobAccepted, JobCreate, JobError, JobOut, JobPage, JobResult
from serve_app.services import Services
from storage import jobs as queries
from storage.assets import resolve_inputs
from storage.models import Job, User

v1 = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_json)])

MAX_WAIT_SECONDS = 30


async def job_out(services: Services, request: Request, session: SessionDep, job: Job) -> JobOut:
    result = None
    if job.status == "succeeded":
        assets = await queries.job_assets(session, job.id)
        result = JobResult(
            assets=[await asset_out(services, request, a) for a in assets], text=(job.result or {}).get("text")
        )
    error = JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
    return JobOut(
        id=job.id,
        operation=job.operation,
        status=job.status,
        progress=job.progress,
        params=job.params,
        cost=float(job.cost),
        attempt=job.attempt,
        error=error,
        result=result,
        createdAt=job.created_at,
        startedAt=job.started_at,
        completedAt=job.completed_at,
    )


async def submit_job(
    services: Services, session: SessionDep, user: User, operation_name: str, raw_params: dict
) -> uuid.UUID:
    """Validate, resolve input assets, reserve the price, queue: every way of submitting a job."""
    operation, params = validate_request(operation_name, raw_params)
    refs = operation.asset_refs(params)
    inputs = await resolve_inputs(session, user.id, refs) if refs else None
    if inputs:
        check_inputs(operation, params, inputs)
    job_id = uuid7()
    cost = operation.price(params)
    answer = await services.ledger.reserve.remote(user.id, job_id, cost)
    if not answer["accepted"]:
        raise InsufficientCredits(
            "not enough credits for this job",
            details={"required": answer["required"], "balance": answer["balance"]},
        )
    try:
        await queries.insert_job(
            session,
            job_id=job_id,
            owner_id=user.id,
            operation=operation.name,
            params=params,
            cost=cost,
            inputs=inputs,
        )
    except BaseException:
        await services.ledger.settle.remote(job_id, "release")
        raise
    await services.events.publish(job_id, "job.queued", {"status": "queued"})
    services.dispatcher.wake.remote()
    return job_id


@v1.post("", status_code=status.HTTP_202_ACCEPTED)
async def submit(
    body: JobCreate, request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> JobAccepted:
    """Validate, reserve the credits, queue; the answer comes before any work starts."""
    job_id = await submit_job(services, session, user, body.operation, body.params)
    request.state.job_id = str(job_id)
    return JobAccepted(jobId=job_id, status="queued")


@v1.get("")
async def list_jobs(
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[uuid.UUID | None, Query()] = None,
) -> JobPage:
    page, next_cursor = split_page(await queries.list_jobs(session, user.id, limit=limit + 1, before=cursor), limit)
    return JobPage(items=[await job_out(services, request, session, j) for j in page], nextCursor=next_cursor)


@v1.get("/{job_id}")
async def get_job(
    job_id: uuid.UUID,
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    session: SessionDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS, description="seconds to wait for the job to end")] = 0,
) -> JobOut:
    """With `wait`, answers as soon as the job ends (or when the wait is over), instead of being polled."""
    request.state.job_id = str(job_id)
    since = await services.events.last_id(job_id) if wait else None
    job = await queries.get_job(session, user.id, job_id)
    if job is None:
        raise NotFound("job not found")
    if since is not None and job.status not in queries.TERMINAL:
        await services.events.wait_for_end(job_id, since, wait)
        await session.refresh(job)
    return await job_out(services, request, session, job)
