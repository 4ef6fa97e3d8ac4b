"""Submitting jobs and reading them back; the dispatcher does the work."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import uuid
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from pydantic import BaseModel, ValidationError
from ray.exceptions import RayError

from daygen.errors import (
    Conflict,
    CreditLimitReached,
    DaygenError,
    InsufficientCredits,
    InvalidInput,
    NotFound,
    ProviderDown,
    RateLimited,
    TooManyJobs,
)
from daygen.ids import uuid7
from pipelines.billing_config import BillingConfig, Limits
from pipelines.chains import PIPELINE, charged_for, job_steps, prefixed, providers_of, validate_steps
from pipelines.jobs import QueueAnswer
from pipelines.operations import OPERATIONS, check_inputs, validate_request
from pipelines.pool_config import pool_key
from pipelines.shared_limits import ProviderOutage
from pipelines.webhooks import check_target
from serve_app.deps import CurrentUser, ServicesDep, SessionDep, require_json
from serve_app.errors import status_for
from serve_app.pagination import split_page
from serve_app.routes.assets import asset_out
from serve_app.schemas import (
    BatchItem,
    BatchItemResult,
    JobAccepted,
    JobBatchCreate,
    JobBatchResult,
    JobCreate,
    JobError,
    JobOut,
    JobPage,
    JobQuote,
    JobResult,
    JobStepOut,
    QuoteStep,
)
from serve_app.services import Services
from storage import jobs as queries
from storage import ledger, orgs
from storage.assets import resolve_inputs
from storage.jobs import NewJob
from storage.models import Job, User

v1 = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_json)])

MAX_WAIT_SECONDS = 30
MAX_IDEMPOTENCY_KEY = 255


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


@dataclass(frozen=True)
class Idempotency:
    """The client's Idempotency-Key and a hash of the request it came with."""

    key: str
    request_hash: str

    @classmethod
    def of(cls, key: str | None, body: BaseModel) -> Idempotency | None:
        if key is None:
            return None
        key = key.strip()
        if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
            raise InvalidInput(
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters",
                details=[{"field": "Idempotency-Key", "message": "invalid header value"}],
            )
        canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return cls(key, hashlib.sha256(canonical.encode()).hexdigest())


OUTAGE_MESSAGES = {
    "provider_misconfigured": "{provider} refused our API key; the operators have been alerted",
    "provider_out_of_funds": "{provider} cannot take work on our account right now",
}


async def check_provider_ready(services: Services, provider: str, ready: set[str] | None = None) -> None:
    """A 503 before any charge for a provider that can't take work: no key here, or marked down
    by its pool after refusing our key or account (for `DAYGEN_PROVIDER_OUTAGE_SECONDS`).
    `ready` remembers the providers already found ready by this request (a batch asks once each)."""
    if ready is not None and provider in ready:
        return
    if not services.settings.provider_configured(provider):
        raise ProviderDown("provider_misconfigured", f"{provider} is not configured on this server")
    outage = await ProviderOutage(services.redis, pool_key(services.settings.redis_namespace, provider)).current()
    if outage is not None:
        code, seconds_left = outage
        message = OUTAGE_MESSAGES.get(code, "{provider} is unavailable").format(provider=provider)
        raise ProviderDown(code, message, retry_after=seconds_left)
    if ready is not None:
        ready.add(provider)


class Replayed(Exception):
    """The request repeats an earlier one with the same Idempotency-Key: answer with that job."""

    def __init__(self, job: Job) -> None:
        super().__init__(str(job.id))
        self.job = job


async def earlier_job(session: SessionDep, owner_id: uuid.UUID, idempotency: Idempotency | None) -> None:
    """Raise Replayed for a repeat, Conflict when the key came with another request, else nothing."""
    if idempotency is None:
        return
    job = await queries.job_by_idempotency_key(session, owner_id, idempotency.key)
    if job is None:
        return
    if job.request_hash != idempotency.request_hash:
        raise Conflict(
            "this Idempotency-Key was used with a different request",
            details=[{"field": "Idempotency-Key", "message": "already used with another body"}],
        )
    raise Replayed(job)


@dataclass(frozen=True)
class Prepared:
    """A job request checked, its inputs resolved and priced: ready to reserve and queue."""

    operation: str
    provider: str
    params: dict
    cost: Decimal
    inputs: dict | None = None
    idempotency: Idempotency | None = None
    webhook_url: str | None = None


Queued = uuid.UUID | Replayed | DaygenError

CONCURRENT_RETRY_SECONDS = 2  # a client at its limit of open jobs: a hint, as no one knows when one ends


@dataclass(frozen=True)
class Submitter:
    """Who submits, with the limits their plan, an admin's overrides and a throttle leave them."""

    id: uuid.UUID
    limits: Limits
    auto_top_up_under: Decimal | None = None  # the balance under which an auto top-up buys credits
    # For a team's jobs: the team, its limits (which the jobs count against, not the member's own,
    # but for the member's jobs a minute), and what the member may spend of its balance a month.
    org_id: uuid.UUID | None = None
    org_limits: Limits | None = None
    member_cap: Decimal | None = None

    @classmethod
    def of(cls, services: Services, user: User) -> Submitter:
        under = user.auto_top_up_threshold if user.auto_top_up_pack is not None else None
        return cls(user.id, services.billing.limits(user.plan, user.limits, throttled=user.throttled), under)

    async def for_org(self, services: Services, session: SessionDep, org_id: uuid.UUID | None) -> Submitter:
        """The same submitter, charging `org_id` (None: their own balance); a team they are not in is a 404."""
        if org_id is None:
            return self
        found = await orgs.membership(session, org_id, self.id)
        if found is None:
            raise NotFound("no such organisation", details=[{"field": "orgId", "message": "not one of yours"}])
        org = found.org
        org_limits = services.billing.limits(org.plan, org.limits, throttled=False)
        return replace(
            self,
            auto_top_up_under=None,
            org_id=org.id,
            org_limits=org_limits,
            member_cap=found.member.credits_per_month,
        )

    @property
    def account_id(self) -> uuid.UUID:
        return self.org_id or self.id

    @property
    def charged_limits(self) -> Limits:
        """The limits of the balance the jobs are charged to."""
        return self.org_limits if self.org_limits is not None else self.limits

    @property
    def rate_accounts(self) -> list[tuple[str, int | None]]:
        accounts = [(f"account:{self.id}", self.limits.requests_per_minute)]
        if self.org_limits is not None:
            accounts.append((f"org:{self.org_id}", self.org_limits.requests_per_minute))
        return accounts

    @property
    def caps(self) -> ledger.Caps:
        limits = self.charged_limits
        return ledger.Caps(limits.concurrent_jobs, limits.credits_per_day, limits.credits_per_month, self.member_cap)


def refusal_error(answer: QueueAnswer, job: NewJob, submitter: Submitter, billing: BillingConfig) -> DaygenError:
    """The error a job the ledger refused is answered with. A provider's limit names the provider, and
    what the job would take of it: a chain's steps there."""
    cost, limits = job.cost, submitter.charged_limits
    provider = answer.provider or job.provider
    provider_part = next((share.credits for share in job.provider_shares if share.provider == provider), cost)
    if answer.refusal == "member_credits_per_month":
        return CreditLimitReached(
            "this job would take you past what you may spend of the organisation's credits a month (UTC)",
            details={
                "limit": answer.refusal,
                "max": float(submitter.member_cap or 0),
                "used": float(answer.used),
                "required": float(cost),
            },
        )
    if answer.refusal in ("credits_per_day", "credits_per_month"):
        period = "day" if answer.refusal == "credits_per_day" else "month"
        return CreditLimitReached(
            f"this job would take the account past its credits a {period} (UTC)",
            details={
                "limit": answer.refusal,
                "max": float(getattr(limits, answer.refusal)),
                "used": float(answer.used),
                "required": float(cost),
            },
        )
    if answer.refusal == "provider_concurrent_jobs":
        return TooManyJobs(
            f"{provider} has as many jobs queued and running as it may; try again shortly",
            details={
                "limit": answer.refusal,
                "provider": provider,
                "open": int(answer.used),
                "retryAfter": CONCURRENT_RETRY_SECONDS,
            },
            retry_after=CONCURRENT_RETRY_SECONDS,
        )
    if answer.refusal in ("provider_credits_per_day", "provider_credits_per_month"):
        period = "day" if answer.refusal == "provider_credits_per_day" else "month"
        caps = billing.provider_caps(provider)
        return CreditLimitReached(
            f"{provider} has taken all the credits it may this {period} (UTC); try another provider or later",
            details={
                "limit": answer.refusal,
                "provider": provider,
                "max": float(getattr(caps, answer.refusal.removeprefix("provider_"), None) or 0),
                "used": float(answer.used),
                "required": float(provider_part),
            },
        )
    if answer.refusal == "concurrent_jobs":
        return TooManyJobs(
            "the account has as many jobs queued and running as its limit allows",
            details={"limit": "concurrent_jobs", "open": int(answer.used), "retryAfter": CONCURRENT_RETRY_SECONDS},
            retry_after=CONCURRENT_RETRY_SECONDS,
        )
    return InsufficientCredits(
        "not enough credits for this job", details={"required": float(cost), "balance": float(answer.balance)}
    )


async def queue_jobs(
    services: Services, session: SessionDep, submitter: Submitter, jobs: list[Prepared]
) -> list[Queued]:
    """Hold the prices and queue the jobs: one ledger call (and transaction, which the dispatcher hears
    of as it commits) however many jobs. Each job is answered with its id, or what stopped it (a limit
    a minute, too few credits, a limit on credits or open jobs, an Idempotency-Key another request
    took meanwhile). Jobs past the limits a minute are not sent on: they are neither held nor queued."""
    owner_id = submitter.id
    provider_rates = services.billing.provider_rates
    # Without a provider's limit a minute, the jobs' providers count for nothing: not worked out.
    providers = [providers_of(job.operation, job.params) if provider_rates else () for job in jobs]
    admitted = await services.submit_rates.admit(submitter.rate_accounts, providers, provider_rates)
    late = [
        RateLimited(
            "too many jobs a minute; try again later",
            details={"admitted": admitted.jobs, "requested": len(jobs), "retryAfter": math.ceil(admitted.retry_after)},
            retry_after=admitted.retry_after,
        )
        for _ in jobs[admitted.jobs :]
    ]
    caps = submitter.caps
    new = [
        NewJob(
            id=uuid7(),
            owner_id=owner_id,
            operation=job.operation,
            provider=job.provider,
            params=job.params,
            cost=job.cost,
            inputs=job.inputs,
            idempotency_key=job.idempotency.key if job.idempotency else None,
            request_hash=job.idempotency.request_hash if job.idempotency else None,
            webhook_url=job.webhook_url,
            caps=caps,
            org_id=submitter.org_id,
            provider_shares=services.billing.provider_shares(job.operation, job.params, job.cost),
        )
        for job in jobs[: admitted.jobs]
    ]
    answers: list[Queued] = []
    queued_answers = await services.queue(new) if new else []
    under = submitter.auto_top_up_under
    if under is not None and any(q.outcome != "key_taken" and q.balance < under for q in queued_answers):
        services.ledger.auto_top_up.remote(owner_id)  # not waited for: Stripe is not on the submit's path
    for job, queued in zip(new, queued_answers, strict=True):
        if queued.outcome == "queued":
            answers.append(job.id)
        elif queued.outcome == "refused":
            answers.append(refusal_error(queued, job, submitter, services.billing))
        else:  # a concurrent request with the same key got in first: answered as a repeat of it, or 409
            assert job.idempotency_key is not None and job.request_hash is not None
            try:
                await earlier_job(session, owner_id, Idempotency(job.idempotency_key, job.request_hash))
            except (Replayed, DaygenError) as exc:
                answers.append(exc)
            else:
                raise RuntimeError("the ledger found the Idempotency-Key taken, but no job has it")
    return answers + late


async def queue_one(services: Services, session: SessionDep, submitter: Submitter, job: Prepared) -> uuid.UUID:
    """`queue_jobs` of one, its refusal raised."""
    [answer] = await queue_jobs(services, session, submitter, [job])
    if isinstance(answer, BaseException):
        raise answer
    return answer


async def prepare_job(
    services: Services,
    session: SessionDep,
    owner_id: uuid.UUID,
    operation_name: str,
    raw_params: dict,
    idempotency: Idempotency | None = None,
    webhook_url: str | None = None,
    ready: set[str] | None = None,
) -> Prepared:
    """Validate, resolve input assets, price: every way of submitting one operation."""
    operation, params = validate_request(operation_name, raw_params)
    services.pools.check_fits(operation, params)
    await check_provider_ready(services, operation.provider, ready)
    refs = operation.asset_refs(params)
    inputs = await resolve_inputs(session, owner_id, refs) if refs else None
    if inputs:
        check_inputs(operation, params, inputs)
    await earlier_job(session, owner_id, idempotency)
    return Prepared(
        operation.name,
        operation.provider,
        params,
        services.billing.price(operation, params),
        inputs,
        idempotency,
        webhook_url,
    )


async def submit_job(
    services: Services, session: SessionDep, user: User, operation_name: str, raw_params: dict
) -> uuid.UUID:
    """One operation, checked, reserved and queued (the daygen-compatible routes)."""
    submitter = Submitter.of(services, user)  # read once: a rollback expires the loaded user
    job = await prepare_job(services, session, submitter.id, operation_name, raw_params)
    return await queue_one(services, session, submitter, job)


async def prepare_chain(
    services: Services,
    session: SessionDep,
    owner_id: uuid.UUID,
    raw_steps: list[dict],
    idempotency: Idempotency | None = None,
    webhook_url: str | None = None,
    ready: set[str] | None = None,
) -> Prepared:
    """The same for a chain: every step is checked, and the whole price reserved, before anything runs."""
    steps = validate_steps(raw_steps, services.billing.price)
    for provider in dict.fromkeys(step.provider for step in steps):
        await check_provider_ready(services, provider, ready)
    inputs: dict[str, dict] = {}
    for index, step in enumerate(steps):
        try:
            services.pools.check_fits(OPERATIONS[step.operation], step.params)
        except InvalidInput as exc:
            raise prefixed(exc, f"steps.{index}") from None
        if step.refs:
            try:
                resolved = await resolve_inputs(session, owner_id, step.refs)
                check_inputs(OPERATIONS[step.operation], step.params, resolved)
            except (InvalidInput, NotFound) as exc:
                raise prefixed(exc, f"steps.{index}") from None
            inputs[str(index)] = resolved
    await earlier_job(session, owner_id, idempotency)
    cost = sum((s.cost for s in steps), Decimal(0))
    params = {"steps": [s.stored() for s in steps]}
    return Prepared(PIPELINE, steps[0].provider, params, cost, inputs or None, idempotency, webhook_url)


async def prepare_body(
    services: Services,
    session: SessionDep,
    owner_id: uuid.UUID,
    body: JobCreate,
    idempotency: Idempotency | None,
    ready: set[str] | None = None,
) -> Prepared:
    """One `POST /v1/jobs` body, an operation or a chain, checked and priced."""
    if problem := body.shape_problem():
        raise InvalidInput(problem[1], details=[{"field": problem[0], "message": problem[1]}])
    webhook_url = None
    if body.webhookUrl is not None:
        # The guard runs again before every delivery; here it turns a bad URL into a 422 before any charge.
        target = await check_target(body.webhookUrl, services.settings.webhook_allowed_host_set)
        webhook_url = target.url
    if body.steps is not None:
        steps = [s.model_dump() for s in body.steps]
        return await prepare_chain(services, session, owner_id, steps, idempotency, webhook_url, ready)
    params = body.params or {}
    return await prepare_job(services, session, owner_id, body.operation or "", params, idempotency, webhook_url, ready)


@v1.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": JobAccepted, "description": "a repeat of an earlier request (same Idempotency-Key)"}},
)
async def submit(
    body: JobCreate,
    request: Request,
    response: Response,
    user: CurrentUser,
    services: ServicesDep,
    session: SessionDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=1000)] = None,
) -> JobAccepted:
    """Validate, reserve the credits, queue; the answer comes before any work starts.

    With an `Idempotency-Key`, a repeat of the same request answers 200 with the job it made
    (nothing is charged again); the same key with a different request is a 409.
    """
    submitter = await Submitter.of(services, user).for_org(services, session, body.orgId)
    try:
        job = await prepare_body(services, session, submitter.id, body, Idempotency.of(idempotency_key, body))
        job_id = await queue_one(services, session, submitter, job)
    except Replayed as replay:
        request.state.job_id = str(replay.job.id)
        response.status_code = status.HTTP_200_OK
        return JobAccepted(jobId=replay.job.id, status=replay.job.status)
    request.state.job_id = str(job_id)
    return JobAccepted(jobId=job_id, status="queued")


@v1.post("/quote")
async def quote(body: JobCreate, user: CurrentUser, services: ServicesDep, session: SessionDep) -> JobQuote:
    """What `POST /v1/jobs` with this body would hold: checked as the submit checks it (the same
    errors), priced from configs/billing.yaml, against the balance now. Nothing is held or queued."""
    submitter = await Submitter.of(services, user).for_org(services, session, body.orgId)
    job = await prepare_body(services, session, submitter.id, body, idempotency=None)
    balance = await ledger.balance(session, submitter.account_id)
    steps = [
        QuoteStep(
            operation=step.operation,
            provider=step.provider,
            units=OPERATIONS[step.operation].units(step.params),
            unitCredits=float(services.billing.prices[step.operation]),
            credits=float(step.cost),
        )
        for step in job_steps(job.operation, job.params, job.cost, None)
    ]
    return JobQuote(credits=float(job.cost), balance=float(balance), enough=balance >= job.cost, steps=steps)


@v1.post("/batch")
async def submit_batch(
    body: JobBatchCreate, request: Request, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> JobBatchResult:
    """Up to 100 jobs in one request, each answered on its own, in order: 202 with its jobId, 200 for a
    repeat of an earlier idempotency key, or the item's own error (402, 404, 409, 422) with its body."""
    submitter = await Submitter.of(services, user).for_org(services, session, body.orgId)
    owner_id = submitter.id
    answers: list[Queued | None] = []
    prepared: list[Prepared] = []
    ready: set[str] = set()  # providers found ready: asked once a batch
    for raw in body.jobs:
        try:
            item = BatchItem.model_validate(raw)
            idempotency = Idempotency.of(item.idempotencyKey, item)
            prepared.append(await prepare_body(services, session, owner_id, item, idempotency, ready))
            answers.append(None)
        except ValidationError as exc:
            details = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
            answers.append(InvalidInput("invalid job", details))
        except (Replayed, DaygenError) as exc:
            answers.append(exc)
    queued = iter(await queue_jobs(services, session, submitter, prepared) if prepared else [])
    results = [_item_result(answer if answer is not None else next(queued)) for answer in answers]
    request.state.user_id = str(owner_id)
    return JobBatchResult(results=results)


def _item_result(answer: Queued) -> BatchItemResult:
    if isinstance(answer, Replayed):
        return BatchItemResult(status=200, jobId=answer.job.id)
    if isinstance(answer, DaygenError):
        return BatchItemResult(status=status_for(answer), error=item_error(answer))
    return BatchItemResult(status=202, jobId=answer)


def item_error(exc: DaygenError) -> dict:
    return {"code": exc.code, "message": exc.message, "details": exc.details}


@v1.post("/{job_id}/cancel")
async def cancel(
    job_id: uuid.UUID,
    request: Request,
    response: Response,
    user: CurrentUser,
    services: ServicesDep,
    session: SessionDep,
) -> JobOut:
    """A queued job is canceled at once (200); a running one is stopped, its current call aborted (202).

    Credits for the steps that did not run are given back. A job that already ended is a 409.
    """
    request.state.job_id = str(job_id)
    job = await queries.get_job(session, user.id, job_id)
    if job is None:
        raise NotFound("job not found")
    if job.status == "queued":
        event = await queries.cancel_queued(session, job)
        if event is not None:
            await services.events.publish(event)
            charged = charged_for(job_steps(job.operation, job.params, job.cost, None), job.steps_done)
            await services.ledger.settle.remote([(job.id, charged)])
        else:
            await session.refresh(job)  # a dispatcher claimed it meanwhile: stop it running
    if job.status in ("queued", "running") and await queries.request_cancel(session, job.id):
        with contextlib.suppress(RayError):  # a dispatcher that is gone: the job's lease keeper notices
            await services.dispatcher.cancel.remote(job.id)
        response.status_code = status.HTTP_202_ACCEPTED
    await session.refresh(job)
    if job.status in queries.TERMINAL and job.status != "canceled":
        raise Conflict(f"the job already {job.status}", details={"status": job.status})
    return await job_out(services, request, session, job)


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
    """With `wait`, answers as soon as the job ends (its credits are settled with its end), or when the
    wait is over, instead of being polled. Waiters share their replica's one reader of live events."""
    request.state.job_id = str(job_id)
    watching = (await services.event_hub()).watching(user.id, job_id) if wait else contextlib.nullcontext()
    async with watching as watch:
        job = await queries.get_job(session, user.id, job_id)
        if job is None:
            raise NotFound("job not found")
        if watch is not None and job.status not in queries.TERMINAL:
            await session.commit()  # the database connection goes back to the pool while it waits
            await watch.wait_for_end(wait)
            await session.refresh(job)
    return await job_out(services, request, session, job)
