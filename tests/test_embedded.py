"""`daygen up` without configured URLs: embedded PostgreSQL and Redis on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis

from daygen.embedded import (
    EmbeddedServer,
    EmbeddedServerError,
    start_postgres,
    start_redis,
)


@contextmanager
def running(server: EmbeddedServer) -> Iterator[EmbeddedServer]:
    try:
        yield server
    finally:
        server.stop()


def processes_in(directory: Path) -> list[int]:
    """Every server process chdirs into its data directory, children included."""
    found = []
    for process in psutil.process_iter():
        try:
            if Path(process.cwd()).is_relative_to(directory.resolve()):
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def assert_gone(server: EmbeddedServer, data_dir: Path) -> None:
    assert not psutil.pid_exists(server.pid)
    assert processes_in(data_dir) == []


async def execute(url: str, *statements: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        for statement in statements[:-1]:
            await connection.execute(statement)
        return await connection.fetch(statements[-1])
    finally:
        await connection.close()


def test_embedded_postgres_keeps_rows_across_restart(tmp_path: Path) -> None:
    with running(start_postgres(tmp_path)) as first:
        assert first.url.startswith("postgresql://postgres@127.0.0.1:")
        asyncio.run(
            execute(
                first.url,
                "CREATE TABLE notes (body text)",
                "INSERT INTO notes VALUES ('kept')",
                "SELECT 1",
            )
        )
    assert_gone(first, tmp_path)

    with running(start_postgres(tmp_path)) as second:
        rows = asyncio.run(execute(second.url, "SELECT body FROM notes"))
    assert [row["body"] for row in rows] == ["kept"]
    assert_gone(second, tmp_path)


def test_embedded_postgres_starts_again_after_its_server_was_killed(
    tmp_path: Path,
) -> None:
    crashed = start_postgres(tmp_path)
    asyncio.run(
        execute(
            crashed.url,
            "CREATE TABLE notes (body text)",
            "INSERT INTO notes VALUES ('kept')",
        )
    )
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.stop()
    assert (tmp_path / "pgdata" / "postmaster.pid").exists()

    with running(start_postgres(tmp_path)) as restarted:
        rows = asyncio.run(execute(restarted.url, "SELECT body FROM notes"))
    assert [row["body"] for row in rows] == ["kept"]
    assert_gone(restarted, tmp_path)


def test_a_second_postgres_on_the_same_dir_is_refused_while_the_first_runs(
    tmp_path: Path,
) -> None:
    with running(start_postgres(tmp_path)) as first:
        with pytest.raises(EmbeddedServerError, match="already running"):
            start_postgres(tmp_path)
        assert asyncio.run(execute(first.url, "SELECT 1 AS one"))[0]["one"] == 1


def test_embedded_postgres_reports_an_unusable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(EmbeddedServerError, match="not writable"):
        start_postgres(blocker / "data")


def test_stopping_twice_is_harmless(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    server.stop()
    server.stop()
    assert_gone(server, tmp_path)


def test_embedded_redis_keeps_keys_across_restart(tmp_path: Path) -> None:
    with running(start_redis(tmp_path)) as first:
        assert first.url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(first.url, decode_responses=True)
        client.set("greeting", "kept")
        client.close()
    assert_gone(first, tmp_path)

    with running(start_redis(tmp_path)) as second:
        client = redis.Redis.from_url(second.url, decode_responses=True)
        assert client.get("greeting") == "kept"
        client.close()
    assert_gone(second, tmp_path)


def test_embedded_redis_starts_again_after_its_server_was_killed(
    tmp_path: Path,
) -> None:
    crashed = start_redis(tmp_path)
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.stop()
    assert (tmp_path / "redis.pid").exists()

    with running(start_redis(tmp_path)) as restarted:
        client = redis.Redis.from_url(restarted.url)
        assert client.ping()
        client.close()
    assert_gone(restarted, tmp_path)
