"""Working through the webhook outbox: claim due deliveries, build each body, send it signed, record
what happened and when to try again. No Ray in here; `actors/webhooks.py` runs it in a loop."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pipelines.webhooks import deliver, event_payload, new_secret, next_attempt_delay
from storage import jobs as job_queries
from storage import webhooks as queries
from storage.models import Job, JobEvent

log = logging.getLogger("daygen.webhooks")

AssetUrl = Callable[[str], Awaitable[str]]


@dataclass
class Outbox:
    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    asset_url: AssetUrl
    allowed_hosts: frozenset[str]
    schedule: tuple[float, ...]
    timeout_seconds: float = 5.0
    max_response_bytes: int = 64 * 1024
    concurrency: int = 32
    rng: random.Random = field(default_factory=random.Random)

    @property
    def lease_seconds(self) -> float:
        # Longer than one attempt can take, so a live sender never loses its claim.
        return self.timeout_seconds * 3 + 5

    async def send_due(self) -> int:
        """Send what is due now (at most `concurrency` at once); how many were sent.

        One receiver's deliveries go one after another in event order, so its first attempts
        arrive in the order things happened (a retry can still overtake); receivers in parallel."""
        async with self.sessions() as session:
            due = await queries.claim_due(session, limit=self.concurrency, lease_seconds=self.lease_seconds)
        receivers: dict[Any, list[queries.DueDelivery]] = {}
        for delivery in sorted(due, key=lambda d: d.event_id):
            receivers.setdefault(delivery.endpoint_id or delivery.url, []).append(delivery)

        async def in_order(deliveries: list[queries.DueDelivery]) -> None:
            for delivery in deliveries:
                await self._send(delivery)

        await asyncio.gather(*map(in_order, receivers.values()))
        return len(due)

    async def _send(self, delivery: queries.DueDelivery) -> None:
        try:
            async with self.sessions() as session:
                secrets = await queries.signing_secrets(session, delivery.owner_id, datetime.now(UTC))
                if not secrets:
                    secrets = [(await queries.ensure_secret(session, delivery.owner_id, new_secret())).webhook_secret]
                payload = await self._payload(session, delivery)
            result = await deliver(
                self.http,
                delivery.url,
                secrets,
                str(delivery.id),
                payload,
                allowed_hosts=self.allowed_hosts,
                timeout_seconds=self.timeout_seconds,
                max_response_bytes=self.max_response_bytes,
            )
            retry_in = None
            if not result.ok:
                retry_in = next_attempt_delay(delivery.attempts + 1, self.schedule, result.retry_after, self.rng)
            async with self.sessions() as session:
                await queries.record_attempt(
                    session,
                    delivery,
                    ok=result.ok,
                    status_code=result.status,
                    error=result.error,
                    response=result.response_excerpt,
                    retry_in=retry_in,
                    gone=result.gone,
                )
            log.info(
                "webhook attempt",
                extra={
                    "delivery_id": str(delivery.id),
                    "job_id": str(delivery.job_id),
                    "event_type": delivery.event_type,
                    "status": result.status,
                    "ok": result.ok,
                    "retry_in_s": retry_in,
                    "error": result.error,
                },
            )
        except Exception:
            # Its lease runs out and it is claimed again: a crash here never loses the delivery.
            log.exception("webhook delivery crashed", extra={"delivery_id": str(delivery.id)})

    async def _payload(self, session: AsyncSession, delivery: queries.DueDelivery) -> dict[str, Any]:
        """The Standard Webhooks body: the event, with the job as it stood then (its images once it ended)."""
        event = await session.get(JobEvent, delivery.event_id)
        job = await session.get(Job, delivery.job_id)
        if event is None or job is None:
            raise LookupError(f"delivery {delivery.id} refers to an event or job that is gone")
        data = event.data or {}
        terminal = delivery.event_type in queries.TERMINAL_EVENT_TYPES
        assets = []
        if terminal:
            for asset in await job_queries.job_assets(session, job.id):
                assets.append(
                    {
                        "id": str(asset.id),
                        "url": await self.asset_url(asset.key),
                        "contentType": asset.content_type,
                        "width": asset.width,
                        "height": asset.height,
                    }
                )
        return event_payload(
            delivery.event_type,
            event.created_at,
            {
                "jobId": str(job.id),
                "status": job.status if terminal else data.get("status", "running"),
                "progress": job.progress if terminal else data.get("progress", job.progress),
                "resultUrl": assets[-1]["url"] if assets else None,
                "assets": assets,
            },
        )
