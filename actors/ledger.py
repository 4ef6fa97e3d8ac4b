"""The usage ledger: a named singleton actor, the one writer of credit entries.

Postgres holds the truth (storage/ledger.py); the actor keeps no balance of its own, so a
restart loses nothing. It also queues jobs, in the transaction that holds their credits, and ends
them, in the transaction that settles them, so a job is never seen queued without its credits
held, nor ended with them still held. Calls that arrive together share one
transaction (group commit).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import ray

from daygen.logs import configure_logging
from daygen.runtime import tune_garbage_collector
from daygen.settings import Settings
from pipelines import payments
from pipelines.auto_top_up import buy_auto_top_ups
from pipelines.batching import Batcher
from pipelines.billing_config import BillingConfig
from pipelines.jobs import QueueAnswer, ending, one_key_each, queue_jobs
from pipelines.payments import TopUp
from storage import admin, allowances, ledger
from storage.db import make_engine, make_sessionmaker
from storage.events import JobEvents
from storage.jobs import Finish, NewJob
from storage.redis import make_redis

log = logging.getLogger("daygen.ledger")

LEDGER_NAME = "daygen-ledger"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class UsageLedger:
    async def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level)
        self.settings = settings
        billing = BillingConfig.load(settings.billing_config)
        self.allowances = {name: plan.allowance for name, plan in billing.plans.items()}
        self.packs = billing.packs
        key = settings.stripe_secret_key
        self.stripe = payments.make_client(key.get_secret_value(), settings.stripe_api_base) if key else None
        self.sessions = make_sessionmaker(make_engine(settings.database_url, pool_size=8))
        self.queuing = Batcher(self._queue_many, max_size=500)
        self.settling = Batcher(self._settle_many, max_size=500)
        self.events = JobEvents(make_redis(settings.redis_url), settings.redis_namespace)
        self.ending = ending(self.sessions, self.events.publish)
        self.upkeep_task = asyncio.create_task(self._upkeep())
        tune_garbage_collector()

    async def _upkeep(self) -> None:
        """Monthly allowances and auto top-ups, looked for every `allowance_check_seconds`: a new month's
        allowances are granted within that of its start, an account moved to a plan with one gets it as
        soon, and a balance that fell under its auto top-up threshold otherwise than by a submit (a
        revoke), or a charge Stripe could not answer, is seen to as soon."""
        while True:
            try:
                await self.reset_allowances()
                await self.auto_top_up()
            except Exception:
                log.exception("could not reset allowances or top up; trying again later")
            await asyncio.sleep(self.settings.allowance_check_seconds)

    async def reset_allowances(self, now: datetime | None = None) -> list[allowances.Reset]:
        """Grant every due account its plan's allowance for the month of `now` (the clock's by default:
        tests pass their own), expiring what it left of the last; once per account and month."""
        return await allowances.reset_due(self.sessions, self.allowances, now or datetime.now(UTC))

    async def _queue_many(self, jobs: list[NewJob]) -> list[QueueAnswer]:
        answers: dict[uuid.UUID, QueueAnswer] = {}
        for batch in one_key_each(jobs):
            async with self.sessions.begin() as session:
                queued, events = await queue_jobs(session, batch)
            await self.events.publish(*events)
            answers.update((job.id, answer) for job, answer in zip(batch, queued, strict=True))
        return [answers[job.id] for job in jobs]

    async def _settle_many(self, charges: list[tuple[uuid.UUID, Decimal]]) -> list[ledger.Settlement | None]:
        async with self.sessions.begin() as session:
            return await ledger.settle_many(session, charges)

    async def end(self, endings: list[tuple[Finish, Decimal]]) -> list[bool]:
        """End jobs (their last step's outputs, or their failure), settle each for what it charged and
        announce the ends; each answered False when its attempt had lost the job (nothing written)."""
        return await self.ending.many(endings)

    async def queue(self, jobs: list[NewJob]) -> list[QueueAnswer]:
        """Hold each job's price and queue it, one transaction for whatever arrives meanwhile; each judged
        in order. A refusal is a normal answer, not an exception across Ray; safe to repeat."""
        return await self.queuing.many(jobs)

    async def adjust(self, adjustment: admin.Adjustment) -> ledger.Adjusted:
        """An admin's grant or revoke of credits and its audit record, in one transaction; safe to repeat
        (the adjustment's key)."""
        async with self.sessions.begin() as session:
            return await admin.adjust_credits(session, adjustment)

    async def auto_top_up(self, user_id: uuid.UUID | None = None) -> int:
        """Buy each account's auto top-up pack once for each time its balance fell under its threshold
        (one account's, or every one's); answers how many were bought now."""
        if self.stripe is None:
            return 0
        return await buy_auto_top_ups(self.sessions, self.stripe, self.packs, user_id)

    async def top_up(self, top_up: TopUp) -> bool:
        """A paid credit pack's credits; whether they were added now (False: a repeat of its session)."""
        async with self.sessions.begin() as session:
            return await ledger.append_entry(
                session,
                account_id=top_up.user_id,
                kind="topup",
                amount=top_up.credits,
                idempotency_key=top_up.key,
                reason=top_up.reason,
            )

    async def settle(self, charges: list[tuple[uuid.UUID, Decimal]]) -> list[ledger.Settlement | None]:
        """(job id, credits charged) each; safe to repeat."""
        return await self.settling.many(charges)
