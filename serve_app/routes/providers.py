"""The provider pools as a client sees them: how many jobs wait and run, and whether a pool is paused."""

from __future__ import annotations

from fastapi import APIRouter

from pipelines.pool_config import pool_key
from pipelines.shared_limits import PoolPause, ProviderOutage
from serve_app.deps import CurrentUser, ServicesDep, SessionDep
from serve_app.routes.jobs import OUTAGE_MESSAGES
from serve_app.schemas import JobError, ProviderList, ProviderOut
from storage import jobs as queries

v1 = APIRouter(prefix="/v1/providers", tags=["providers"])


@v1.get("")
async def list_providers(user: CurrentUser, services: ServicesDep, session: SessionDep) -> ProviderList:
    """Queue depth per provider (all users' jobs), its limits, and the seconds left of a pause after an upstream 429."""
    load = await queries.provider_load(session)
    items = []
    for provider, pool in sorted(services.pools.pools.items()):
        counts = load.get(provider, queries.ProviderLoad(0, 0))
        key = pool_key(services.settings.redis_namespace, provider)
        paused = await PoolPause(services.redis, key).remaining()
        outage = await ProviderOutage(services.redis, key).current()
        items.append(
            ProviderOut(
                provider=provider,
                queued=counts.queued,
                running=counts.running,
                pausedForSeconds=paused,
                unavailable=JobError(
                    code=outage[0], message=OUTAGE_MESSAGES.get(outage[0], "unavailable").format(provider=provider)
                )
                if outage
                else None,
                unavailableForSeconds=outage[1] if outage else 0,
                actors=pool.actors,
                maxRunningJobs=pool.max_running_jobs,
                maxInflightImages=pool.max_inflight_images,
                requestsPerMinute=pool.requests_per_minute,
            )
        )
    return ProviderList(items=items)
