"""Job events: a durable log in Postgres, announced on Redis Streams for live delivery.

An event is appended in the transaction of the change it records, so the log never misses
a change that happened. Redis carries it to live listeners afterwards; a listener that
missed it there (Redis down, a crash before the announcement) finds it in the log.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import JobEvent
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


async def append_events(session: AsyncSession, new: Sequence[NewEvent]) -> list[Event]:
    """Add events inside the caller's transaction, in order; a fixed number of statements for any number.

    The per-owner locks, held until commit, make one owner's event ids commit in order, so a
    reader that has seen id N never later finds a smaller id appear; they are taken in one
    order (sorted) so that two writers can't deadlock. The events' webhook deliveries are
    queued in the same transaction.
    """
    if not new:
        return []
    owners = sorted({str(e.owner_id) for e in new})
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(k, 1)) FROM unnest(CAST(:keys AS text[])) AS k"),
        {"keys": owners},
    )
    rows = [{"job_id": e.job_id, "owner_id": e.owner_id, "type": e.type, "data": e.data} for e in new]
    table = JobEvent.__table__
    stmt = insert(table).returning(table.c.id, table.c.created_at, sort_by_parameter_order=True)
    made = (await session.execute(stmt, rows)).all()
    events = [Event(i, e.job_id, e.owner_id, e.type, e.data, at) for e, (i, at) in zip(new, made, strict=True)]
    await enqueue_deliveries(session, [(e.id, e.job_id, e.owner_id, e.type) for e in events])
    return events


async def append_event(
    session: AsyncSession, *, job_id: uuid.UUID, owner_id: uuid.UUID, type: str, data: dict[str, Any]
) -> Event:
    """One event: `append_events` of one."""
    [event] = await append_events(session, [NewEvent(job_id, owner_id, type, data)])
    return event


async def events_after(
    session: AsyncSession, *, owner_id: uuid.UUID, after: int, job_id: uuid.UUID | None = None, limit: int = 500
) -> list[Event]:
    """The owner's events (of one job, or all) after an id, oldest first."""
    stmt = select(JobEvent).where(JobEvent.owner_id == owner_id, JobEvent.id > after)
    if job_id is not None:
        stmt = stmt.where(JobEvent.job_id == job_id)
    rows = (await session.execute(stmt.order_by(JobEvent.id).limit(limit))).scalars()
    return [Event(r.id, r.job_id, r.owner_id, r.type, r.data, r.created_at) for r in rows]


async def latest_event_id(session: AsyncSession, owner_id: uuid.UUID) -> int:
    """The owner's newest event id, 0 when there is none."""
    latest = await session.scalar(select(func.max(JobEvent.id)).where(JobEvent.owner_id == owner_id))
    return latest or 0


class JobEvents:
    """The live side: each event goes on its owner's stream, a doorbell for the replicas' hubs."""

    def __init__(self, redis: Redis, namespace: str, maxlen: int = 1000) -> None:
        self.redis = redis
        self.namespace = namespace
        self.maxlen = maxlen

    def user_stream(self, owner_id: uuid.UUID | str) -> str:
        return f"{self.namespace}:user:{owner_id}"

    async def publish(self, *events: Event) -> None:
        """Announce committed events; a failure here loses nothing, since the log has them."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for event in events:
                    fields = {
                        "id": event.id,
                        "job": str(event.job_id),
                        "type": event.type,
                        "data": json.dumps(event.data, default=str),
                        "at": event.created_at.isoformat(),
                    }
                    pipe.xadd(self.user_stream(event.owner_id), fields, maxlen=self.maxlen, approximate=True)
                await pipe.execute()
        except RedisError:
            log.warning("could not announce job events; listeners will read them from the log", exc_info=True)
