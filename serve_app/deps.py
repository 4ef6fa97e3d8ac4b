"""Route dependencies as named aliases, so each route's needs read off its signature."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from daygen.errors import AccountBanned, Forbidden, NotAuthenticated, UnsupportedMediaType
from serve_app.security import read_token
from serve_app.services import Services
from storage.models import User
from storage.users import get_user


async def _services(request: Request) -> Services:
    # Async although it awaits nothing: FastAPI runs a plain function dependency in a worker thread,
    # a hop there and back on every request (and anyio's look through every task on the loop first).
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]


async def _session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    async with services.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_session)]


async def _current_user(request: Request, services: ServicesDep) -> User:
    """The token's user, read in a session of its own: one round trip, and a request that needs the
    database for nothing else (a job's submit) opens no transaction at all."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("missing bearer token")
    async with services.reads() as session:
        user = await get_user(session, read_token(token.strip(), services.jwt_secret))
    if user is None:
        raise NotAuthenticated("invalid or expired access token")
    request.state.user_id = str(user.id)
    check_not_banned(user)
    return user


def check_not_banned(user: User) -> None:
    if user.banned:
        raise AccountBanned("this account is banned")


CurrentUser = Annotated[User, Depends(_current_user)]


async def _admin(user: CurrentUser) -> User:
    if user.role != "admin":
        raise Forbidden("admins only")
    return user


AdminUser = Annotated[User, Depends(_admin)]


async def require_json(request: Request) -> None:
    """Bodies must say they are JSON; anything else is a 415, not a guess. No body, nothing to say."""
    empty = request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers
    if request.method in ("POST", "PUT", "PATCH") and not empty:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType("send the body as application/json")
