import contextlib
import stat
import uuid

import pytest

from daygen.ids import uuid7
from daygen.local import ConfigError, jwt_secret_for, resolve
from daygen.settings import Settings


def test_plain_postgres_urls_get_the_async_driver():
    assert Settings(database_url="postgresql://u@h/db").database_url == "postgresql+asyncpg://u@h/db"
    assert Settings(database_url="postgres://u@h/db").database_url == "postgresql+asyncpg://u@h/db"


def test_settings_come_from_daygen_environment_variables(monkeypatch):
    monkeypatch.setenv("DAYGEN_PORT", "9123")
    monkeypatch.setenv("DAYGEN_CORS_ORIGINS", "https://a.example, https://b.example ,")
    monkeypatch.setenv("DAYGEN_JWT_SECRET", "s3cret")
    settings = Settings()
    assert settings.port == 9123
    assert settings.cors_origin_list == ["https://a.example", "https://b.example"]
    assert "s3cret" not in repr(settings)


def test_production_mode_refuses_to_start_without_a_jwt_secret(tmp_path):
    settings = Settings(
        mode="production",
        home=tmp_path,
        database_url="postgresql://x@h/db",
        redis_url="redis://h",
        storage_url="s3://bucket/prefix",
    )
    with contextlib.ExitStack() as stack, pytest.raises(ConfigError, match="DAYGEN_JWT_SECRET"):
        resolve(settings, stack)


def test_development_mode_generates_the_jwt_secret_once_and_keeps_it(tmp_path):
    first = jwt_secret_for(tmp_path)
    assert jwt_secret_for(tmp_path) == first
    assert len(first) >= 40
    assert stat.S_IMODE((tmp_path / "jwt_secret").stat().st_mode) == 0o600


def test_development_mode_fills_storage_and_secret_under_home(tmp_path):
    settings = Settings(home=tmp_path, database_url="postgresql://x@h/db", redis_url="redis://h")
    with contextlib.ExitStack() as stack:
        resolved = resolve(settings, stack)
    assert resolved.storage_url == f"file://{tmp_path.resolve() / 'objects'}"
    assert resolved.jwt_secret.get_secret_value() == jwt_secret_for(tmp_path)
    assert resolved.missing_required() == []


def test_ids_are_version_7_and_sort_by_creation_time():
    ids = [uuid7() for _ in range(3)]
    assert all(i.version == 7 for i in ids)
    assert ids[0].int >> 80 <= ids[1].int >> 80 <= ids[2].int >> 80


def test_ids_made_in_the_same_millisecond_still_sort_in_the_order_they_were_made():
    ids = [uuid7() for _ in range(2000)]
    assert len({i.int >> 80 for i in ids}) < len(ids), "some share a millisecond"
    assert ids == sorted(ids)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
