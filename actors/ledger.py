"""The usage ledger: a named singleton actor, the one writer of credit entries.

Postgres holds the truth (storage/ledger.py); the actor keeps no balance of its own, so a
restart loses nothing. It also ends jobs, in the transaction that settles them, so a job is
never seen ended with its credits still held. Calls that arrive together share one
transaction (group commit).
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import ray

from daygen.logs import configure_logging
from daygen.runtime import freeze_startup_heap
from daygen.settings import Settings
from pipelines.batching import Batcher
from pipelines.jobs import ender
from storage import ledger
from storage.db import make_engine, make_sessionmaker
from storage.events import JobEvents
from storage.jobs import Finish
from storage.redis import make_redis

LEDGER_NAME = "daygen-ledger"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class UsageLedger:
    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level)
        self.sessions = make_sessionmaker(make_engine(settings.database_url, pool_size=8))
        self.reserving = Batcher(self._reserve_many, max_size=500)
        self.settling = Batcher(self._settle_many, max_size=500)
        self.ending = ender(self.sessions, JobEvents(make_redis(settings.redis_url), settings.redis_namespace).publish)
        freeze_startup_heap()

    async def _reserve_many(self, requests: list[ledger.Reservation]) -> list[ledger.Reserved]:
        async with self.sessions.begin() as session:
            return await ledger.reserve_many(session, requests)

    async def _settle_many(self, charges: list[tuple[uuid.UUID, Decimal]]) -> list[ledger.Settlement | None]:
        async with self.sessions.begin() as session:
            return await ledger.settle_many(session, charges)

    async def end(self, endings: list[tuple[Finish, Decimal]]) -> list[bool]:
        """End jobs (their last step's outputs, or their failure), settle each for what it charged and
        announce the ends; each answered False when its attempt had lost the job (nothing written)."""
        return list(await asyncio.gather(*(self.ending(finish, charged) for finish, charged in endings)))

    async def reserve(self, requests: list[ledger.Reservation]) -> list[ledger.Reserved]:
        """Each request judged in order; a refusal is a normal answer (accepted False), not an exception across Ray."""
        return list(await asyncio.gather(*map(self.reserving, requests)))

    async def settle(self, charges: list[tuple[uuid.UUID, Decimal]]) -> list[ledger.Settlement | None]:
        """(job id, credits charged) each; safe to repeat."""
        return list(await asyncio.gather(*map(self.settling, charges)))
