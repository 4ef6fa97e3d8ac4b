"""The dispatcher's doorbell: Postgres NOTIFY as jobs are queued, and a listener that comes back."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

from sqlalchemy import text

from daygen.ids import uuid7
from storage import jobs as job_queries
from storage.db import listen
from tests.integration.test_job_lifecycle import make_user


class Doorbell:
    def __init__(self) -> None:
        self.rings = 0
        self.payloads: list[str] = []
        self.rang = asyncio.Condition()

    def __call__(self, payload: str) -> None:
        self.rings += 1
        self.payloads.append(payload)
        asyncio.get_running_loop().create_task(self._tell())

    async def _tell(self) -> None:
        async with self.rang:
            self.rang.notify_all()

    async def rings_past(self, count: int) -> None:
        async with self.rang:
            await asyncio.wait_for(self.rang.wait_for(lambda: self.rings > count), 10)


@contextlib.asynccontextmanager
async def listening(database_url: str, channel: str):
    bell = Doorbell()
    task = asyncio.create_task(listen(database_url, channel, bell, retry_seconds=0.05))
    try:
        await bell.rings_past(0)  # the ring on connecting
        yield bell
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def queue_one(sessions, owner) -> None:
    params = {"prompt": "ring", "width": 64, "height": 64, "seed": 1}
    async with sessions.begin() as session:
        await job_queries.insert_jobs(
            session, [job_queries.NewJob(uuid7(), owner, "offline.generate", "offline", params, Decimal(0))]
        )


async def test_queueing_a_job_rings_the_listener_when_it_commits(sessions, quiet_database_url):
    owner = await make_user(sessions)
    async with listening(quiet_database_url, job_queries.QUEUED_CHANNEL) as bell:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))
            rings = bell.rings
            await session.execute(text("SELECT pg_notify(:c, '')"), {"c": job_queries.QUEUED_CHANNEL})
            await asyncio.sleep(0)  # not committed: nothing may arrive
            await session.rollback()
        assert bell.rings == rings
        await queue_one(sessions, owner)
        await bell.rings_past(rings)
        assert bell.payloads[-1] == "offline", "it says for which provider"


async def test_a_listener_whose_connection_is_killed_reconnects_and_rings(sessions, quiet_database_url):
    owner = await make_user(sessions)
    async with listening(quiet_database_url, job_queries.QUEUED_CHANNEL) as bell:
        rings = bell.rings
        async with sessions.begin() as session:
            killed = await session.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%'"
                )
            )
        assert killed == 1
        await bell.rings_past(rings)  # reconnected: rings once for what it may have missed
        rings = bell.rings
        await queue_one(sessions, owner)
        await bell.rings_past(rings)
