"""Signup, login and the current user, on /v1 and in the daygen frontend's /api shapes."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from fastapi import APIRouter, Depends, status

from daygen.errors import NotAuthenticated
from serve_app.deps import CurrentUser, ServicesDep, SessionDep, check_not_banned, require_json
from serve_app.schemas import (
    ApiAuthOut,
    ApiLoginIn,
    ApiSignupIn,
    ApiUser,
    AuthOut,
    LoginIn,
    SignupIn,
    UserOut,
)
from serve_app.security import hash_password, issue_token, verify_password
from serve_app.services import Services
from storage import ledger
from storage.models import User
from storage.users import create_user, get_user_by_email

v1 = APIRouter(prefix="/v1/auth", tags=["auth"], dependencies=[Depends(require_json)])
compat = APIRouter(prefix="/api/auth", tags=["daygen-compatible"], dependencies=[Depends(require_json)])


async def _signup(services: Services, session: SessionDep, body: SignupIn | ApiSignupIn) -> tuple[User, str]:
    password_hash = await asyncio.to_thread(hash_password, body.password)
    user = await create_user(
        session,
        email=body.email,
        password_hash=password_hash,
        display_name=body.displayName,
        signup_credits=Decimal(services.settings.signup_credits),
        plan=services.billing.default_plan,
    )
    return user, _token(services, user)


async def _login(services: Services, session: SessionDep, body: LoginIn | ApiLoginIn) -> tuple[User, str]:
    """Unknown email and wrong password answer alike, and take as long."""
    user = await get_user_by_email(session, body.email)
    stored = user.password_hash if user is not None else services.decoy_password_hash
    matches = await asyncio.to_thread(verify_password, body.password, stored)
    if user is None or not matches:
        raise NotAuthenticated("wrong email or password")
    check_not_banned(user)  # after the password: who is banned is not told to whoever asks
    return user, _token(services, user)


def _token(services: Services, user: User) -> str:
    return issue_token(user.id, services.jwt_secret, services.settings.jwt_ttl_seconds)


def user_out(user: User, credits: Decimal) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        displayName=user.display_name,
        role=user.role,
        credits=float(credits),
        createdAt=user.created_at,
        updatedAt=user.updated_at,
    )


def api_user(user: User, credits: Decimal) -> ApiUser:
    return ApiUser(
        id=user.id,
        authUserId=user.id,
        email=user.email,
        displayName=user.display_name,
        credits=float(credits),
        profileImage=user.profile_image,
        role=user.role.upper(),
        createdAt=user.created_at,
        updatedAt=user.updated_at,
    )


@v1.post("/signup", status_code=status.HTTP_201_CREATED)
async def signup(body: SignupIn, services: ServicesDep, session: SessionDep) -> AuthOut:
    user, token = await _signup(services, session, body)
    return AuthOut(accessToken=token, user=user_out(user, await ledger.balance(session, user.id)))


@v1.post("/login")
async def login(body: LoginIn, services: ServicesDep, session: SessionDep) -> AuthOut:
    user, token = await _login(services, session, body)
    return AuthOut(accessToken=token, user=user_out(user, await ledger.balance(session, user.id)))


@v1.get("/me")
async def me(user: CurrentUser, session: SessionDep) -> UserOut:
    return user_out(user, await ledger.balance(session, user.id))


@compat.post("/signup", status_code=status.HTTP_201_CREATED)
async def compat_signup(body: ApiSignupIn, services: ServicesDep, session: SessionDep) -> ApiAuthOut:
    user, token = await _signup(services, session, body)
    return ApiAuthOut(accessToken=token, user=api_user(user, await ledger.balance(session, user.id)))


@compat.post("/login")
async def compat_login(body: ApiLoginIn, services: ServicesDep, session: SessionDep) -> ApiAuthOut:
    user, token = await _login(services, session, body)
    return ApiAuthOut(accessToken=token, user=api_user(user, await ledger.balance(session, user.id)))


@compat.get("/me")
async def compat_me(user: CurrentUser, session: SessionDep) -> ApiUser:
    return api_user(user, await ledger.balance(session, user.id))
