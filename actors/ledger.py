"""The usage ledger: a named singleton actor, the one writer of credit debits.

Postgres holds the truth (storage/ledger.py); the actor keeps no balance of its own,
so a restart loses nothing.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import ray

from daygen.errors import InsufficientCredits
from daygen.logs import configure_logging
from daygen.settings import Settings
from storage import ledger
from storage.db import make_engine, make_sessionmaker

LEDGER_NAME = "daygen-ledger"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class UsageLedger:
    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level)
        self.sessions = make_sessionmaker(make_engine(settings.database_url, pool_size=8))

    async def reserve(self, account_id: uuid.UUID, job_id: uuid.UUID, amount: Decimal) -> dict:
        """Answers {accepted, balance}: a refusal is a normal answer, not an exception across Ray."""
        async with self.sessions.begin() as session:
            try:
                left = await ledger.reserve(session, account_id=account_id, job_id=job_id, amount=amount)
            except InsufficientCredits as exc:
                return {"accepted": False, **exc.details}
        return {"accepted": True, "balance": float(left)}

    async def settle(self, job_id: uuid.UUID, charged: Decimal) -> str | None:
        async with self.sessions.begin() as session:
            return await ledger.settle(session, job_id=job_id, charged=charged)
