"""The `daygen` command as a user runs it: a subprocess with DAYGEN_* settings in its environment."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import httpx
import psutil
from sqlalchemy import select

from storage.models import User
from tests.conftest import free_port

DAYGEN = [sys.executable, "-m", "daygen.cli"]


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAYGEN_")}
    env.update(overrides)
    return env


async def run(*args: str, env: dict[str, str], seconds: float = 120) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *DAYGEN, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), seconds)
    return process.returncode, out.decode(), err.decode()


async def test_up_on_a_taken_port_exits_at_once_with_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run("up", env=clean_env(DAYGEN_HOME=str(tmp_path), DAYGEN_PORT=str(port)), seconds=60)
    assert code == 2
    assert f"127.0.0.1:{port} is already in use" in err
    assert not (tmp_path / "pg").exists(), "nothing is started when the port is taken"


async def test_user_create_makes_users_and_admins_and_refuses_duplicates(settings, sessions):
    env = clean_env(DAYGEN_DATABASE_URL=settings.database_url, DAYGEN_HOME=str(settings.home))
    code, out, _ = await run(
        "user", "create", "--email", " Admin@Example.com ", "--password", "long enough", "--admin", env=env
    )
    assert code == 0, out
    assert "created admin admin@example.com" in out
    code, _, err = await run("user", "create", "--email", "admin@EXAMPLE.com", "--password", "long enough", env=env)
    assert code == 1
    assert "already exists" in err
    code, _, err = await run("user", "create", "--email", "short@example.com", "--password", "short", env=env)
    assert code == 2
    assert "password" in err
    async with sessions() as session:
        user = (await session.execute(select(User).where(User.email == "admin@example.com"))).scalar_one()
    assert user.role == "admin"


async def test_migrate_is_idempotent(settings):
    env = clean_env(DAYGEN_DATABASE_URL=settings.database_url, DAYGEN_HOME=str(settings.home))
    code, out, err = await run("migrate", env=env)
    assert code == 0, err
    assert "latest migration" in out


async def test_production_mode_without_a_jwt_secret_is_a_startup_error(settings, tmp_path):
    env = clean_env(
        DAYGEN_MODE="production",
        DAYGEN_HOME=str(tmp_path),
        DAYGEN_DATABASE_URL=settings.database_url,
        DAYGEN_REDIS_URL=settings.redis_url,
        DAYGEN_STORAGE_URL=settings.storage_url,
    )
    code, _, err = await run("migrate", env=env)
    assert code == 2
    assert "DAYGEN_JWT_SECRET" in err


def processes_under(home: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(str(home) in part for part in process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            continue
    return found


async def test_up_runs_everything_embedded_and_ctrl_c_stops_it_all(tmp_path):
    home = tmp_path / "home"
    port = free_port()
    ray_dir = Path(tempfile.gettempdir()) / f"daygen-ray-{port}"
    env = clean_env(DAYGEN_HOME=str(home), DAYGEN_PORT=str(port), DAYGEN_RAY_DASHBOARD="false")
    process = await asyncio.create_subprocess_exec(
        *DAYGEN, "up", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    printed = []
    try:
        async with asyncio.timeout(180):
            while not any("Press Ctrl-C" in line for line in printed):
                line = await process.stdout.readline()
                assert line, "daygen up exited early:\n" + "".join(printed)
                printed.append(line.decode())
        output = "".join(printed)
        assert f"http://127.0.0.1:{port}/docs" in output
        assert f"http://127.0.0.1:{port}/studio" in output
        assert (home / "jwt_secret").exists() and (home / "pg").is_dir()

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert (await client.get("/readyz")).status_code == 200
            signup = await client.post("/v1/auth/signup", json={"email": "first@example.com", "password": "12345678"})
            assert signup.status_code == 201
            assert signup.json()["user"]["credits"] == 20
        assert processes_under(home), "the embedded servers run under the data folder"
        assert processes_under(ray_dir), "Ray runs in its own temp folder"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(90):
            rest = await process.stdout.read()
            await process.wait()
    assert process.returncode == 0, rest.decode()
    assert processes_under(home) == [], "Ctrl-C leaves no embedded server running"
    assert processes_under(ray_dir) == [], "Ctrl-C leaves no Ray process running"
    with socket.socket() as probe:
        # As the next `daygen up` binds: connections HAProxy closed may linger in TIME_WAIT.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
