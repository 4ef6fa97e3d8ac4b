"""HMAC-signed, expiring `/files` URLs for private assets on the local store."""

from __future__ import annotations

import hashlib
import hmac

from daygen.errors import Forbidden


def files_secret(jwt_secret: str) -> bytes:
    """A key of its own, derived from the JWT secret so there is no second secret to manage."""
    return hmac.new(jwt_secret.encode(), b"daygen signed file urls", hashlib.sha256).digest()


def signature(secret: bytes, key: str, expires: int) -> str:
    return hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_query(secret: bytes, key: str, now: float, ttl_seconds: int) -> str:
    expires = int(now) + ttl_seconds
    return f"expires={expires}&signature={signature(secret, key, expires)}"


def check(secret: bytes, key: str, expires: int | None, given: str | None, now: float) -> None:
    if expires is None or given is None:
        raise Forbidden("this file needs a signed URL")
    if not hmac.compare_digest(signature(secret, key, expires), given):
        raise Forbidden("the URL's signature is not valid")
    if expires < now:
        raise Forbidden("the signed URL has expired")
