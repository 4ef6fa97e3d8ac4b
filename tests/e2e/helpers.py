"""Small steps the end-to-end stories share."""

from __future__ import annotations

import secrets

import httpx


def new_email(prefix: str = "user") -> str:
    return f"{prefix}-{secrets.token_hex(4)}@example.com"


async def signup(client: httpx.AsyncClient, email: str | None = None, password: str = "correct horse") -> dict:
    response = await client.post("/v1/auth/signup", json={"email": email or new_email(), "password": password})
    assert response.status_code == 201, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def user_headers(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await signup(client))["accessToken"])
