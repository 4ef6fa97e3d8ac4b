"""Runs the Alembic migrations programmatically, so `daygen migrate` and tests share one path."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate_to(database_url: str, revision: str = "head") -> None:
    """Migrate to the newest schema, or (to test a migration) to an earlier `revision`."""
    command.upgrade(alembic_config(database_url), revision)
