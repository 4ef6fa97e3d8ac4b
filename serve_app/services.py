"""What a replica of the ingress holds: database, Redis, object store and actor handles."""

from __future__ import annotations

from dataclasses import dataclass

from ray.actor import ActorHandle
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from stripe import StripeClient

from daygen.settings import Settings
from pipelines.batching import Batcher
from pipelines.billing_config import BillingConfig
from pipelines.jobs import QueueAnswer
from pipelines.payments import make_client
from pipelines.pool_config import ProviderPools
from pipelines.submit_rates import SubmitRates
from serve_app import signing
from serve_app.live import EventHub
from serve_app.security import hash_password
from storage.db import make_engine, make_read_sessionmaker, make_sessionmaker
from storage.events import JobEvents
from storage.jobs import NewJob
from storage.objects import ObjectStore
from storage.redis import make_redis

HUB_CONNECTIONS = 4


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    reads: async_sessionmaker[AsyncSession]  # lone reads, one round trip each (`make_read_sessionmaker`)
    redis: Redis
    events: JobEvents
    store: ObjectStore
    pools: ProviderPools
    billing: BillingConfig
    submit_rates: SubmitRates
    ledger: ActorHandle
    dispatcher: ActorHandle
    jwt_secret: str
    files_secret: bytes
    stripe: StripeClient | None  # None without DAYGEN_STRIPE_SECRET_KEY: no payments here
    decoy_password_hash: str
    hub: EventHub | None = None
    queuing: Batcher | None = None

    async def queue(self, jobs: list[NewJob]) -> list[QueueAnswer]:
        """Hold credits and queue the jobs through the ledger, each judged in order; the replica's
        concurrent submits share one call to it."""
        if self.queuing is None:  # on first use: services built without a ledger never queue
            self.queuing = Batcher(self.ledger.queue.remote, max_size=500)
        return await self.queuing.many(jobs)

    async def event_hub(self) -> EventHub:
        """The replica's live-event reader, made on first use (it needs the replica's event loop).

        Its reads of the log have connections of their own: requests wait on the hub (a waiter
        joining, a socket subscribing) while holding one of theirs, and with a shared pool a burst
        of them could take every connection the hub needs to answer them."""
        if self.hub is None:
            engine = make_engine(self.settings.database_url, pool_size=HUB_CONNECTIONS)
            self.hub = EventHub(make_redis(self.settings.redis_url), self.events, make_sessionmaker(engine))
        return self.hub

    @classmethod
    def build(cls, settings: Settings, pools: ProviderPools, ledger: ActorHandle, dispatcher: ActorHandle) -> Services:
        settings.require_complete()
        # Requests come in bursts (a thousand WebSockets connecting): room for them past the pool.
        engine = make_engine(settings.database_url, pool_size=20, max_overflow=20)
        redis = make_redis(settings.redis_url)
        jwt_secret = settings.jwt_secret.get_secret_value()
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            reads=make_read_sessionmaker(engine),
            redis=redis,
            events=JobEvents(redis, settings.redis_namespace),
            store=ObjectStore.from_settings(settings),
            pools=pools,
            billing=BillingConfig.load(settings.billing_config),
            submit_rates=SubmitRates(redis, settings.redis_namespace),
            ledger=ledger,
            dispatcher=dispatcher,
            jwt_secret=jwt_secret,
            files_secret=signing.files_secret(jwt_secret),
            stripe=(
                make_client(settings.stripe_secret_key.get_secret_value(), settings.stripe_api_base)
                if settings.stripe_secret_key
                else None
            ),
            # Logins for unknown emails verify against this, so they take as long as real ones.
            decoy_password_hash=hash_password("decoy password, never matches"),
        )
