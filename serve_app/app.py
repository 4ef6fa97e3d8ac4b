"""The whole topology in one place: the ingress deployment and the actors it talks to."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from actors.dispatcher import DISPATCHER_NAME, JobDispatcher
from actors.ledger import LEDGER_NAME, UsageLedger
from actors.pools import ProviderWorker, pool_name
from actors.webhooks import WEBHOOK_SENDER_NAME, WebhookSender
from daygen.logs import configure_logging
from daygen.runtime import tune_garbage_collector
from daygen.settings import Settings
from pipelines.pool_config import ProviderPools
from serve_app.api import create_api
from serve_app.services import Services


@serve.deployment(
    name="daygen-api",
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},
)
@serve.ingress()
class Api:
    """Thin shell: holds this replica's services and builds the FastAPI app around them."""

    def __init__(self, settings: Settings, pools: ProviderPools, ledger, dispatcher) -> None:
        configure_logging(settings.log_level)
        self.settings = settings
        self.services = Services.build(settings, pools, ledger, dispatcher)
        tune_garbage_collector()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.settings, self.services)


def build_app(settings: Settings) -> Application:
    """Create (or find) the named actors, then bind the ingress to them.

    The actors are detached: they outlive the driver that made them (a cluster keeps running
    jobs between deploys) and end with the Ray cluster.
    """
    settings.require_complete()
    pools = ProviderPools.load(settings.providers_config)
    singleton = {"get_if_exists": True, "lifetime": "detached"}
    ledger = UsageLedger.options(name=LEDGER_NAME, **singleton).remote(settings)
    for provider, pool in sorted(pools.pools.items()):
        for index in range(pool.actors):
            ProviderWorker.options(name=pool_name(provider, index), **singleton).remote(settings, pools, provider)
    dispatcher = JobDispatcher.options(name=DISPATCHER_NAME, **singleton).remote(settings, pools)
    WebhookSender.options(name=WEBHOOK_SENDER_NAME, **singleton).remote(settings)
    # Every open WebSocket is an ongoing request of the replica: room for them and for requests.
    api = Api.options(num_replicas=settings.api_replicas, max_ongoing_requests=settings.api_max_ongoing_requests)
    return api.bind(settings, pools, ledger, dispatcher)


def from_environment(args: dict[str, str] | None = None) -> Application:
    """Entry point for `serve deploy configs/serve.yaml`: settings from the DAYGEN_* environment."""
    return build_app(Settings())
