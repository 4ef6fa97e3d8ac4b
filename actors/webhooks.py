"""The webhook sender: a named actor that works through the delivery outbox in Postgres.

Everything it needs to resume is in the outbox, so a restarted sender (or a second one) just
carries on; its loop starts in `__init__`, which Ray runs again on every restart.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
import ray

from daygen.logs import configure_logging
from daygen.runtime import tune_garbage_collector
from daygen.settings import Settings
from pipelines.webhook_outbox import Outbox
from serve_app.signing import files_secret
from serve_app.urls import build_asset_url
from storage.db import make_engine, make_sessionmaker
from storage.objects import ObjectStore

log = logging.getLogger("daygen.webhooks")

WEBHOOK_SENDER_NAME = "daygen-webhooks"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class WebhookSender:
    async def __init__(self, settings: Settings) -> None:
        configure_logging(settings.log_level)
        store = ObjectStore.from_settings(settings)
        secret = files_secret(settings.jwt_secret.get_secret_value())

        async def asset_url(key: str) -> str:
            return await build_asset_url(settings, store, secret, settings.api_base, key)

        self.outbox = Outbox(
            sessions=make_sessionmaker(make_engine(settings.database_url, pool_size=5)),
            http=httpx.AsyncClient(trust_env=False, follow_redirects=False),
            asset_url=asset_url,
            allowed_hosts=settings.webhook_allowed_host_set,
            schedule=settings.webhook_schedule,
            timeout_seconds=settings.webhook_timeout_seconds,
            max_response_bytes=settings.webhook_max_response_bytes,
            concurrency=settings.webhook_concurrency,
        )
        self.poll_seconds = settings.webhook_poll_seconds
        self.loop = asyncio.create_task(self._loop())
        tune_garbage_collector()

    async def _loop(self) -> None:
        while True:
            try:
                sent = await self.outbox.send_due()
            except Exception:
                log.exception("webhook round failed")
                sent = 0
            if not sent:
                await asyncio.sleep(self.poll_seconds)
