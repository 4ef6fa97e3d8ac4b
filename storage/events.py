"""Job events: a durable log in Postgres, announced on Redis Streams for live delivery.

An event is appended in the transaction of the change it records, so the log never misses
a change that happened. Redis carries it to live listeners afterwards; a listener that
missed it there (Redis down, a crash before the announcement) finds it in the log.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import (
    BigInteger,
    Integer,
    Row,
    Select,
    Text,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import CTE, ColumnElement, ScalarSelect, TableValuedAlias

from storage.db import unnest_rows
from storage.models import Job, JobEvent, WebhookEndpoint
from storage.webhooks import enqueue_deliveries

log = logging.getLogger("daygen.events")

TERMINAL_EVENTS = {"job.succeeded", "job.failed", "job.canceled"}


@dataclass(frozen=True)
class Event:
    id: int
    job_id: uuid.UUID
    owner_id: uuid.UUID
    type: str
    data: dict[str, Any]
    created_at: datetime

    def frame(self, channel: str) -> dict[str, Any]:
        """How a subscriber receives it."""
        return {"channel": channel, "id": self.id, "type": self.type, "jobId": str(self.job_id), "data": self.data}


@dataclass(frozen=True)
class NewEvent:
    job_id: uuid.UUID
    owner_id: uuid.UUID
    type: str
    data: dict[str, Any]


def event_rows(prefix: str = "event_") -> TableValuedAlias:
    """New events given as one array parameter per column (`<prefix>n`, `<prefix>job_id`, ...): `n`
    orders them."""
    columns = [
        ("n", Integer()),
        ("job_id", PgUUID(as_uuid=True)),
        ("owner_id", PgUUID(as_uuid=True)),
        ("type", Text()),
        ("data", JSONB()),
    ]
    return unnest_rows("new_events", columns, prefix=prefix)


def event_params(new: Sequence[NewEvent], prefix: str = "event_") -> dict[str, list]:
    """`event_rows`' parameters."""
    return {
        f"{prefix}n": list(range(len(new))),
        f"{prefix}job_id": [e.job_id for e in new],
        f"{prefix}owner_id": [e.owner_id for e in new],
        f"{prefix}type": [e.type for e in new],
        f"{prefix}data": [e.data for e in new],
    }


def event_owners(prefix: str = "event_") -> Select:
    """The owners of the events `event_rows` gives, from their one array (not the whole rows: the data
    would be decoded again): what `appending` locks."""
    owner_ids = bindparam(f"{prefix}owner_id", type_=ARRAY(PgUUID(as_uuid=True)))
    return select(func.unnest(owner_ids).table_valued(column("owner_id", PgUUID(as_uuid=True))).render_derived())


def owners_locked(owners: Select, *first: ColumnElement[bool]) -> ScalarSelect:
    """The per-owner locks of the event logs of `owners` (a column owner_id), taken in id order, held to
    commit, once `first` (conditions) are evaluated: a count to use as a one-time filter (`>= 0`), which
    Postgres runs before anything else in the statement, so the locks cost no round trip of their own.

    Every transaction that appends events takes them, and one that also changes balances (a job's
    queuing, its end) takes them first: the order that keeps the two from deadlocking."""
    given = owners.subquery("given")
    locking = select(given.c.owner_id).distinct().where(*first).order_by(given.c.owner_id).subquery("owners")
    lock = func.pg_advisory_xact_lock(func.hashtextextended(cast(locking.c.owner_id, Text), 1))
    return select(func.count(lock)).scalar_subquery()


def appending(drawn: Select, after: Sequence[CTE] = (), owners: Select | None = None) -> CTE:
    """The INSERT of the events `drawn` selects (columns n, job_id, owner_id, type, data; ids are drawn
    in the order of n), as a CTE answering (id, job_id, owner_id, type, data, created_at), for a
    statement that makes the change the events record as well: one round trip for both.

    The per-owner locks are taken in the insert's one-time filter, after the CTEs in `after` ran (the
    change's own row locks come first, as when they were separate statements) and before any id is
    drawn; owners in id order, so that two writers can't deadlock. `owners` selects the owners to lock
    (a column owner_id; by default those of `drawn`)."""
    table = JobEvent.__table__
    source = drawn.subquery("drawn")
    ran = [select(func.count()).select_from(cte).scalar_subquery() >= 0 for cte in after]
    locked = owners_locked(owners if owners is not None else select(source.c.owner_id), *ran)
    rows = (
        select(source.c.job_id, source.c.owner_id, source.c.type, source.c.data).where(locked >= 0).order_by(source.c.n)
    )
    return (
        insert(table)
        .from_select(["job_id", "owner_id", "type", "data"], rows)
        .returning(table.c.id, table.c.job_id, table.c.owner_id, table.c.type, table.c.data, table.c.created_at)
        .cte("appended")
    )


def appended_columns(appended: CTE) -> list:
    """What a statement that appends events answers for each: the event, then who receives it by
    webhook — the ids of the owner's enabled endpoints that want its type (or None), and its job's own
    webhookUrl when it ends the job (or None)."""
    endpoints = select(func.array_agg(WebhookEndpoint.id)).where(
        WebhookEndpoint.owner_id == appended.c.owner_id,
        WebhookEndpoint.enabled,
        appended.c.type == func.any(WebhookEndpoint.event_types),
    )
    # The types written out, not `IN (:types)`: an IN of a bound list is an "expanding" parameter that
    # SQLAlchemy renders into the SQL again on every execution, and this is in every job's statements.
    ends_job = or_(*(appended.c.type == literal_column(f"'{kind}'") for kind in sorted(TERMINAL_EVENTS)))
    job_url = select(Job.webhook_url).where(Job.id == appended.c.job_id, ends_job)
    return [
        appended.c.id.label("event_id"),
        appended.c.job_id.label("event_job_id"),
        appended.c.owner_id.label("event_owner_id"),
        appended.c.type.label("event_type"),
        appended.c.data.label("event_data"),
        appended.c.created_at.label("event_created_at"),
        endpoints.scalar_subquery().label("event_endpoints"),
        job_url.scalar_subquery().label("event_job_url"),
    ]


async def appended_events(session: AsyncSession, rows: Sequence[Row]) -> list[Event]:
    """The events a statement with `appended_columns` answered (rows without one skipped), in id order,
    their webhook deliveries queued in the caller's transaction (an insert only when anyone receives them)."""
    events, receivers = [], []
    for row in sorted((r for r in rows if r.event_id is not None), key=lambda r: r.event_id):
        event = Event(
            row.event_id, row.event_job_id, row.event_owner_id, row.event_type, row.event_data, row.event_created_at
        )
        events.append(event)
        if row.event_endpoints or row.event_job_url:
            receivers.append(
                (event.id, event.job_id, event.owner_id, event.type, row.event_endpoints, row.event_job_url)
            )
    await enqueue_deliveries(session, receivers)
    return events


@functools.cache
def _append_statement() -> Select:
    appended = appending(select(*event_rows().c), owners=event_owners())
    return select(*appended_columns(appended))


async def append_events(session: AsyncSession, new: Sequence[NewEvent]) -> list[Event]:
    """Add events inside the caller's transaction, in order; one statement for any number (and an insert
    of webhook deliveries when anyone receives them).

    The per-owner locks, held until commit, make one owner's event ids commit in order, so a
    reader that has seen id N never later finds a smaller id appear. The events' webhook deliveries
    are queued in the same transaction.
    """
    if not new:
        return []
    return await appended_events(session, (await session.execute(_append_statement(), event_params(new))).all())


async def append_event(
    session: AsyncSession, *, job_id: uuid.UUID, owner_id: uuid.UUID, type: str, data: dict[str, Any]
) -> Event:
    """One event: `append_events` of one."""
    [event] = await append_events(session, [NewEvent(job_id, owner_id, type, data)])
    return event


@dataclass(frozen=True)
class LogRead:
    """A read of an owner's event log after an id: of all their jobs, or of one (`job_id`, which must
    be theirs). With `after` None it starts at the owner's newest event (the page is then empty)."""

    owner_id: uuid.UUID
    job_id: uuid.UUID | None = None
    after: int | None = None


@dataclass(frozen=True)
class LogPage:
    after: int  # where the page starts: the read's `after`, or the newest id when it had none
    events: list[Event]


@functools.cache
def _pages_statement(of_one_job: bool) -> Select:
    """Each cursor's events after its id, oldest first, at most `page_size`: one index range scan per
    cursor, by job for one job's channel, else by owner."""
    events = JobEvent.__table__
    columns = [("n", Integer()), ("owner_id", PgUUID(as_uuid=True)), ("after", BigInteger())]
    if of_one_job:
        columns.append(("job_id", PgUUID(as_uuid=True)))
    cursor = unnest_rows("reads", columns)
    match = [events.c.owner_id == cursor.c.owner_id, events.c.id > cursor.c.after]
    if of_one_job:
        match.append(events.c.job_id == cursor.c.job_id)
    page = select(events).where(*match).order_by(events.c.id).limit(bindparam("page_size")).lateral("page")
    return select(cursor.c.n, page).select_from(cursor.join(page, true())).order_by(cursor.c.n, page.c.id)


@functools.cache
def _newest_statement() -> Select:
    cursor = unnest_rows("reads", [("owner_id", PgUUID(as_uuid=True))])
    newest = select(func.max(JobEvent.id)).where(JobEvent.owner_id == cursor.c.owner_id).scalar_subquery()
    return select(cursor.c.owner_id, func.coalesce(newest, 0))


@functools.cache
def _owners_statement() -> Select:
    return select(Job.id, Job.owner_id).where(Job.id == func.any(bindparam("ids", type_=ARRAY(PgUUID(as_uuid=True)))))


async def read_logs(session: AsyncSession, reads: Sequence[LogRead], page_size: int) -> list[LogPage | None]:
    """Many reads of the event log in four statements at most, whatever their number (the replica
    reads for all its sockets at once); None for a job that does not exist or is another owner's."""
    jobs = list({r.job_id for r in reads if r.job_id is not None})
    owners = dict((await session.execute(_owners_statement(), {"ids": jobs})).all()) if jobs else {}
    unstarted = list({r.owner_id for r in reads if r.after is None})
    newest = dict((await session.execute(_newest_statement(), {"owner_id": unstarted})).all()) if unstarted else {}
    starts = [
        None
        if r.job_id is not None and owners.get(r.job_id) != r.owner_id
        else (r.after if r.after is not None else newest[r.owner_id])
        for r in reads
    ]
    pages: list[list[Event]] = [[] for _ in reads]
    for of_one_job in (False, True):
        wanted = [
            (n, r)
            for n, (r, start) in enumerate(zip(reads, starts, strict=True))
            if start is not None and r.after is not None and (r.job_id is not None) == of_one_job
        ]
        if not wanted:
            continue
        params: dict[str, Any] = {
            "n": [n for n, _ in wanted],
            "owner_id": [r.owner_id for _, r in wanted],
            "after": [r.after for _, r in wanted],
            "page_size": page_size,
        }
        if of_one_job:
            params["job_id"] = [r.job_id for _, r in wanted]
        for row in await session.execute(_pages_statement(of_one_job), params):
            pages[row.n].append(Event(row.id, row.job_id, row.owner_id, row.type, row.data, row.created_at))
    return [None if start is None else LogPage(start, page) for start, page in zip(starts, pages, strict=True)]


async def events_after(
    session: AsyncSession, *, owner_id: uuid.UUID, after: int, job_id: uuid.UUID | None = None, limit: int = 500
) -> list[Event]:
    """The owner's events (of one job, or all) after an id, oldest first: `read_logs` of one."""
    [page] = await read_logs(session, [LogRead(owner_id, job_id, after)], limit)
    return page.events if page is not None else []


def announced(owner_id: uuid.UUID, entry: dict[bytes, bytes]) -> list[Event]:
    """The events of one stream entry `JobEvents.publish` wrote, in id order."""
    return [
        Event(e["id"], uuid.UUID(e["job"]), owner_id, e["type"], e["data"], datetime.fromisoformat(e["at"]))
        for e in json.loads(entry[b"events"])
    ]


class JobEvents:
    """The live side: each owner's events go on the owner's stream, a doorbell for the replicas' hubs."""

    def __init__(self, redis: Redis, namespace: str, maxlen: int = 1000) -> None:
        self.redis = redis
        self.namespace = namespace
        self.maxlen = maxlen

    def user_stream(self, owner_id: uuid.UUID | str) -> str:
        return f"{self.namespace}:user:{owner_id}"

    async def publish(self, *events: Event) -> None:
        """Announce committed events: one stream entry per owner, its `events` field the JSON list of
        the owner's events in id order (an entry for each event cost 60 µs of CPU apiece to send).
        A failure here loses nothing, since the log has them."""
        by_owner: dict[uuid.UUID, list[dict[str, Any]]] = {}
        for event in sorted(events, key=lambda e: e.id):
            by_owner.setdefault(event.owner_id, []).append(
                {
                    "id": event.id,
                    "job": str(event.job_id),
                    "type": event.type,
                    "data": event.data,
                    "at": event.created_at.isoformat(),
                }
            )
        entries = [
            (self.user_stream(owner_id), {"events": json.dumps(announced, default=str)})
            for owner_id, announced in by_owner.items()
        ]
        try:
            if len(entries) == 1:  # a lone job's, most often: a pipeline of one costs half as much CPU again
                [(stream, fields)] = entries
                await self.redis.xadd(stream, fields, maxlen=self.maxlen, approximate=True)
            elif entries:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for stream, fields in entries:
                        pipe.xadd(stream, fields, maxlen=self.maxlen, approximate=True)
                    await pipe.execute()
        except RedisError:
            log.warning("could not announce job events; listeners will read them from the log", exc_info=True)
