"""Webhook rows: endpoints, signing secrets, and the delivery outbox the sender works through.

A delivery row is written in the transaction of the event it carries (`enqueue_deliveries`,
called by `storage.events.append_events`), so an event that happened is never left unsent, and
the sender's retries are rows too, so they survive restarts. The sender claims due rows with
a lease; a sender that dies mid-send leaves rows whose lease runs out and another claims them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from daygen.ids import uuid7
from storage.models import User, WebhookDelivery, WebhookEndpoint

TERMINAL_EVENT_TYPES = ("job.succeeded", "job.failed", "job.canceled")


async def enqueue_deliveries(
    session: AsyncSession,
    events: Sequence[tuple[int, uuid.UUID, uuid.UUID, str, Sequence[uuid.UUID] | None, str | None]],
) -> int:
    """Outbox rows for new events, given as (event id, job id, owner id, type, endpoint ids, job URL):
    one per endpoint (the owner's enabled ones that want the type, as `storage.events` finds them in
    the statement that appends the events), and one for the job's own webhookUrl (given only when the
    event ends the job). Inside the caller's transaction; nothing to do, no round trip."""
    rows = [
        {
            "id": uuid7(),
            "owner_id": owner_id,
            "endpoint_id": endpoint_id,
            "url": url,
            "job_id": job_id,
            "event_id": event_id,
            "event_type": kind,
            "status": "pending",
            "attempts": 0,
        }
        for event_id, job_id, owner_id, kind, endpoint_ids, job_url in events
        for endpoint_id, url in [*((e, None) for e in endpoint_ids or ()), *([(None, job_url)] if job_url else [])]
    ]
    if rows:
        await session.execute(insert(WebhookDelivery), rows)
    return len(rows)


# -- signing secrets ----------------------------------------------------------------------------


async def signing_secrets(session: AsyncSession, owner_id: uuid.UUID, now: datetime) -> list[str]:
    """The secrets a delivery is signed with: the current one, and the previous one while it overlaps."""
    user = await session.get(User, owner_id)
    if user is None or user.webhook_secret is None:
        return []
    secrets = [user.webhook_secret]
    if user.webhook_secret_previous and user.webhook_secret_previous_until and user.webhook_secret_previous_until > now:
        secrets.append(user.webhook_secret_previous)
    return secrets


async def ensure_secret(session: AsyncSession, owner_id: uuid.UUID, new_secret: str) -> User:
    """The user with a signing secret, `new_secret` stored if they had none (first use)."""
    await session.execute(
        update(User).where(User.id == owner_id, User.webhook_secret.is_(None)).values(webhook_secret=new_secret)
    )
    await session.commit()
    user = await session.get(User, owner_id, populate_existing=True)
    assert user is not None
    return user


async def rotate_secret(session: AsyncSession, owner_id: uuid.UUID, new_secret: str, overlap: timedelta) -> User:
    """Replace the secret; the old one keeps signing alongside for `overlap`, so receivers can switch."""
    await session.execute(
        update(User)
        .where(User.id == owner_id)
        .values(
            webhook_secret_previous=User.webhook_secret,
            webhook_secret_previous_until=func.now() + overlap,
            webhook_secret=new_secret,
            updated_at=func.now(),
        )
    )
    await session.commit()
    user = await session.get(User, owner_id, populate_existing=True)
    assert user is not None
    return user


# -- endpoints ---------------------------------------------------------------------------------


async def create_endpoint(
    session: AsyncSession, owner_id: uuid.UUID, *, url: str, description: str | None, event_types: list[str]
) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(
        owner_id=owner_id, url=url, description=description, event_types=event_types, enabled=True
    )
    session.add(endpoint)
    await session.commit()
    await session.refresh(endpoint)
    return endpoint


async def get_endpoint(session: AsyncSession, owner_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.owner_id == owner_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_endpoints(
    session: AsyncSession, owner_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> list[WebhookEndpoint]:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.owner_id == owner_id)
    if before is not None:
        stmt = stmt.where(WebhookEndpoint.id < before)
    return list((await session.execute(stmt.order_by(WebhookEndpoint.id.desc()).limit(limit))).scalars())


async def update_endpoint(session: AsyncSession, endpoint: WebhookEndpoint, changes: dict[str, Any]) -> WebhookEndpoint:
    for name, value in changes.items():
        setattr(endpoint, name, value)
    if changes.get("enabled"):
        endpoint.disabled_reason = None
    endpoint.updated_at = func.now()
    await session.commit()
    await session.refresh(endpoint)
    return endpoint


async def delete_endpoint(session: AsyncSession, endpoint: WebhookEndpoint) -> None:
    await session.delete(endpoint)
    await session.commit()


# -- deliveries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DueDelivery:
    id: uuid.UUID
    owner_id: uuid.UUID
    endpoint_id: uuid.UUID | None
    url: str
    job_id: uuid.UUID
    event_id: int
    event_type: str
    attempts: int


async def claim_due(session: AsyncSession, *, limit: int, lease_seconds: float) -> list[DueDelivery]:
    """Take due deliveries (and ones whose sender died mid-send), oldest first, under a lease."""
    due = or_(
        and_(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= func.now()),
        and_(WebhookDelivery.status == "delivering", WebhookDelivery.lease_expires_at < func.now()),
    )
    picked = (
        select(WebhookDelivery.id)
        .where(due)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(picked.scalar_subquery()))
        .values(status="delivering", lease_expires_at=func.now() + timedelta(seconds=lease_seconds))
        .returning(WebhookDelivery.id)
    )
    ids = list((await session.execute(claimed)).scalars())
    if not ids:
        await session.commit()
        return []
    rows = await session.execute(
        select(
            WebhookDelivery.id,
            WebhookDelivery.owner_id,
            WebhookDelivery.endpoint_id,
            func.coalesce(WebhookEndpoint.url, WebhookDelivery.url),
            WebhookDelivery.job_id,
            WebhookDelivery.event_id,
            WebhookDelivery.event_type,
            WebhookDelivery.attempts,
        )
        .outerjoin(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id.in_(ids))
        .order_by(WebhookDelivery.next_attempt_at)
    )
    await session.commit()
    return [DueDelivery(*row) for row in rows]


async def record_attempt(
    session: AsyncSession,
    delivery: DueDelivery,
    *,
    ok: bool,
    status_code: int | None,
    error: str | None,
    response: str,
    retry_in: float | None,
    gone: bool,
) -> None:
    """The attempt's outcome: delivered, due again in `retry_in` seconds, or given up (None).

    A 410 from an endpoint also disables the endpoint: the receiver asked us to stop.
    """
    values: dict[str, Any] = {
        "attempts": WebhookDelivery.attempts + 1,
        "last_status_code": status_code,
        "last_error": error,
        "last_response": response,
        "lease_expires_at": None,
    }
    if ok:
        values.update(status="succeeded", delivered_at=func.now())
    elif retry_in is not None and not gone:
        values.update(status="pending", next_attempt_at=func.now() + timedelta(seconds=retry_in))
    else:
        values.update(status="failed")
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id, WebhookDelivery.status == "delivering")
        .values(**values)
    )
    if gone and delivery.endpoint_id is not None:
        await session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == delivery.endpoint_id)
            .values(enabled=False, disabled_reason="the receiver answered 410 Gone", updated_at=func.now())
        )
    await session.commit()


async def list_deliveries(
    session: AsyncSession, endpoint_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> list[WebhookDelivery]:
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if before is not None:
        stmt = stmt.where(WebhookDelivery.id < before)
    return list((await session.execute(stmt.order_by(WebhookDelivery.id.desc()).limit(limit))).scalars())


async def redeliver(session: AsyncSession, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDelivery | None:
    """Send a delivery again now, with the whole retry schedule ahead of it; None if not found or in flight."""
    stmt = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status != "delivering",
        )
        .values(status="pending", attempts=0, next_attempt_at=func.now(), delivered_at=None)
        .returning(WebhookDelivery)
    )
    delivery = (await session.execute(stmt)).scalar_one_or_none()
    await session.commit()
    return delivery
