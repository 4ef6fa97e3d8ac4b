"""The job dispatcher: claims queued jobs from Postgres and runs them on the provider pools.

Each provider gets at most its `max_running_jobs` at once (configs/providers.yaml), claimed
fairly between users; its steps go to the provider's pool actors in turn (`actors.pools.PoolSteps`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import ray
from ray.actor import ActorHandle

from actors.ledger import LEDGER_NAME
from actors.pools import PoolSteps
from daygen.logs import configure_logging
from daygen.runtime import tune_garbage_collector
from daygen.settings import Settings
from pipelines.batching import Batcher
from pipelines.billing_config import BillingConfig
from pipelines.jobs import LeaseKeeper, execute_job, expire_vanished, recorder, settle_unsettled
from pipelines.operations import OPERATIONS
from pipelines.pool_config import ProviderPools
from pipelines.steps import StepOutcome
from storage import jobs as job_queries
from storage.assets import prune_expired
from storage.db import listen, make_engine, make_sessionmaker
from storage.events import Event, JobEvents
from storage.objects import ObjectStore
from storage.redis import make_redis

log = logging.getLogger("daygen.dispatcher")

DISPATCHER_NAME = "daygen-dispatcher"
POLL_SECONDS = 1.0
RECONCILE_SECONDS = 30.0
PRUNE_EVERY = 2  # reconciliations


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class JobDispatcher:
    async def __init__(self, settings: Settings, pools: ProviderPools) -> None:
        """Peers are found by name and the loop starts here, so a restarted dispatcher carries on alone."""
        configure_logging(settings.log_level)
        self.settings = settings
        self.pools = pools
        self.peers: dict[str, ActorHandle] = {}
        self.steps = {provider: PoolSteps(provider, pool.actors, self._peer) for provider, pool in pools.pools.items()}
        self.provider_costs = BillingConfig.load(settings.billing_config).provider_costs
        self.sessions = make_sessionmaker(make_engine(settings.database_url, pool_size=16))
        # The claim's plan is made afresh each time: with a generic plan from a nearly empty jobs
        # table, a fresh database's first burst of 2,000 jobs was claimed in one statement of 164 s.
        self.claim_sessions = make_sessionmaker(
            make_engine(settings.database_url, pool_size=len(pools.pools), plan_each_time=True)
        )
        self.events = JobEvents(make_redis(settings.redis_url), settings.redis_namespace)
        self.store = ObjectStore.from_settings(settings)
        self.wakeup = asyncio.Event()
        self.due: set[str] = set(pools.pools)  # providers that may have claimable jobs
        self.backlog: set[str] = set()  # providers whose last claim filled their room: more are queued
        self.running: dict[str, set[asyncio.Task]] = {provider: set() for provider in pools.pools}
        self.cancels: dict[uuid.UUID, asyncio.Event] = {}
        # Whatever finishes meanwhile shares one transaction (one ledger call for the ends) and one Redis round trip.
        self.record = recorder(self.sessions)
        self.ending = Batcher(self._end_many, max_size=500)
        self.publishing = Batcher(self._publish_many, max_size=500)
        # New jobs are claimed as their transaction commits; the poll is for leases that run out.
        self.listener = asyncio.create_task(listen(settings.database_url, job_queries.QUEUED_CHANNEL, self._queued))
        self.loop_task = asyncio.create_task(self._loop())
        self.upkeep_task = asyncio.create_task(self._upkeep())
        self.leases = LeaseKeeper(self.sessions, settings.job_lease_seconds)
        self.lease_task = asyncio.create_task(self.leases.run())
        tune_garbage_collector()

    async def cancel(self, job_id: uuid.UUID) -> bool:
        """Abort a job this dispatcher runs; False if it runs elsewhere (its lease keeper will notice)."""
        event = self.cancels.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    def _peer(self, name: str) -> ActorHandle:
        if name not in self.peers:
            self.peers[name] = ray.get_actor(name)
        return self.peers[name]

    async def _run_step(self, operation: str, params: dict[str, Any], inputs: dict[str, Any]) -> StepOutcome:
        return await self.steps[OPERATIONS[operation].provider].run(operation, params, inputs)

    async def _settle(self, job_id: uuid.UUID, charged: Decimal) -> Any:
        return await self._peer(LEDGER_NAME).settle.remote([(job_id, charged)])

    async def _end_many(self, endings: list[tuple[job_queries.Finish, Decimal]]) -> list[bool]:
        return await self._peer(LEDGER_NAME).end.remote(endings)

    async def _end(self, finish: job_queries.Finish, charged: Decimal) -> bool:
        return await self.ending((finish, charged))

    async def _publish_many(self, groups: list[tuple[Event, ...]]) -> list[None]:
        await self.events.publish(*(event for group in groups for event in group))
        return [None] * len(groups)

    async def _publish(self, *events: Event) -> None:
        if events:
            await self.publishing(events)

    def _queued(self, provider: str = "") -> None:
        """A transaction queued jobs for `provider` ("": for any, or unknown)."""
        self._due(*([provider] if provider in self.pools.pools else self.pools.pools))

    def _due(self, *providers: str) -> None:
        self.due.update(providers)
        self.wakeup.set()

    async def _loop(self) -> None:
        while True:
            self.wakeup.clear()  # before claiming: a wake that arrives meanwhile brings another round
            due, self.due = self.due, set()
            try:
                self.due |= await self._claim_round(due)
            except Exception:
                log.exception("dispatch round failed")
                self.due |= due
            if self.due:
                continue
            try:
                await asyncio.wait_for(self.wakeup.wait(), POLL_SECONDS)
            except TimeoutError:
                self._due(*self.pools.pools)  # leases that ran out tell no one

    async def _upkeep(self) -> None:
        """Off the claim path: settle what a crash left unsettled, give back what vanished jobs held (a
        page of the ledger a round), delete expired uploads."""
        rounds = 0
        ended_since: datetime | None = None  # the first pass looks at every job
        reservations_after = 0
        while True:
            try:
                if rounds % PRUNE_EVERY == 0:
                    await prune_expired(self.sessions, self.store, datetime.now(UTC))
                ended_since = await settle_unsettled(self.sessions, self._settle, ended_since)
                reservations_after = await expire_vanished(
                    self.sessions, self._settle, reservations_after, datetime.now(UTC)
                )
            except Exception:
                log.exception("upkeep round failed")
            rounds += 1
            await asyncio.sleep(RECONCILE_SECONDS)

    async def _claim_round(self, providers: set[str]) -> set[str]:
        """Claim work for each of `providers` that has room, all at once; answers those that may have more."""
        free = {p: self.pools[p].max_running_jobs - len(self.running[p]) for p in providers}
        wanted = [p for p, room in free.items() if room > 0]
        claimed = await asyncio.gather(*(self._claim(p, free[p]) for p in wanted))
        more = {p for p, got in zip(wanted, claimed, strict=True) if got == free[p]}
        self.backlog = (self.backlog - set(wanted)) | more
        return more

    async def _claim(self, provider: str, limit: int) -> int:
        async with self.claim_sessions() as session:
            claimed = await job_queries.claim_jobs(
                session, provider=provider, limit=limit, lease_seconds=self.settings.job_lease_seconds
            )
        running = self.running[provider]
        for job in claimed:
            task = asyncio.create_task(self._execute(job))
            running.add(task)
            task.add_done_callback(functools.partial(self._job_done, provider))
        # Queued before any of the tasks above runs, so each job's start is announced before its progress.
        await self._publish(*(job.started for job in claimed if job.started is not None))
        return len(claimed)

    def _job_done(self, provider: str, task: asyncio.Task) -> None:
        self.running[provider].discard(task)
        if provider in self.backlog:  # room for one of its queued jobs (new ones ring on their own)
            self._due(provider)

    async def _execute(self, job: job_queries.ClaimedJob) -> None:
        cancel = self.cancels[job.id] = asyncio.Event()
        self.leases.hold(job, cancel)
        try:
            await execute_job(
                job,
                sessions=self.sessions,
                run_step=self._run_step,
                record=self.record,
                end=self._end,
                publish=self._publish,
                cancel=cancel,
                provider_costs=self.provider_costs,
            )
        except Exception:
            log.exception(
                "job execution failed; its lease will expire and it will be retried", extra={"job_id": str(job.id)}
            )
        finally:
            self.leases.drop(job.id)
            self.cancels.pop(job.id, None)
