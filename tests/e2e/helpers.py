"""Small steps the end-to-end stories share."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
from sqlalchemy import update

from daygen.settings import Settings
from pipelines.pool_config import ProviderPools
from serve_app.api import create_api
from serve_app.services import Services
from storage import ledger
from storage.models import User


def new_email(prefix: str = "user") -> str:
    return f"{prefix}-{secrets.token_hex(4)}@example.com"


async def signup(client: httpx.AsyncClient, email: str | None = None, password: str = "correct horse") -> dict:
    response = await client.post("/v1/auth/signup", json={"email": email or new_email(), "password": password})
    assert response.status_code == 201, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_user(client: httpx.AsyncClient) -> dict:
    """A new account: its headers, id and email."""
    email = new_email()
    created = await signup(client, email)
    return {"headers": bearer(created["accessToken"]), "id": created["user"]["id"], "email": email}


async def make_admin(client: httpx.AsyncClient, sessions) -> dict:
    """A new account with the admin role (as `daygen user create --admin` makes one)."""
    created = await signup(client, new_email("admin"))
    async with sessions.begin() as session:
        await session.execute(update(User).where(User.id == uuid.UUID(created["user"]["id"])).values(role="admin"))
    return {"headers": bearer(created["accessToken"]), "id": created["user"]["id"], "email": created["user"]["email"]}


async def user_headers(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await signup(client))["accessToken"])


def assert_v1_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_api_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"statusCode", "message", "error"}
    assert body["statusCode"] == status
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["error"], str) and body["error"]
    return body


async def set_balance(sessions, user_id: str, target: Decimal) -> None:
    async with sessions.begin() as session:
        current = await ledger.balance(session, uuid.UUID(user_id))
        await ledger.append_entry(
            session,
            account_id=uuid.UUID(user_id),
            kind="adjust",
            amount=target - current,
            idempotency_key=f"test-adjust:{uuid.uuid4()}",
            reason="test",
        )


@contextlib.asynccontextmanager
async def api_without_actors(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    """A client of the API built on `settings` in this process (and the API's services), on the
    shared database, with no ledger or dispatcher: for what a request answers before it would reach them."""
    services = Services.build(settings, ProviderPools.load(settings.providers_config), ledger=None, dispatcher=None)
    transport = httpx.ASGITransport(app=create_api(settings, services))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://daygen.test") as client:
            yield client, services
    finally:
        await services.engine.dispose()
        await services.redis.aclose()
