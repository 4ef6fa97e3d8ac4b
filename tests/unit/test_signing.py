import pytest

from daygen.errors import Forbidden
from serve_app.signing import check, files_secret, signature, signed_query

SECRET = files_secret("jwt secret")
KEY = "assets/ab/abc.png"


def query_parts(query: str) -> tuple[int, str]:
    fields = dict(part.split("=") for part in query.split("&"))
    return int(fields["expires"]), fields["signature"]


def test_a_fresh_signature_passes_until_it_expires():
    expires, sig = query_parts(signed_query(SECRET, KEY, now=1000, ttl_seconds=60))
    check(SECRET, KEY, expires, sig, now=1059)
    with pytest.raises(Forbidden, match="expired"):
        check(SECRET, KEY, expires, sig, now=1061)


def test_a_signature_is_bound_to_its_key_expiry_and_secret():
    expires, sig = query_parts(signed_query(SECRET, KEY, now=1000, ttl_seconds=60))
    for key, when, secret in (
        (KEY + "x", expires, SECRET),
        (KEY, expires + 1, SECRET),
        (KEY, expires, files_secret("other")),
    ):
        with pytest.raises(Forbidden):
            check(secret, key, when, sig, now=1000)


def test_missing_parts_are_forbidden():
    with pytest.raises(Forbidden):
        check(SECRET, KEY, None, signature(SECRET, KEY, 5), now=0)
    with pytest.raises(Forbidden):
        check(SECRET, KEY, 5, None, now=0)


def test_the_files_secret_differs_from_the_jwt_secret():
    assert SECRET != b"jwt secret" and len(SECRET) == 32
