"""Filling the gaps in settings for one-machine use: embedded servers, local storage, a kept secret."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

from daygen.settings import Settings


class ConfigError(RuntimeError):
    pass


def jwt_secret_for(home: Path) -> str:
    """Generated once and kept under the data folder, so tokens survive restarts."""
    path = home / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    path.write_text(secrets.token_urlsafe(48))
    path.chmod(0o600)
    return path.read_text().strip()


def resolve(settings: Settings, stack: contextlib.ExitStack, *, need_redis: bool = True) -> Settings:
    """Start what is missing (development mode only) and return complete settings.

    Everything started is registered on `stack`, so closing it stops it all.
    """
    if settings.mode == "production":
        if missing := settings.missing_required():
            raise ConfigError(
                "production mode needs "
                + ", ".join(missing)
                + "; embedded servers and generated secrets are for development only"
            )
        return settings

    from daygen import embedded

    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    update: dict = {"home": home}
    if settings.database_url is None:
        server = embedded.start_postgres(home / "pg")
        stack.callback(server.stop)
        update["database_url"] = server.url
    if settings.redis_url is None and need_redis:
        server = embedded.start_redis(home / "redis")
        stack.callback(server.stop)
        update["redis_url"] = server.url
    if settings.storage_url is None:
        update["storage_url"] = f"file://{home / 'objects'}"
    if settings.jwt_secret is None:
        update["jwt_secret"] = jwt_secret_for(home)
    return Settings.model_validate({**settings.model_dump(), **update})
