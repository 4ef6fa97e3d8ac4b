"""Job rows: submission, owner-scoped reads, and the dispatcher's claim/finish queries.

Every write by a worker names the attempt it claimed (the fencing token): a worker whose
lease expired and was taken over can no longer change the job.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Boolean,
    Integer,
    Interval,
    Numeric,
    Text,
    bindparam,
    case,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import Select, TableValuedAlias, Update
from sqlalchemy.types import TypeEngine

from storage.db import insert_unnested, unnest_rows
from storage.events import (
    Event,
    NewEvent,
    append_events,
    appended_columns,
    appended_events,
    appending,
    event_owners,
    event_params,
    event_rows,
)
from storage.ledger import NO_CAPS, Caps, ProviderShare
from storage.models import Asset, Credits, Job, UsageRecord

TERMINAL = ("succeeded", "failed", "canceled")
# NOTIFY'd by every transaction that queues jobs: the dispatcher listens, so it claims as they commit.
QUEUED_CHANNEL = "daygen_jobs_queued"


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    owner_id: uuid.UUID
    operation: str
    params: dict[str, Any]
    attempt: int
    inputs: dict[str, Any] | None = None
    cost: Decimal = Decimal(0)
    steps_done: int = 0
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    started: Event | None = None


EventSpec = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class NewJob:
    id: uuid.UUID
    owner_id: uuid.UUID
    operation: str
    provider: str
    params: dict[str, Any]
    cost: Decimal
    inputs: dict[str, Any] | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    webhook_url: str | None = None
    caps: Caps = NO_CAPS  # the limits its reservation is judged against (not stored)
    org_id: uuid.UUID | None = None  # the team whose balance pays, its owner a member
    provider_shares: tuple[ProviderShare, ...] = ()  # its providers' limits and parts (not stored)

    @property
    def account_id(self) -> uuid.UUID:
        """The ledger account that pays: the team's, or the owner's own."""
        return self.org_id or self.owner_id


# New jobs' fields; the model's defaults make them queued.
_NEW_JOB: tuple[tuple[str, TypeEngine], ...] = (
    ("id", PgUUID(as_uuid=True)),
    ("owner_id", PgUUID(as_uuid=True)),
    ("operation", Text()),
    ("provider", Text()),
    ("params", JSONB()),
    ("cost", Credits),
    ("inputs", JSONB()),
    ("idempotency_key", Text()),
    ("request_hash", Text()),
    ("webhook_url", Text()),
    ("org_id", PgUUID(as_uuid=True)),
)


@functools.cache
def _insert_statement() -> Select:
    """New jobs, their `job.queued` events and a NOTIFY naming each job's provider (as the rows commit,
    the dispatcher hears which providers have new work): one statement."""
    jobs = insert_unnested(Job.__table__, _NEW_JOB)
    inserted = jobs.returning(func.pg_notify(QUEUED_CHANNEL, Job.provider)).cte("new_jobs")
    appended = appending(select(*event_rows().c), after=[inserted], owners=event_owners())
    return select(*appended_columns(appended))


async def insert_jobs(session: AsyncSession, jobs: Sequence[NewJob]) -> list[Event]:
    """The job rows and their `job.queued` events, inside the caller's transaction; the events in the
    jobs' order. The ledger queues jobs this way, in the transaction that holds their credits.

    A repeated Idempotency-Key raises IntegrityError and inserts nothing. The rows' server
    defaults, such as `created_at`, are not read back.
    """
    params = event_params([NewEvent(job.id, job.owner_id, "job.queued", {"status": "queued"}) for job in jobs])
    params.update({name: [getattr(job, name) for job in jobs] for name, _ in _NEW_JOB})
    return await appended_events(session, (await session.execute(_insert_statement(), params)).all())


@functools.cache
def _jobs_by_key_statement() -> Select:
    keys = unnest_rows("wanted", [("owner_id", PgUUID(as_uuid=True)), ("key", Text())], prefix="wanted_")
    return select(Job.owner_id, Job.idempotency_key, Job.id).join(
        keys, (Job.owner_id == keys.c.owner_id) & (Job.idempotency_key == keys.c.key)
    )


async def jobs_by_idempotency_key(
    session: AsyncSession, keys: Sequence[tuple[uuid.UUID, str]]
) -> dict[tuple[uuid.UUID, str], uuid.UUID]:
    """The jobs made under (owner, Idempotency-Key) pairs, those that exist: one query."""
    if not keys:
        return {}
    params = {"wanted_owner_id": [owner for owner, _ in keys], "wanted_key": [key for _, key in keys]}
    return {(owner, key): job_id for owner, key, job_id in await session.execute(_jobs_by_key_statement(), params)}


async def job_by_idempotency_key(session: AsyncSession, owner_id: uuid.UUID, key: str) -> Job | None:
    stmt = select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_job(session: AsyncSession, owner_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    stmt = select(Job).where(Job.id == job_id, Job.owner_id == owner_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_jobs(
    session: AsyncSession,
    owner_id: uuid.UUID,
    *,
    limit: int,
    before: uuid.UUID | None,
    operations: list[str] | None = None,
) -> list[Job]:
    stmt = select(Job).where(Job.owner_id == owner_id)
    if before is not None:
        stmt = stmt.where(Job.id < before)
    if operations is not None:
        stmt = stmt.where(Job.operation.in_(operations))
    return list((await session.execute(stmt.order_by(Job.id.desc()).limit(limit))).scalars())


@functools.cache
def _claim_statement() -> Select:
    """The claim and the claimed jobs' `job.started` events, one statement built once with bound
    parameters (for_provider, limit, lease_for): claiming is on every job's path, and building and
    keying a statement this size costs more than running it.

    Fair share: users take turns, each user's jobs oldest first, and a user's turn counts the
    jobs they already have running. Both counted and ranked once (MATERIALIZED): on a table whose
    statistics lag a burst of jobs the planner counted each user's running jobs again for every
    queued job, O(backlog²): two seconds a claim with 5,000 queued."""
    jobs = Job.__table__
    provider, limit = bindparam("for_provider", type_=Text), bindparam("limit", type_=Integer)
    claimable = or_(jobs.c.status == "queued", (jobs.c.status == "running") & (jobs.c.lease_expires_at < func.now()))
    running = (
        select(jobs.c.owner_id, func.count().label("jobs"))
        .where(jobs.c.provider == provider, jobs.c.status == "running", jobs.c.lease_expires_at >= func.now())
        .group_by(jobs.c.owner_id)
        .cte("running")
        .prefix_with("MATERIALIZED")
    )
    turn = (
        func.coalesce(running.c.jobs, 0) + func.row_number().over(partition_by=jobs.c.owner_id, order_by=jobs.c.id)
    ).label("turn")
    ranked = (
        select(jobs.c.id, turn)
        .outerjoin(running, running.c.owner_id == jobs.c.owner_id)
        .where(jobs.c.provider == provider, claimable)
        .order_by(turn, jobs.c.id)
        .limit(limit * 2)  # room for the ones another claimer holds (skipped below)
        .cte("ranked")
        .prefix_with("MATERIALIZED")
    )
    chosen = (
        select(jobs.c.id)
        .join(ranked, ranked.c.id == jobs.c.id)
        .where(claimable)
        .order_by(ranked.c.turn, jobs.c.id)
        .limit(limit)
        .with_for_update(of=jobs, skip_locked=True)
    )
    claimed = (
        update(jobs)
        .where(jobs.c.id.in_(chosen.scalar_subquery()))
        .values(
            status="running",
            attempt=jobs.c.attempt + 1,
            lease_expires_at=func.now() + bindparam("lease_for", type_=Interval),
            started_at=func.coalesce(jobs.c.started_at, func.now()),
        )
        .returning(  # in ClaimedJob's order
            jobs.c.id,
            jobs.c.owner_id,
            jobs.c.operation,
            jobs.c.params,
            jobs.c.attempt,
            jobs.c.inputs,
            jobs.c.cost,
            jobs.c.steps_done,
            jobs.c.result,
            jobs.c.cancel_requested_at.is_not(None).label("cancel_requested"),
        )
        .cte("claimed")
    )
    started = func.jsonb_build_object(
        "status", "running", "attempt", claimed.c.attempt, "step", claimed.c.steps_done, type_=JSONB
    )
    appended = appending(
        select(
            claimed.c.id.label("n"),
            claimed.c.id.label("job_id"),
            claimed.c.owner_id,
            literal("job.started").label("type"),
            started.label("data"),
        )
    )
    return select(*claimed.c, *appended_columns(appended)).join_from(
        claimed, appended, appended.c.job_id == claimed.c.id
    )


async def claim_jobs(session: AsyncSession, *, provider: str, limit: int, lease_seconds: float) -> list[ClaimedJob]:
    """Take up to `limit` of the provider's queued jobs (and running ones whose lease ran out), users
    taking turns, so one user's thousand queued jobs wait behind another user's single one."""
    params = {"for_provider": provider, "limit": limit, "lease_for": timedelta(seconds=lease_seconds)}
    rows = (await session.execute(_claim_statement(), params)).all()
    fields = len(ClaimedJob.__dataclass_fields__) - 1  # all but `started`, in the statement's order
    claimed = sorted((ClaimedJob(*row[:fields]) for row in rows), key=lambda j: j.id)
    events = await appended_events(session, rows)
    await session.commit()
    return [replace(job, started=event) for job, event in zip(claimed, events, strict=True)]


def _fenced(job_id: uuid.UUID, attempt: int):
    return update(Job).where(Job.id == job_id, Job.attempt == attempt, Job.status == "running")


class _Fenced(NamedTuple):
    rows: TableValuedAlias
    update: Update
    names: tuple[str, ...]

    def params(self, rows: Iterable[tuple]) -> dict[str, list]:
        """The rows as the statement's parameters: one array per column."""
        columns = list(zip(*rows, strict=True)) or [()] * len(self.names)
        return {name: list(values) for name, values in zip(self.names, columns, strict=True)}


def _fenced_rows(name: str, columns: list[tuple[str, TypeEngine]]) -> _Fenced:
    """Rows that start with (job id, attempt), as `unnest` of one array parameter per column, and an
    UPDATE of the jobs whose attempt still holds them: `_fenced` for many attempts at once. The SQL
    is the same for any number of rows, so it is compiled and prepared once."""
    typed = [("id", PgUUID(as_uuid=True)), ("attempt", Integer()), *columns]
    names = tuple(f"{name}_{column_name}" for column_name, _ in typed)
    rows = unnest_rows(name, typed, prefix=f"{name}_")
    update_ = update(Job.__table__).where(Job.id == rows.c.id, Job.attempt == rows.c.attempt, Job.status == "running")
    return _Fenced(rows, update_, names)


@functools.cache
def _rows_in_order() -> Select:
    return (
        select(Job.id)
        .where(Job.id == func.any(bindparam("ids", type_=ARRAY(PgUUID(as_uuid=True)))))
        .order_by(Job.id)
        .with_for_update(key_share=True)
    )


async def lock_in_order(session: AsyncSession, job_ids: Iterable[uuid.UUID]) -> None:
    """Lock jobs' rows, smallest id first, for the rest of the caller's transaction.

    Each writer of many jobs (a lease renewal, a batch of step ends) takes its rows this way
    before it updates them: an UPDATE locks rows in whatever order its plan meets them, and two
    writers meeting the same rows in opposite orders deadlock (Postgres then kills one, and its
    jobs wait for their leases to run out). The lock is the one an UPDATE takes (FOR NO KEY
    UPDATE), so inserting events or assets that reference the jobs is not held up. A writer of one
    job has no order to get wrong, and saves the round trip.
    """
    ids = list(job_ids)
    if len(ids) > 1:
        await session.execute(_rows_in_order(), {"ids": ids})


@functools.cache
def _lease_renewal() -> _Fenced:
    fenced = _fenced_rows("held", [])
    stmt = fenced.update.values(lease_expires_at=func.now() + bindparam("lease_for", type_=Interval)).returning(
        Job.id, Job.cancel_requested_at.is_not(None)
    )
    return fenced._replace(update=stmt)


async def renew_leases(
    session: AsyncSession, held: Sequence[tuple[uuid.UUID, int]], lease_seconds: float
) -> dict[uuid.UUID, bool]:
    """Renew the leases of many (job id, attempt) at once; answers, for each job still held, whether a
    cancel was asked for it. A job missing from the answer was lost (taken over, or ended)."""
    if not held:
        return {}
    await lock_in_order(session, (job_id for job_id, _ in held))
    renewal = _lease_renewal()
    params = {**renewal.params(held), "lease_for": timedelta(seconds=lease_seconds)}
    renewed = dict((await session.execute(renewal.update, params)).all())
    await session.commit()
    return renewed


@dataclass(frozen=True)
class Usage:
    """What one step's provider call used and cost (a `usage_records` row): the credits it was charged
    (none when it failed), and the provider's own price for it, in USD."""

    step: int
    provider: str
    operation: str
    status: str  # succeeded | failed
    images: int
    upstream_ms: int
    credits: Decimal
    provider_cost: Decimal


@dataclass(frozen=True)
class StepFinished:
    """A step's outputs, the job's result so far and the events to record; the last step ends the job,
    otherwise the job moves on to the provider of its next step."""

    claimed: ClaimedJob
    index: int
    total: int
    assets: list[dict[str, Any]]
    result: dict[str, Any]
    events: list[EventSpec]
    next_provider: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class JobEnded:
    """A job that did not succeed: `failed`, or `canceled` while it ran. `usage`: the failed step's call."""

    claimed: ClaimedJob
    status: str
    code: str | None
    message: str | None
    data: dict[str, Any]
    usage: Usage | None = None


Finish = StepFinished | JobEnded


@functools.cache
def _finished_steps() -> _Fenced:
    fenced = _fenced_rows(
        "finished",
        [
            ("done_before", Integer()),
            ("progress", Integer()),
            ("result", JSONB()),
            ("provider", Text()),
            ("last", Boolean()),
        ],
    )
    table = fenced.rows
    stmt = (
        fenced.update.where(Job.steps_done == table.c.done_before)
        .values(
            steps_done=table.c.done_before + 1,
            progress=table.c.progress,
            result=table.c.result,
            provider=func.coalesce(table.c.provider, Job.provider),
            status=case((table.c.last, literal("succeeded")), else_=Job.status),
            completed_at=case((table.c.last, func.now()), else_=Job.completed_at),
            lease_expires_at=case((table.c.last, null()), else_=Job.lease_expires_at),
        )
        .returning(Job.id)
    )
    return fenced._replace(update=stmt)


def _step_row(f: StepFinished) -> tuple:
    last = f.index + 1 == f.total
    return (f.claimed.id, f.claimed.attempt, f.index, (f.index + 1) * 100 // f.total, f.result, f.next_provider, last)


@functools.cache
def _ended_jobs() -> _Fenced:
    fenced = _fenced_rows("ended", [("status", Text()), ("code", Text()), ("message", Text())])
    table = fenced.rows
    stmt = fenced.update.values(
        status=table.c.status,
        error_code=table.c.code,
        error_message=table.c.message,
        completed_at=func.now(),
        lease_expires_at=None,
    ).returning(Job.id)
    return fenced._replace(update=stmt)


_NEW_ASSET: tuple[tuple[str, TypeEngine], ...] = (
    ("id", PgUUID(as_uuid=True)),
    ("owner_id", PgUUID(as_uuid=True)),
    ("key", Text()),
    ("sha256", Text()),
    ("size", BigInteger()),
    ("content_type", Text()),
    ("width", Integer()),
    ("height", Integer()),
    ("source", Text()),
    ("job_id", PgUUID(as_uuid=True)),
)


_NEW_USAGE: tuple[tuple[str, TypeEngine], ...] = (
    ("job_id", PgUUID(as_uuid=True)),
    ("step", Integer()),
    ("user_id", PgUUID(as_uuid=True)),
    ("provider", Text()),
    ("operation", Text()),
    ("status", Text()),
    ("images", Integer()),
    ("upstream_ms", Integer()),
    ("credits", Credits),
    ("provider_cost", Numeric(14, 6)),
)


def _usage_rows(finishes: Sequence[Finish]) -> dict[str, list]:
    """The finishes' usage records as the finish statement's `usage_` parameters."""
    used = [(f.claimed, f.usage) for f in finishes if f.usage is not None]
    of_job = {"job_id": [c.id for c, _ in used], "user_id": [c.owner_id for c, _ in used]}
    return {
        f"usage_{name}": of_job[name] if name in of_job else [getattr(usage, name) for _, usage in used]
        for name, _ in _NEW_USAGE
    }


@functools.cache
def _finish_statement() -> Select:
    """Ended steps and jobs, their output assets and their events: one statement, fenced (each part
    writes only for the jobs whose attempt the UPDATEs found still holding them)."""
    finished, ended = _finished_steps().update.cte("finished_jobs"), _ended_jobs().update.cte("ended_jobs")
    kept = union_all(select(finished.c.id), select(ended.c.id)).cte("kept")
    outputs = unnest_rows("new_assets", _NEW_ASSET, prefix="asset_")
    names = [name for name, _ in _NEW_ASSET]
    assets = (
        insert(Asset.__table__)
        .from_select(names, select(*(outputs.c[name] for name in names)).where(outputs.c.job_id.in_(select(kept.c.id))))
        .cte("new_assets")
    )
    used = unnest_rows("new_usage", _NEW_USAGE, prefix="usage_")
    usage_names = [name for name, _ in _NEW_USAGE]
    org = select(Job.org_id).where(Job.id == used.c.job_id).scalar_subquery()  # the team charged, if any
    usage = (
        pg_insert(UsageRecord.__table__)
        .from_select(
            [*usage_names, "org_id"],
            select(*(used.c[n] for n in usage_names), org).where(used.c.job_id.in_(select(kept.c.id))),
        )
        .on_conflict_do_nothing(index_elements=["job_id", "step"])
        .cte("new_usage_records")
    )
    events = event_rows()
    drawn = select(*events.c).where(events.c.job_id.in_(select(kept.c.id)))
    appended = appending(drawn, after=[kept], owners=event_owners())
    return (
        select(kept.c.id.label("kept_id"), *appended_columns(appended))
        .outerjoin_from(kept, appended, appended.c.job_id == kept.c.id)
        .add_cte(assets)
        .add_cte(usage)
    )


async def record_finishes(session: AsyncSession, finishes: Sequence[Finish]) -> list[list[Event] | None]:
    """Record ended steps and jobs, many at once, inside the caller's transaction; each answered with
    its events.

    Fenced on the attempt (and a step on the step count, so it is recorded once): an item
    whose attempt lost the job is answered None and writes nothing.
    """
    await lock_in_order(session, (f.claimed.id for f in finishes))
    steps = [f for f in finishes if isinstance(f, StepFinished)]
    ends = [f for f in finishes if isinstance(f, JobEnded)]
    assets = [
        {**a, "owner_id": f.claimed.owner_id, "job_id": f.claimed.id, "source": "job"} for f in steps for a in f.assets
    ]
    new = [
        NewEvent(f.claimed.id, f.claimed.owner_id, kind, data)
        for f in finishes
        for kind, data in (f.events if isinstance(f, StepFinished) else [(f"job.{f.status}", f.data)])
    ]
    params = {
        **_finished_steps().params(map(_step_row, steps)),
        **_ended_jobs().params((e.claimed.id, e.claimed.attempt, e.status, e.code, e.message) for e in ends),
        **{f"asset_{name}": [asset[name] for asset in assets] for name, _ in _NEW_ASSET},
        **_usage_rows(finishes),
        **event_params(new),
    }
    rows = (await session.execute(_finish_statement(), params)).all()  # a row per kept job, or per its event
    recorded: dict[uuid.UUID, list[Event]] = {row.kept_id: [] for row in rows}
    for event in await appended_events(session, rows):
        recorded[event.job_id].append(event)
    return [recorded.get(f.claimed.id) for f in finishes]


async def record_event(session: AsyncSession, claimed: ClaimedJob, kind: str, data: dict) -> Event | None:
    """An event that changes nothing else (progress), only while the attempt still owns the job."""
    stmt = _fenced(claimed.id, claimed.attempt).values(progress=data.get("progress", Job.progress))
    if (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is None:
        await session.rollback()
        return None
    [event] = await append_events(session, [NewEvent(claimed.id, claimed.owner_id, kind, data)])
    await session.commit()
    return event


async def cancel_queued(session: AsyncSession, job: Job) -> Event | None:
    """Cancel a job no worker holds, at once; None when a worker claimed it meanwhile."""
    stmt = (
        update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(status="canceled", completed_at=func.now(), cancel_requested_at=func.now())
    )
    if (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is None:
        await session.rollback()
        return None
    [event] = await append_events(session, [NewEvent(job.id, job.owner_id, "job.canceled", {"status": "canceled"})])
    await session.commit()
    return event


async def request_cancel(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """Ask the worker running a job to stop; it checks between steps (the dispatcher also aborts the call)."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(cancel_requested_at=func.coalesce(Job.cancel_requested_at, func.now()))
    )
    done = (await session.execute(stmt.returning(Job.id))).scalar_one_or_none() is not None
    await session.commit()
    return done


@dataclass(frozen=True)
class ProviderLoad:
    queued: int
    running: int


async def provider_load(session: AsyncSession) -> dict[str, ProviderLoad]:
    """Jobs waiting for and running on each provider's pool."""
    stmt = (
        select(Job.provider, Job.status, func.count())
        .where(Job.status.in_(("queued", "running")))
        .group_by(Job.provider, Job.status)
    )
    counts: dict[str, dict[str, int]] = {}
    for provider, status, count in await session.execute(stmt):
        counts.setdefault(provider, {})[status] = count
    return {p: ProviderLoad(c.get("queued", 0), c.get("running", 0)) for p, c in counts.items()}


async def job_assets(session: AsyncSession, job_id: uuid.UUID) -> list[Asset]:
    stmt = select(Asset).where(Asset.job_id == job_id, Asset.deleted_at.is_(None)).order_by(Asset.id)
    return list((await session.execute(stmt)).scalars())
