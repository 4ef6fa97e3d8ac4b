"""Signing up, logging in and proving who you are, on /v1 and on the daygen frontend's /api."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from datetime import datetime

import jwt
from sqlalchemy import delete, func, select

from serve_app.security import issue_token
from storage.models import LedgerEntry, User
from tests.e2e.helpers import assert_api_error, assert_v1_error, bearer, new_email, signup

V1_USER_FIELDS = {"id", "email", "displayName", "role", "credits", "createdAt", "updatedAt"}
API_USER_FIELDS = {
    "id",
    "authUserId",
    "email",
    "displayName",
    "credits",
    "profileImage",
    "role",
    "createdAt",
    "updatedAt",
}
STUDIO = "https://studio.example.com"
EVIL = "https://evil.example.com"
PASSWORD = "correct horse"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def assert_timestamp(value: str) -> None:
    assert datetime.fromisoformat(value).tzinfo is not None


# -- /v1: signup, login, me -----------------------------------------------------------------


async def test_signup_answers_201_with_a_bearer_token_and_a_user_holding_twenty_credits(client):
    email = new_email()
    response = await client.post(
        "/v1/auth/signup", json={"email": email, "password": PASSWORD, "displayName": "Ada Lovelace"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"accessToken", "tokenType", "user"}
    assert body["tokenType"] == "bearer"
    assert body["accessToken"]
    user = body["user"]
    assert set(user) == V1_USER_FIELDS
    uuid.UUID(user["id"])
    assert user["email"] == email
    assert user["displayName"] == "Ada Lovelace"
    assert user["role"] == "user"
    assert user["credits"] == 20
    assert_timestamp(user["createdAt"])
    assert_timestamp(user["updatedAt"])


async def test_signup_without_a_display_name_leaves_it_empty(client):
    user = (await signup(client))["user"]
    assert user["displayName"] is None


async def test_signup_trims_the_display_name(client):
    response = await client.post(
        "/v1/auth/signup", json={"email": new_email(), "password": PASSWORD, "displayName": "  Grace  "}
    )
    assert response.status_code == 201, response.text
    assert response.json()["user"]["displayName"] == "Grace"


async def test_the_signup_token_opens_me_which_answers_the_bare_user_with_credits(client):
    created = await signup(client)
    me = await client.get("/v1/auth/me", headers=bearer(created["accessToken"]))
    assert me.status_code == 200, me.text
    assert set(me.json()) == V1_USER_FIELDS
    assert me.json() == created["user"]
    assert me.json()["credits"] == 20


async def test_login_answers_200_with_a_fresh_token_for_the_same_user(client):
    email = new_email()
    created = await signup(client, email)
    response = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"accessToken", "tokenType", "user"}
    assert body["tokenType"] == "bearer"
    assert body["user"] == created["user"]
    me = await client.get("/v1/auth/me", headers=bearer(body["accessToken"]))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == created["user"]["id"]


async def test_signup_grants_twenty_credits_once_in_the_ledger(client, sessions):
    user_id = uuid.UUID((await signup(client))["user"]["id"])
    async with sessions() as session:
        entries = (await session.execute(select(LedgerEntry).where(LedgerEntry.account_id == user_id))).scalars().all()
    assert [(e.kind, e.amount) for e in entries] == [("grant", 20)]


async def test_the_password_is_stored_as_an_argon2_hash_not_as_typed(client, sessions):
    email = new_email()
    await signup(client, email, password="my secret password")
    async with sessions() as session:
        stored = (await session.execute(select(User.password_hash).where(User.email == email))).scalar_one()
    assert stored.startswith("$argon2")
    assert "my secret password" not in stored


# -- email normalisation --------------------------------------------------------------------


async def test_signup_trims_and_lower_cases_the_email_before_storing_it(client, sessions):
    local = f"Story-{secrets.token_hex(4)}"
    response = await client.post("/v1/auth/signup", json={"email": f"  {local}@Example.COM  ", "password": PASSWORD})
    assert response.status_code == 201, response.text
    expected = f"{local.lower()}@example.com"
    assert response.json()["user"]["email"] == expected
    async with sessions() as session:
        stored = await session.execute(select(User.email).where(User.id == uuid.UUID(response.json()["user"]["id"])))
    assert stored.scalar_one() == expected


async def test_second_signup_with_same_email_in_other_case_is_409(client):
    local = f"dup-{secrets.token_hex(4)}"
    first = await client.post("/v1/auth/signup", json={"email": f" {local.upper()}@Example.COM ", "password": PASSWORD})
    assert first.status_code == 201, first.text
    again = await client.post("/v1/auth/signup", json={"email": f"{local}@example.com", "password": PASSWORD})
    assert_v1_error(again, 409, "email_taken")
    on_api = await client.post("/api/auth/signup", json={"email": f"{local}@EXAMPLE.com", "password": PASSWORD})
    assert_api_error(on_api, 409)


async def test_login_works_whatever_the_case_and_spacing_of_the_email(client):
    local = f"case-{secrets.token_hex(4)}"
    created = await signup(client, f"{local}@example.com")
    for typed in (f"{local}@example.com", f"{local.upper()}@EXAMPLE.COM", f"  {local.title()}@Example.Com "):
        for path in ("/v1/auth/login", "/api/auth/login"):
            response = await client.post(path, json={"email": typed, "password": PASSWORD})
            assert response.status_code == 200, (path, typed, response.text)
            assert response.json()["user"]["id"] == created["user"]["id"]


async def test_twenty_simultaneous_signups_with_one_email_in_mixed_cases_make_one_account(client, sessions):
    local = f"race-{secrets.token_hex(4)}"
    email = f"{local}@example.com"

    def variant(i: int) -> str:
        mixed = "".join(c.upper() if (i >> (n % 5)) & 1 else c for n, c in enumerate(email))
        return f" {mixed} " if i % 3 == 0 else mixed

    responses = await asyncio.gather(
        *(client.post("/v1/auth/signup", json={"email": variant(i), "password": PASSWORD}) for i in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19, [r.text for r in responses if r.status_code not in (201, 409)]
    for response in responses:
        if response.status_code == 409:
            assert_v1_error(response, 409, "email_taken")
    winner = next(r.json() for r in responses if r.status_code == 201)
    assert winner["user"]["email"] == email
    async with sessions() as session:
        count = (await session.execute(select(func.count()).select_from(User).where(User.email == email))).scalar_one()
        like = (
            await session.execute(select(func.count()).select_from(User).where(func.lower(User.email) == email))
        ).scalar_one()
    assert count == 1
    assert like == 1
    me = await client.get("/v1/auth/me", headers=bearer(winner["accessToken"]))
    assert me.json()["credits"] == 20


# -- wrong credentials ----------------------------------------------------------------------


async def test_wrong_password_and_unknown_email_get_the_same_401(client):
    email = new_email()
    await signup(client, email)
    wrong_password = await client.post("/v1/auth/login", json={"email": email, "password": "not the password"})
    unknown_email = await client.post("/v1/auth/login", json={"email": new_email("nobody"), "password": PASSWORD})
    first = assert_v1_error(wrong_password, 401, "not_authenticated")
    second = assert_v1_error(unknown_email, 401, "not_authenticated")
    assert first["message"] == second["message"]


async def test_wrong_password_and_unknown_email_get_the_same_401_on_api(client):
    email = new_email()
    await signup(client, email)
    wrong_password = await client.post("/api/auth/login", json={"email": email, "password": "not the password"})
    unknown_email = await client.post("/api/auth/login", json={"email": new_email("nobody"), "password": PASSWORD})
    assert assert_api_error(wrong_password, 401) == assert_api_error(unknown_email, 401)


# -- tokens -----------------------------------------------------------------------------------


async def test_token_of_a_user_that_no_longer_exists_is_401(client, sessions):
    created = await signup(client)
    async with sessions() as session:
        await session.execute(delete(User).where(User.id == uuid.UUID(created["user"]["id"])))
        await session.commit()
    response = await client.get("/v1/auth/me", headers=bearer(created["accessToken"]))
    assert_v1_error(response, 401, "not_authenticated")
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert_api_error(await client.get("/api/auth/me", headers=bearer(created["accessToken"])), 401)


async def test_a_well_signed_token_for_an_id_that_never_existed_is_401(client, settings):
    token = issue_token(uuid.uuid4(), settings.jwt_secret.get_secret_value(), 3600)
    assert_v1_error(await client.get("/v1/auth/me", headers=bearer(token)), 401, "not_authenticated")


async def test_an_expired_token_is_401(client, settings):
    user_id = uuid.UUID((await signup(client))["user"]["id"])
    expired = issue_token(user_id, settings.jwt_secret.get_secret_value(), 3600, now=time.time() - 2 * 3600)
    assert_v1_error(await client.get("/v1/auth/me", headers=bearer(expired)), 401, "not_authenticated")
    assert_api_error(await client.get("/api/auth/me", headers=bearer(expired)), 401)


async def test_a_token_signed_with_another_secret_is_401(client):
    user_id = uuid.UUID((await signup(client))["user"]["id"])
    forged = issue_token(user_id, "an attacker's secret " + secrets.token_hex(32), 3600)
    assert_v1_error(await client.get("/v1/auth/me", headers=bearer(forged)), 401, "not_authenticated")


async def test_a_real_token_with_an_edited_payload_is_401(client):
    mine = await signup(client)
    victim = await signup(client)
    header, _, signature = mine["accessToken"].split(".")
    now = int(time.time())
    payload = _b64({"sub": victim["user"]["id"], "iat": now, "exp": now + 3600})
    response = await client.get("/v1/auth/me", headers=bearer(f"{header}.{payload}.{signature}"))
    assert_v1_error(response, 401, "not_authenticated")


async def test_an_unsigned_alg_none_token_is_401(client):
    user_id = (await signup(client))["user"]["id"]
    now = int(time.time())
    claims = {"sub": user_id, "iat": now, "exp": now + 3600}
    for token in (jwt.encode(claims, None, algorithm="none"), f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."):
        assert_v1_error(await client.get("/v1/auth/me", headers=bearer(token)), 401, "not_authenticated")


async def test_me_without_an_authorization_header_is_401(client):
    response = await client.get("/v1/auth/me")
    assert_v1_error(response, 401, "not_authenticated")
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert_api_error(await client.get("/api/auth/me"), 401)


async def test_malformed_authorization_headers_are_401_never_404_or_500(client):
    token = (await signup(client))["accessToken"]
    malformed = [
        "",
        "Bearer",
        "Bearer a b",
        token,
        f"Token {token}",
        "Basic dXNlcjpwYXNzd29yZA==",
        "Bearer garbage",
        "Bearer not.a.jwt",
        "Bearer a.b",
        "garbage",
        f"Bearer {token}x",
        f"Bearer {token[:-5]}",
    ]
    for value in malformed:
        response = await client.get("/v1/auth/me", headers={"Authorization": value})
        assert_v1_error(response, 401, "not_authenticated")


async def test_the_bearer_scheme_is_case_insensitive(client):
    token = (await signup(client))["accessToken"]
    response = await client.get("/v1/auth/me", headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200, response.text


# -- input validation -------------------------------------------------------------------------


async def test_a_seven_character_password_is_422_and_eight_is_fine(client):
    short = await client.post("/v1/auth/signup", json={"email": new_email(), "password": "x" * 7})
    error = assert_v1_error(short, 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["password"]
    ok = await client.post("/v1/auth/signup", json={"email": new_email(), "password": "x" * 8})
    assert ok.status_code == 201, ok.text


async def test_a_129_character_password_is_422_and_128_is_fine(client):
    long = await client.post("/v1/auth/signup", json={"email": new_email(), "password": "x" * 129})
    error = assert_v1_error(long, 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["password"]
    email = new_email()
    ok = await client.post("/v1/auth/signup", json={"email": email, "password": "x" * 128})
    assert ok.status_code == 201, ok.text
    login = await client.post("/v1/auth/login", json={"email": email, "password": "x" * 128})
    assert login.status_code == 200, login.text


async def test_password_limits_hold_on_api_too(client):
    for password in ("x" * 7, "x" * 129):
        response = await client.post("/api/auth/signup", json={"email": new_email(), "password": password})
        assert "password" in assert_api_error(response, 422)["message"]


async def test_a_bad_email_is_422_naming_the_email_field(client):
    for bad in ("not-an-email", "@example.com", "user@", "user@localhost", "us er@example.com", "", "   "):
        response = await client.post("/v1/auth/signup", json={"email": bad, "password": PASSWORD})
        error = assert_v1_error(response, 422, "validation_error")
        assert [d["field"] for d in error["details"]] == ["email"], bad
        assert "email" in error["message"]


async def test_a_bad_email_on_api_is_422_naming_the_field(client):
    response = await client.post("/api/auth/signup", json={"email": "not-an-email", "password": PASSWORD})
    assert "email" in assert_api_error(response, 422)["message"]


async def test_missing_fields_are_422_naming_each_one(client):
    error = assert_v1_error(await client.post("/v1/auth/signup", json={}), 422, "validation_error")
    assert {d["field"] for d in error["details"]} == {"email", "password"}
    error = assert_v1_error(await client.post("/v1/auth/login", json={"email": new_email()}), 422, "validation_error")
    assert {d["field"] for d in error["details"]} == {"password"}
    assert_api_error(await client.post("/api/auth/login", json={}), 422)


async def test_an_extra_field_on_v1_signup_is_422_not_a_way_to_become_admin(client, sessions):
    email = new_email()
    response = await client.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "role": "admin"})
    error = assert_v1_error(response, 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["role"]
    extra_login = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD, "remember": True})
    assert_v1_error(extra_login, 422, "validation_error")
    async with sessions() as session:
        assert (await session.execute(select(User).where(User.email == email))).scalar_one_or_none() is None


async def test_wrong_types_are_422(client):
    for body in (
        {"email": 12345, "password": PASSWORD},
        {"email": new_email(), "password": 12345678},
        {"email": new_email(), "password": ["correct", "horse"]},
        {"email": new_email(), "password": PASSWORD, "displayName": 7},
        {"email": None, "password": PASSWORD},
    ):
        assert_v1_error(await client.post("/v1/auth/signup", json=body), 422, "validation_error")
    assert_v1_error(await client.post("/v1/auth/login", json={"email": [], "password": {}}), 422, "validation_error")


async def test_a_nul_character_in_an_email_or_name_is_422_not_500(client):
    for body, field in (
        ({"email": "a\u0000b@example.com", "password": PASSWORD}, "email"),
        ({"email": new_email(), "password": PASSWORD, "displayName": "Ada\u0000"}, "displayName"),
    ):
        error = assert_v1_error(await client.post("/v1/auth/signup", json=body), 422, "validation_error")
        assert [d["field"] for d in error["details"]] == [field]
        assert_api_error(await client.post("/api/auth/signup", json=body), 422)
    login = {"email": "a\u0000b@example.com", "password": PASSWORD}
    assert_v1_error(await client.post("/v1/auth/login", json=login), 422, "validation_error")
    assert_api_error(await client.post("/api/auth/login", json=login), 422)


async def test_a_json_body_that_is_not_an_object_is_422(client):
    for body in (b"[]", b'"email"', b"42", b"null"):
        response = await client.post("/v1/auth/signup", content=body, headers={"Content-Type": "application/json"})
        assert_v1_error(response, 422, "validation_error")


async def test_a_body_that_is_not_json_but_says_it_is_is_400(client):
    for path in ("/v1/auth/signup", "/v1/auth/login"):
        response = await client.post(
            path, content=b'{"email": "a@example.com", "password":', headers={"Content-Type": "application/json"}
        )
        assert_v1_error(response, 400, "malformed_body")
    response = await client.post("/api/auth/login", content=b"{nope", headers={"Content-Type": "application/json"})
    assert_api_error(response, 400)


async def test_a_body_sent_as_text_plain_is_415(client):
    body = json.dumps({"email": new_email(), "password": PASSWORD})
    response = await client.post("/v1/auth/signup", content=body, headers={"Content-Type": "text/plain"})
    assert_v1_error(response, 415, "unsupported_media_type")
    response = await client.post("/api/auth/signup", content=body, headers={"Content-Type": "text/plain"})
    assert_api_error(response, 415)
    response = await client.post(
        "/v1/auth/login", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_v1_error(response, 415, "unsupported_media_type")


async def test_a_body_without_a_content_type_is_415(client):
    body = json.dumps({"email": new_email(), "password": PASSWORD}).encode()
    response = await client.post("/v1/auth/signup", content=body)
    assert_v1_error(response, 415, "unsupported_media_type")


async def test_json_with_a_charset_parameter_is_accepted(client):
    body = json.dumps({"email": new_email(), "password": PASSWORD})
    response = await client.post(
        "/v1/auth/signup", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 201, response.text


async def test_a_body_over_one_megabyte_is_413(client):
    huge = {"email": new_email(), "password": PASSWORD, "displayName": "x" * 1_100_000}
    assert_v1_error(await client.post("/v1/auth/signup", json=huge), 413, "payload_too_large")
    assert_api_error(await client.post("/api/auth/signup", json=huge), 413)


async def test_a_chunked_body_over_one_megabyte_is_413(client):
    async def chunks():
        yield b'{"email": "chunked@example.com", "password": "correct horse", "displayName": "'
        for _ in range(12):
            yield b"x" * 100_000
        yield b'"}'

    response = await client.post("/v1/auth/signup", content=chunks(), headers={"Content-Type": "application/json"})
    assert_v1_error(response, 413, "payload_too_large")


# -- /api: the daygen frontend's shapes ---------------------------------------------------------


async def test_api_signup_answers_the_frontend_user_shape_with_twenty_credits(client):
    email = new_email("front")
    response = await client.post("/api/auth/signup", json={"email": email, "password": PASSWORD, "displayName": "Ada"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["accessToken"]
    user = body["user"]
    assert set(user) == API_USER_FIELDS
    uuid.UUID(user["id"])
    uuid.UUID(user["authUserId"])
    assert user["email"] == email
    assert user["displayName"] == "Ada"
    assert user["credits"] == 20
    assert user["profileImage"] is None
    assert user["role"] == "USER"
    assert_timestamp(user["createdAt"])
    assert_timestamp(user["updatedAt"])


async def test_api_login_and_me_answer_the_same_user(client):
    email = new_email("front")
    created = (await client.post("/api/auth/signup", json={"email": email, "password": PASSWORD})).json()
    login = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    assert login.json()["user"] == created["user"]
    me = await client.get("/api/auth/me", headers=bearer(login.json()["accessToken"]))
    assert me.status_code == 200, me.text
    assert set(me.json()) == API_USER_FIELDS, "me answers the bare user, not wrapped"
    assert me.json() == created["user"]


async def test_api_ignores_unknown_fields_and_never_grants_what_they_ask_for(client):
    email = new_email("front")
    response = await client.post(
        "/api/auth/signup",
        json={
            "email": email,
            "password": PASSWORD,
            "role": "ADMIN",
            "credits": 1_000_000,
            "authUserId": str(uuid.uuid4()),
            "profileImage": "https://evil.example.com/x.png",
            "rememberMe": True,
        },
    )
    assert response.status_code == 201, response.text
    user = response.json()["user"]
    assert user["role"] == "USER"
    assert user["credits"] == 20
    assert user["profileImage"] is None
    login = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD, "rememberMe": True})
    assert login.status_code == 200, login.text


async def test_a_token_from_either_api_works_on_the_other(client):
    v1 = await signup(client)
    api_me = await client.get("/api/auth/me", headers=bearer(v1["accessToken"]))
    assert api_me.status_code == 200, api_me.text
    assert api_me.json()["id"] == v1["user"]["id"]
    assert api_me.json()["email"] == v1["user"]["email"]
    assert api_me.json()["credits"] == v1["user"]["credits"]
    api = (await client.post("/api/auth/signup", json={"email": new_email(), "password": PASSWORD})).json()
    v1_me = await client.get("/v1/auth/me", headers=bearer(api["accessToken"]))
    assert v1_me.status_code == 200, v1_me.text
    assert v1_me.json()["id"] == api["user"]["id"]
    assert v1_me.json()["role"] == "user"


# -- CORS -------------------------------------------------------------------------------------


async def test_the_studio_origin_passes_a_preflight_for_me(client):
    response = await client.options(
        "/v1/auth/me",
        headers={
            "Origin": STUDIO,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == STUDIO
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "GET" in response.headers["access-control-allow-methods"]


async def test_the_studio_origin_can_read_real_answers_including_errors(client):
    token = (await signup(client))["accessToken"]
    ok = await client.get("/v1/auth/me", headers={"Origin": STUDIO, **bearer(token)})
    assert ok.status_code == 200, ok.text
    assert ok.headers["access-control-allow-origin"] == STUDIO
    refused = await client.get("/v1/auth/me", headers={"Origin": STUDIO})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == STUDIO


async def test_another_origin_gets_no_cors_permission(client):
    preflight = await client.options(
        "/v1/auth/me",
        headers={
            "Origin": EVIL,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code < 500
    assert "access-control-allow-origin" not in preflight.headers
    token = (await signup(client))["accessToken"]
    real = await client.get("/v1/auth/me", headers={"Origin": EVIL, **bearer(token)})
    assert "access-control-allow-origin" not in real.headers


# -- request ids ------------------------------------------------------------------------------


async def test_a_request_id_sent_is_echoed_back(client):
    request_id = f"story-{secrets.token_hex(6)}"
    ok = await client.get(
        "/v1/auth/me", headers={"X-Request-Id": request_id, **bearer((await signup(client))["accessToken"])}
    )
    assert ok.headers.get_list("x-request-id") == [request_id]
    refused = await client.get("/v1/auth/me", headers={"X-Request-Id": request_id})
    assert refused.status_code == 401
    assert refused.headers.get_list("x-request-id") == [request_id]


async def test_a_request_id_is_generated_when_none_is_sent(client):
    first = await client.get("/v1/auth/me")
    second = await client.get("/v1/auth/me")
    first_ids = first.headers.get_list("x-request-id")
    second_ids = second.headers.get_list("x-request-id")
    assert len(first_ids) == 1, f"one X-Request-Id header expected, got {first_ids}"
    assert len(second_ids) == 1, f"one X-Request-Id header expected, got {second_ids}"
    assert first_ids[0] and second_ids[0]
    assert first_ids[0] != second_ids[0]


async def test_even_a_refused_oversized_body_carries_a_request_id(client):
    huge = {"email": new_email(), "password": PASSWORD, "displayName": "x" * 1_100_000}
    response = await client.post("/v1/auth/signup", json=huge, headers={"X-Request-Id": "big-one"})
    assert response.status_code == 413
    assert response.headers.get_list("x-request-id") == ["big-one"]
