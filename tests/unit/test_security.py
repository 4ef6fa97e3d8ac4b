"""Passwords and access tokens, without Ray or a database."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest

from daygen.errors import NotAuthenticated
from serve_app.security import hash_password, issue_token, read_token, verify_password

SECRET = "unit-test-secret-" + "s" * 64
OTHER_SECRET = "some-other-secret-" + "o" * 64
DAY = 24 * 3600


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_fresh_token_reads_back_as_its_user():
    user_id = uuid.uuid4()
    token = issue_token(user_id, SECRET, DAY)
    assert read_token(token, SECRET) == user_id


def test_a_token_carries_subject_issue_time_and_expiry():
    user_id = uuid.uuid4()
    now = time.time()
    claims = jwt.decode(issue_token(user_id, SECRET, 3600, now=now), SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(user_id)
    assert claims["iat"] == int(now)
    assert claims["exp"] == int(now) + 3600
    assert jwt.get_unverified_header(issue_token(user_id, SECRET, 3600))["alg"] == "HS256"


def test_an_expired_token_is_not_authenticated():
    token = issue_token(uuid.uuid4(), SECRET, 3600, now=time.time() - 2 * 3600)
    with pytest.raises(NotAuthenticated):
        read_token(token, SECRET)


def test_a_token_signed_with_another_secret_is_not_authenticated():
    token = issue_token(uuid.uuid4(), OTHER_SECRET, DAY)
    with pytest.raises(NotAuthenticated):
        read_token(token, SECRET)


def test_a_token_whose_payload_was_edited_is_not_authenticated():
    header, _, signature = issue_token(uuid.uuid4(), SECRET, DAY).split(".")
    now = int(time.time())
    forged_payload = _b64({"sub": str(uuid.uuid4()), "iat": now, "exp": now + DAY})
    with pytest.raises(NotAuthenticated):
        read_token(f"{header}.{forged_payload}.{signature}", SECRET)


def test_an_unsigned_alg_none_token_is_not_authenticated():
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "iat": now, "exp": now + DAY}
    unsigned = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(NotAuthenticated):
        read_token(unsigned, SECRET)
    handmade = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(NotAuthenticated):
        read_token(handmade, SECRET)


def test_a_token_signed_with_another_algorithm_is_not_authenticated():
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "iat": now, "exp": now + DAY}
    with pytest.raises(NotAuthenticated):
        read_token(jwt.encode(claims, SECRET, algorithm="HS512"), SECRET)


@pytest.mark.parametrize("garbage", ["", "garbage", "a.b.c", "Bearer x", "....", "ey.ey.ey"])
def test_garbage_is_not_authenticated(garbage):
    with pytest.raises(NotAuthenticated):
        read_token(garbage, SECRET)


@pytest.mark.parametrize("missing", ["sub", "iat", "exp"])
def test_a_token_missing_a_claim_is_not_authenticated(missing):
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "iat": now, "exp": now + DAY}
    del claims[missing]
    with pytest.raises(NotAuthenticated):
        read_token(jwt.encode(claims, SECRET, algorithm="HS256"), SECRET)


@pytest.mark.parametrize("sub", ["not-a-uuid", "", 12345, None])
def test_a_token_whose_subject_is_not_a_user_id_is_not_authenticated(sub):
    now = int(time.time())
    claims = {"sub": sub, "iat": now, "exp": now + DAY}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(NotAuthenticated):
        read_token(token, SECRET)


def test_every_bad_token_gets_the_same_message():
    expired = issue_token(uuid.uuid4(), SECRET, 3600, now=time.time() - 2 * 3600)
    forged = issue_token(uuid.uuid4(), OTHER_SECRET, DAY)
    messages = set()
    for token in (expired, forged, "garbage"):
        with pytest.raises(NotAuthenticated) as caught:
            read_token(token, SECRET)
        messages.add(caught.value.message)
    assert len(messages) == 1


def test_a_password_hash_is_argon2_and_verifies_only_its_password():
    stored = hash_password("correct horse battery")
    assert stored.startswith("$argon2")
    assert "correct horse battery" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse battery!", stored)
    assert not verify_password("Correct horse battery", stored)


def test_hashing_the_same_password_twice_gives_different_salted_hashes():
    first, second = hash_password("same password"), hash_password("same password")
    assert first != second
    assert verify_password("same password", first)
    assert verify_password("same password", second)
