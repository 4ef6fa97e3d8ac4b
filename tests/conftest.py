"""Shared fixtures: a private database, Redis namespace, object store and (for e2e) a real Serve app.

The machine's Postgres and Redis are used when DAYGEN_TEST_DATABASE_URL and
DAYGEN_TEST_REDIS_URL are set (CI sets them); otherwise the embedded servers start.
Every session creates its own database and Redis namespace, so runs never see each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from daygen import embedded
from daygen.runtime import side_ports
from daygen.settings import Settings
from storage.db import make_engine, make_sessionmaker
from storage.migrate import migrate_to
from tests.fakes.dashscope import FakeDashScope
from tests.fakes.ideogram import FakeIdeogram
from tests.fakes.stripe import FakeStripe
from tests.inline_images import refuse_inline_images


def free_port() -> int:
    """A port free now for a server bound later: from outside the range outgoing connections take
    their local ports from, so none takes it meanwhile (`daygen.runtime.SIDE_PORTS`)."""
    [port] = side_ports(1)
    return port


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="daygen-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def service_urls(workdir: Path) -> Iterator[tuple[str, str]]:
    """Admin URL of a Postgres server and URL of a Redis server: the machine's when
    DAYGEN_TEST_DATABASE_URL / DAYGEN_TEST_REDIS_URL are set, else embedded ones under workdir."""
    with contextlib.ExitStack() as stack:
        pg_url = os.environ.get("DAYGEN_TEST_DATABASE_URL")
        redis_url = os.environ.get("DAYGEN_TEST_REDIS_URL")
        if not pg_url:
            server = embedded.start_postgres(workdir / "pg")
            stack.callback(server.stop)
            pg_url = server.url
        if not redis_url:
            server = embedded.start_redis(workdir / "redis")
            stack.callback(server.stop)
            redis_url = server.url
        yield pg_url, redis_url


@pytest.fixture(scope="session")
def server_urls(services_dir: Path) -> Iterator[tuple[str, str]]:
    with service_urls(services_dir) as urls:
        yield urls


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@contextlib.contextmanager
def private_database(admin_url: str, revision: str = "head") -> Iterator[str]:
    """A fresh database migrated to head (or to `revision`), dropped afterwards."""
    admin_url = _plain(admin_url)
    name = f"daygen_test_{secrets.token_hex(6)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        url = f"{admin_url.rpartition('/')[0]}/{name}"
        migrate_to(Settings(database_url=url).database_url, revision)
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """The database of this session's app."""
    with private_database(server_urls[0]) as url:
        yield url


@pytest.fixture(scope="session")
def fake_ideogram() -> Iterator[FakeIdeogram]:
    """The app's Ideogram: a faithful local fake (tests reset it before use)."""
    with FakeIdeogram() as fake:
        yield fake


@pytest.fixture(scope="session")
def fake_dashscope() -> Iterator[FakeDashScope]:
    with FakeDashScope() as fake:
        yield fake


@pytest.fixture(scope="session")
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


STRIPE_WEBHOOK_SECRET = "whsec_daygen_test_" + secrets.token_hex(16)


# The app's in-flight limit for Ideogram, below the fake's own 10, so tests can see it hold;
# two actors and more running jobs than places, so only the shared limiter keeps to it.
IDEOGRAM_INFLIGHT_LIMIT = 3
IDEOGRAM_RUNNING_JOBS = 8
TEST_POOLS = f"""
ideogram: {{actors: 2, max_running_jobs: {IDEOGRAM_RUNNING_JOBS}, max_inflight_images: {IDEOGRAM_INFLIGHT_LIMIT}}}
qwen: {{actors: 2, max_running_jobs: 8, requests_per_minute: 60000}}
offline: {{actors: 1, max_running_jobs: 4}}
"""


@pytest.fixture(scope="session")
def settings(
    database_url: str,
    server_urls: tuple[str, str],
    services_dir: Path,
    fake_ideogram: FakeIdeogram,
    fake_dashscope: FakeDashScope,
    fake_stripe: FakeStripe,
) -> Settings:
    providers_config = services_dir / "providers.yaml"
    providers_config.write_text(TEST_POOLS)
    return Settings(
        billing_config=without_limits(services_dir / "billing.yaml"),
        _env_file=None,
        home=services_dir,
        port=free_port(),
        database_url=database_url,
        redis_url=server_urls[1],
        redis_namespace=f"daygen-test-{secrets.token_hex(4)}",
        storage_url=f"file://{services_dir / 'objects'}",
        jwt_secret=secrets.token_urlsafe(32),
        cors_origins="https://studio.example.com",
        ray_dashboard=False,
        log_level="WARNING",
        ideogram_base_url=fake_ideogram.base_url,
        ideogram_api_key=fake_ideogram.api_key,
        providers_config=providers_config,
        dashscope_base_url=fake_dashscope.base_url,
        dashscope_api_key=fake_dashscope.api_key,
        provider_backoff_seconds=0.01,
        provider_backoff_cap_seconds=0.05,
        dashscope_poll_seconds=0.01,
        ws_heartbeat_seconds=1.0,
        job_lease_seconds=5,
        webhook_allowed_hosts="127.0.0.1",
        webhook_retry_schedule="0.3,0.3,0.3",
        webhook_poll_seconds=0.05,
        allowance_check_seconds=0.5,
        webhook_timeout_seconds=2,
        stripe_secret_key=fake_stripe.api_key,
        stripe_webhook_secret=STRIPE_WEBHOOK_SECRET,
        stripe_api_base=fake_stripe.base_url,
    )


def without_limits(path: Path) -> Path:
    """The shipped billing config, its plans' limits lifted (tests of the limits set their own): most
    tests submit more jobs a minute, and more at once, than a free account may."""
    config = yaml.safe_load(Settings(_env_file=None).billing_config.read_text())
    for plan in config["plans"].values():
        plan.pop("limits", None)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(settings.database_url, pool_size=2)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
def app_url(settings: Settings) -> Iterator[str]:
    """The whole product on a real Ray Serve app on loopback, started once per session."""
    import ray

    from daygen.runtime import deploy, start_ray

    ray_dir = Path(tempfile.mkdtemp(prefix="dgr-"))
    start_ray(
        temp_dir=ray_dir, dashboard=False, http_port=settings.port, num_cpus=2, object_store_bytes=200 * 1024 * 1024
    )
    try:
        yield deploy(settings)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.fixture
async def client(app_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=app_url, timeout=60, event_hooks={"response": [refuse_inline_images]}) as c:
        yield c
