"""What happens to a claimed job, from start to settled credits; no Ray in here.

Order matters for "never lose a job, never charge twice": each step's output rows and the
job's progress are written in one transaction; the job's end (its last step's outputs, or its
failure) is written in the same transaction as the settlement of its reservation for the steps
that ran (`end_jobs`, run by the ledger), so a job is never seen ended with its credits still
held, nor settled twice. The job's events are announced after they commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from daygen.errors import InvalidInput, JobFailed
from daygen.ids import uuid7
from pipelines.batching import Batcher
from pipelines.chains import PREVIOUS, Step, charged_for, job_steps
from pipelines.operations import OPERATIONS, check_inputs
from pipelines.steps import StepOutcome
from storage import assets as asset_queries
from storage import jobs as job_queries
from storage import ledger as ledger_queries
from storage.db import database_now
from storage.events import Event

log = logging.getLogger("daygen.jobs")

RunStep = Callable[[str, dict[str, Any], dict[str, Any]], Awaitable[StepOutcome]]
Settle = Callable[[uuid.UUID, Decimal], Awaitable[Any]]
Record = Callable[[job_queries.StepFinished], Awaitable[list[Event] | None]]
# Ends a job, settles it and announces the end; False when the attempt had lost the job (nothing written).
End = Callable[[job_queries.Finish, Decimal], Awaitable[bool]]
Publish = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class QueueAnswer:
    """What became of a job asked to be queued: `queued` (by this call, or an earlier one with the same
    job), `refused` for want of credits or by a limit (`refusal`, with what counts against it), with
    the balance, or `key_taken`: another job of the owner already has its Idempotency-Key."""

    outcome: Literal["queued", "refused", "key_taken"]
    balance: Decimal = Decimal(0)
    refusal: ledger_queries.Refusal | None = None
    used: Decimal = Decimal(0)
    provider: str | None = None  # the provider whose limit refused it


async def queue_jobs(
    session: AsyncSession, jobs: Sequence[job_queries.NewJob]
) -> tuple[list[QueueAnswer], list[Event]]:
    """Hold each job's price and insert the job with its `job.queued` event, in the caller's transaction
    (the ledger's): a job is never queued without its credits held, nor credits held for a job that
    was not queued. Each judged in order against what the earlier ones left; answers each, and the
    events to announce once the transaction commits.

    Safe to repeat: a job an earlier call queued is answered queued, nothing held or inserted twice.
    An owner's Idempotency-Key may appear once a call (`one_key_each`). With keys, the owners'
    balances are locked before the keys are looked up: every job is queued under that lock, so no
    job can take a key between the look and the insert.
    """
    keyed = [(job.owner_id, job.idempotency_key) for job in jobs if job.idempotency_key is not None]
    taken: dict[tuple[uuid.UUID, str], uuid.UUID] = {}
    if keyed:
        await ledger_queries.lock_accounts(session, (owner for owner, _ in keyed), event_logs=True)
        taken = await job_queries.jobs_by_idempotency_key(session, keyed)
    free = [job for job in jobs if taken.get((job.owner_id, job.idempotency_key or ""), job.id) == job.id]
    reservations = [
        ledger_queries.Reservation(
            job.account_id, job.id, job.cost, job.caps, owner_id=job.owner_id, provider_shares=job.provider_shares
        )
        for job in free
    ]
    held = await ledger_queries.reserve_many(session, reservations, event_logs=True) if free else []
    answers = {
        job.id: QueueAnswer("queued", h.balance)
        if h.accepted
        else QueueAnswer("refused", h.balance, h.refusal, h.used, h.provider)
        for job, h in zip(free, held, strict=True)
    }
    new = [job for job, h in zip(free, held, strict=True) if h.accepted and not h.repeat]
    events = await job_queries.insert_jobs(session, new) if new else []
    return [answers.get(job.id, QueueAnswer("key_taken")) for job in jobs], events


def one_key_each(jobs: Sequence[job_queries.NewJob]) -> list[list[job_queries.NewJob]]:
    """The jobs in rounds (in order) in which an owner's Idempotency-Key appears once: a later job with
    a key an earlier one of the same call has is queued in a later transaction, which then sees
    whether the earlier one took the key."""
    rounds: list[list[job_queries.NewJob]] = []
    seen: list[set[tuple[uuid.UUID, str]]] = []
    for job in jobs:
        key = (job.owner_id, job.idempotency_key) if job.idempotency_key is not None else None
        index = next((i for i, keys in enumerate(seen) if key not in keys), len(rounds)) if key else 0
        if index == len(rounds):
            rounds.append([])
            seen.append(set())
        rounds[index].append(job)
        if key:
            seen[index].add(key)
    return rounds


def recorder(sessions: async_sessionmaker[AsyncSession]) -> Record:
    """Ends of steps (not the last) recorded together: one transaction for whatever ended meanwhile."""

    async def record(finishes: list[job_queries.StepFinished]) -> list[list[Event] | None]:
        async with sessions.begin() as session:
            return await job_queries.record_finishes(session, finishes)

    return Batcher(record)


async def end_jobs(
    session: AsyncSession, endings: list[tuple[job_queries.Finish, Decimal]]
) -> list[list[Event] | None]:
    """End jobs and settle their reservations (keeping what each charged) in the caller's transaction.

    An ending whose attempt lost the job writes nothing and settles nothing (answered None):
    the attempt that took over ends and settles it.
    """
    recorded = await job_queries.record_finishes(session, [finish for finish, _ in endings])
    charges = [(f.claimed.id, charged) for (f, charged), r in zip(endings, recorded, strict=True) if r is not None]
    if charges:
        await ledger_queries.settle_many(session, charges)
    return recorded


def ending(
    sessions: async_sessionmaker[AsyncSession], publish: Publish
) -> Batcher[tuple[job_queries.Finish, Decimal], bool]:
    """`end_jobs` of whatever ended meanwhile, one transaction for them all, their events announced as
    it commits (the ledger runs one). Each (finish, charged) is answered False when its attempt had
    lost the job."""

    async def end_many(endings: list[tuple[job_queries.Finish, Decimal]]) -> list[bool]:
        async with sessions.begin() as session:
            recorded = await end_jobs(session, endings)
        await publish(*(event for events in recorded if events for event in events))
        return [events is not None for events in recorded]  # the events stay here: not worth a trip back

    return Batcher(end_many)


CANCELED = "canceled"


class LeaseKeeper:
    """Keeps the leases of every job a process runs: one statement renews them all, every third of
    a lease, however many there are. It also passes on a cancel asked of another process."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], lease_seconds: float) -> None:
        self.sessions = sessions
        self.lease_seconds = lease_seconds
        self.held: dict[uuid.UUID, tuple[int, asyncio.Event]] = {}

    def hold(self, claimed: job_queries.ClaimedJob, cancel: asyncio.Event) -> None:
        self.held[claimed.id] = (claimed.attempt, cancel)

    def drop(self, job_id: uuid.UUID) -> None:
        self.held.pop(job_id, None)

    async def renew(self) -> None:
        held = dict(self.held)
        async with self.sessions() as session:
            renewed = await job_queries.renew_leases(
                session, [(job_id, attempt) for job_id, (attempt, _) in held.items()], self.lease_seconds
            )
        for job_id, (_, cancel) in held.items():
            if job_id not in renewed:
                self.drop(job_id)  # lost: the attempt that took over keeps it now
            elif renewed[job_id]:
                cancel.set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except Exception:
                log.exception("could not renew job leases; trying again in a third of a lease")


def _usage(step: Step, index: int, outcome: StepOutcome, costs: Mapping[str, Decimal]) -> job_queries.Usage | None:
    """The usage record of a step whose engine ran: its credits if it succeeded, the provider's price
    for the images it made."""
    if outcome.upstream_ms is None:
        return None
    images = len(outcome.assets)
    units = images or int(outcome.ok)  # a description is one unit
    return job_queries.Usage(
        step=index,
        provider=step.provider,
        operation=step.operation,
        status="succeeded" if outcome.ok else "failed",
        images=images,
        upstream_ms=outcome.upstream_ms,
        credits=step.cost if outcome.ok else Decimal(0),
        provider_cost=costs.get(step.operation, Decimal(0)) * units,
    )


def _with_step(result: dict[str, Any], operation: str, asset_ids: list[str], texts: list[str]) -> dict[str, Any]:
    """The job's result after one more step: every step's outputs, all the images, all the text."""
    all_texts = [*result.get("texts", []), *texts]
    return {
        "steps": [*result.get("steps", []), {"operation": operation, "assetIds": asset_ids, "texts": texts}],
        "assetIds": [*result.get("assetIds", []), *asset_ids],
        "texts": all_texts,
        "text": "\n\n".join(all_texts) if all_texts else None,
    }


async def _step_inputs(
    sessions: async_sessionmaker[AsyncSession], step: Step, result: dict[str, Any]
) -> dict[str, Any]:
    """The step's own inputs, plus the previous step's first image when it is chained to it."""
    inputs = dict(step.inputs or {})
    if step.input == PREVIOUS:
        produced = result["steps"][-1]["assetIds"] if result.get("steps") else []
        ref = None
        if produced:
            async with sessions() as session:
                ref = await asset_queries.job_output_ref(session, uuid.UUID(produced[0]))
        if ref is None:
            raise JobFailed("input_missing", "the previous step left no image to work on")
        inputs["image"] = ref
        check_inputs(OPERATIONS[step.operation], step.params, inputs)
    return inputs


async def _run(
    sessions: async_sessionmaker[AsyncSession], run_step: RunStep, step: Step, result: dict[str, Any]
) -> StepOutcome:
    try:
        inputs = await _step_inputs(sessions, step, result)
    except JobFailed as exc:
        return StepOutcome(error_code=exc.code, error_message=exc.message)
    except InvalidInput as exc:
        return StepOutcome(error_code="invalid_input", error_message=exc.message)
    try:
        return await run_step(step.operation, step.params, inputs)
    except Exception:
        log.exception("step crashed", extra={"job_step": step.operation})
        return StepOutcome(error_code="internal_error", error_message="the job failed unexpectedly")


async def _unless_canceled(work: Awaitable[StepOutcome], cancel: asyncio.Event) -> StepOutcome | None:
    """The step's outcome, or None once a cancel arrives first (the step is then aborted)."""
    step = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait({step, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if step.done():
        return step.result()
    step.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await step
    return None


async def execute_job(
    claimed: job_queries.ClaimedJob,
    *,
    sessions: async_sessionmaker[AsyncSession],
    run_step: RunStep,
    record: Record,
    end: End,
    publish: Publish,
    cancel: asyncio.Event | None = None,
    provider_costs: Mapping[str, Decimal] | None = None,
) -> str | None:
    """Run the job's steps from the first not yet done; returns the final status, or None if the lease was lost.

    Each step's outputs are recorded as it ends, so an attempt that takes over after a crash
    starts at the step that was running, never re-running (or re-charging) one that finished.
    `cancel` (or a cancel recorded on the job) aborts the running step and ends the job `canceled`.
    Each step whose engine ran leaves a usage record with it (`provider_costs`: USD an image, by operation).
    """
    costs = provider_costs or {}
    extra = {"job_id": str(claimed.id), "operation": claimed.operation, "attempt": claimed.attempt}
    steps = job_steps(claimed.operation, claimed.params, claimed.cost, claimed.inputs)
    total = len(steps)
    result: dict[str, Any] = dict(claimed.result or {})
    done = claimed.steps_done
    cancel = cancel or asyncio.Event()
    if claimed.cancel_requested:
        cancel.set()
    outcome: StepOutcome | None = StepOutcome()
    while done < total and not cancel.is_set():
        step = steps[done]
        if total > 1:
            progress = {"progress": done * 100 // total, "step": done, "steps": total, "operation": step.operation}
            async with sessions() as session:
                event = await job_queries.record_event(session, claimed, "job.progress", progress)
            if event is None:
                log.warning("lease lost; another attempt owns the job", extra=extra)
                return None
            await publish(event)
        outcome = await _unless_canceled(_run(sessions, run_step, step, result), cancel)
        if outcome is None or not outcome.ok:
            break
        assets = [{"id": uuid7(), **a} for a in outcome.assets]
        asset_ids = [str(a["id"]) for a in assets]
        result = _with_step(result, step.operation, asset_ids, outcome.texts)
        finished = {"step": done, "steps": total, "operation": step.operation, "assetIds": asset_ids}
        finished["progress"] = (done + 1) * 100 // total
        specs = [("job.step_succeeded", finished)]
        if done + 1 == total:
            specs.append(("job.succeeded", {"status": "succeeded", "progress": 100, "assetIds": result["assetIds"]}))
        next_provider = steps[done + 1].provider if done + 1 < total else None
        usage = _usage(step, done, outcome, costs)
        finish = job_queries.StepFinished(claimed, done, total, assets, result, specs, next_provider, usage)
        if done + 1 == total:
            recorded = await end(finish, charged_for(steps, total))  # which announces the events
        else:
            events = await record(finish)
            if events is not None:
                await publish(*events)
            recorded = events is not None
        if not recorded:
            log.warning("lease lost; another attempt owns the job", extra=extra)
            return None
        done += 1

    if done == total:
        status = "succeeded"
    else:
        if outcome is None or outcome.ok:
            status, code, message = CANCELED, None, None
            data: dict[str, Any] = {"status": status, "step": done}
        else:
            status, code, message = "failed", outcome.error_code, outcome.error_message or ""
            data = {"status": status, "step": done, "error": {"code": code, "message": message}}
        usage = _usage(steps[done], done, outcome, costs) if outcome is not None else None
        ended = await end(job_queries.JobEnded(claimed, status, code, message, data, usage), charged_for(steps, done))
        if not ended:
            log.warning("lease lost; another attempt owns the job", extra=extra)
            return None
    log.info("job finished", extra={**extra, "status": status, "error_code": outcome.error_code if outcome else None})
    return status


# Longer than any transaction that ends a job: one that began before a pass began (so its end is
# stamped earlier) and committed after the pass looked is still inside the next pass's window.
RECONCILE_OVERLAP = timedelta(minutes=10)
VANISHED_GRACE = timedelta(minutes=10)  # a reservation younger than this is never taken for vanished
VANISHED_PAGE = 1000
UNSETTLED_PAGE = 100


async def settle_unsettled(
    sessions: async_sessionmaker[AsyncSession], settle: Settle, ended_since: datetime | None = None
) -> datetime:
    """Settle the reservations of jobs that ended without one (a queued job canceled by the API, whose
    release was lost to a crash right after), among the jobs that ended since `ended_since` (all of
    them: None), however many. Answers the `ended_since` of the next pass: passes that each look at
    what ended since the one before began cost what ended meanwhile, not every job there ever was."""
    async with sessions() as session:
        began = await database_now(session)
    after = None
    while True:
        async with sessions() as session:
            page = await ledger_queries.unsettled_finished_jobs(
                session, ended_since=ended_since, after=after, limit=UNSETTLED_PAGE
            )
        for job in page:
            await settle(job.id, charged_for(job_steps(job.operation, job.params, job.cost, None), job.steps_done))
        if len(page) < UNSETTLED_PAGE:
            return began - RECONCILE_OVERLAP
        after = page[-1].id


async def expire_vanished(sessions: async_sessionmaker[AsyncSession], settle: Settle, after: int, now: datetime) -> int:
    """Give back the credits of reservations whose job vanished, among the next page of reservations
    after entry `after`: each is settled as a job that charged nothing (once, by its key). Answers
    where the next page starts (0 again after the last: the sweep goes round the ledger for ever)."""
    async with sessions() as session:
        page = await ledger_queries.vanished_reservations(
            session, after=after, held_before=now - VANISHED_GRACE, limit=VANISHED_PAGE
        )
    for job_id in page.vanished:
        log.warning("a reservation's job vanished: its credits are given back", extra={"job_id": str(job_id)})
        await settle(job_id, Decimal(0))
    return page.last_id if page.looked_at == VANISHED_PAGE else 0
