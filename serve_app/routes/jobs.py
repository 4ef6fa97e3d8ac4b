"""Submitting jobs and reading them back; the dispatcher does the work."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from daygen.errors import InsufficientCredits, InvalidInput, NotFound
from daygen.ids import uuid7
from pipelines.chains import PIPELINE, job_steps, prefixed, validate_steps
from pipelines.operations import OPERATIONS, check_inputs, validate_request
from serve_app.deps import CurrentUser, ServicesDep, SessionDep, require_json
from serve_app.pagination import split_page
from serve_app.routes.assets import asset_out
from serve_app.schemas import JobAccepted, JobCreate, JobError, JobOut, JobPage, JobResult, JobStepOut
from serve_app.services import Services
from storage import jobs as queries
from storage.assets import resolve_inputs
from storage.models import Job, User

v1 = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_json)])

MAX_WAIT_SECONDS = 30


def _step_status(job: Job, index: int) -> str:
    if index < job.steps_done:
        return "succeeded"
    if index == job.steps_done:
        return job.status
    return "canceled" if job.status in queries.TERMINAL else "queued"


async def job_out(services: Services, request: Request, session: SessionDep, job: Job) -> JobOut:
    assets = {str(a.id): await asset_out(services, request, a) for a in await queries.job_assets(session, job.id)}
    done = (job.result or {}).get("steps", [])
    steps = []
    for index, step in enumerate(job_steps(job.operation, job.params, job.cost, None)):
        outputs = done[index] if index < len(done) else {}
        texts = outputs.get("texts") or []
        steps.append(
            JobStepOut(
                operation=step.operation,
                input=step.input,
                status=_step_status(job, index),
                cost=float(step.cost),
                assets=[assets[i] for i in outputs.get("assetIds", []) if i in assets],
                text="\n\n".join(texts) if texts else None,
            )
        )
    result = None
    if job.status == "succeeded":
        result = JobResult(assets=list(assets.values()), text=(job.result or {}).get("text"))
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
        steps=steps,
        createdAt=job.created_at,
        startedAt=job.started_at,
        completedAt=job.completed_at,
    )


async def _queue(
    services: Services, session: SessionDep, user: User, operation: str, params: dict, cost: Decimal, inputs
) -> uuid.UUID:
    """Reserve the price, then insert the job; the reservation is given back if the insert fails."""
    job_id = uuid7()
    answer = await services.ledger.reserve.remote(user.id, job_id, cost)
    if not answer["accepted"]:
        raise InsufficientCredits(
            "not enough credits for this job",
            details={"required": answer["required"], "balance": answer["balance"]},
        )
    try:
        await queries.insert_job(
            session, job_id=job_id, owner_id=user.id, operation=operation, params=params, cost=cost, inputs=inputs
        )
    except BaseException:
        await services.ledger.settle.remote(job_id, Decimal(0))
        raise
    await services.events.publish(job_id, "job.queued", {"status": "queued"})
    services.dispatcher.wake.remote()
    return job_id


async def submit_job(
    services: Services, session: SessionDep, user: User, operation_name: str, raw_params: dict
) -> uuid.UUID:
    """Validate, resolve input assets, reserve the price, queue: every way of submitting one operation."""
    operation, params = validate_request(operation_name, raw_params)
    refs = operation.asset_refs(params)
    inputs = await resolve_inputs(session, user.id, refs) if refs else None
    if inputs:
        check_inputs(operation, params, inputs)
    return await _queue(services, session, user, operation.name, params, operation.price(params), inputs)


async def submit_chain(services: Services, session: SessionDep, user: User, raw_steps: list[dict]) -> uuid.UUID:
    """The same for a chain: every step is checked, and the whole price reserved, before anything runs."""
    steps = validate_steps(raw_steps)
    inputs: dict[str, dict] = {}
    for index, step in enumerate(steps):
        if step.refs:
            try:
                resolved = await resolve_inputs(session, user.id, step.refs)
                check_inputs(OPERATIONS[step.operation], step.params, resolved)
            except (InvalidInput, NotFound) as exc:
                raise prefixed(exc, f"steps.{index}") from None
            inputs[str(index)] = resolved
    cost = sum((s.cost for s in steps), Decimal(0))
    params = {"steps": [s.stored() for s in steps]}
    return await _queue(services, session, user, PIPELINE, params, cost, inputs or None)


@v1.post("", status_code=status.HTTP_202_ACCEPTED)
async def submit(
    body: JobCreate, request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> JobAccepted:
    """Validate, reserve the credits, queue; the answer comes before any work starts."""
    if problem := body.shape_problem():
        raise InvalidInput(problem[1], details=[{"field": problem[0], "message": problem[1]}])
    if body.steps is not None:
        job_id = await submit_chain(services, session, user, [step.model_dump() for step in body.steps])
    else:
        job_id = await submit_job(services, session, user, body.operation or "", body.params or {})
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
