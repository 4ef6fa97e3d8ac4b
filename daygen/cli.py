"""The `daygen` command: up, migrate, user create."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import threading
from decimal import Decimal
from pathlib import Path

from daygen.local import ConfigError, resolve
from daygen.logs import configure_logging
from daygen.settings import Settings


def _fail(message: str, code: int = 2) -> int:
    print(f"daygen: error: {message}", file=sys.stderr)
    return code


def cmd_up(settings: Settings) -> int:
    import ray

    from daygen.runtime import PortInUse, check_port_free, deploy, start_ray
    from storage.migrate import migrate_to

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ray_dir = Path(tempfile.gettempdir()) / f"daygen-ray-{settings.port}"
    with contextlib.ExitStack() as stack:
        try:
            check_port_free(settings.host, settings.port)
            settings = resolve(settings, stack)
            print("daygen: running database migrations", flush=True)
            migrate_to(settings.database_url)
            print("daygen: starting Ray and the Serve app (about 15 s)", flush=True)
            stack.callback(shutil.rmtree, ray_dir, True)
            context = start_ray(temp_dir=ray_dir, dashboard=settings.ray_dashboard, http_port=settings.port)
            stack.callback(ray.shutdown)
            base = deploy(settings)
        except (PortInUse, ConfigError) as exc:
            return _fail(str(exc))
        dashboard = context.dashboard_url
        print(
            f"\ndaygen is running ({settings.mode} mode)\n"
            f"  API          {base}/v1\n"
            f"  API docs     {base}/docs\n"
            f"  studio       {base}/studio\n"
            f"  Ray dashboard {'http://' + dashboard if dashboard else 'off (DAYGEN_RAY_DASHBOARD=false)'}\n"
            f"  data folder  {settings.home}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        stop.wait()
        print("\ndaygen: stopping", flush=True)
    return 0


def cmd_migrate(settings: Settings) -> int:
    from storage.migrate import migrate_to

    with contextlib.ExitStack() as stack:
        try:
            settings = resolve(settings, stack, need_redis=False)
        except ConfigError as exc:
            return _fail(str(exc))
        migrate_to(settings.database_url)
    print("daygen: database is at the latest migration")
    return 0


def cmd_user_create(settings: Settings, email: str, password: str, admin: bool) -> int:
    from daygen.errors import EmailTaken
    from serve_app.schemas import SignupIn
    from serve_app.security import hash_password
    from storage.db import make_engine, make_sessionmaker
    from storage.migrate import migrate_to
    from storage.users import create_user

    try:
        body = SignupIn(email=email, password=password)
    except ValueError as exc:
        return _fail(f"invalid email or password: {exc}")

    async def create(url: str) -> str:
        engine = make_engine(url, pool_size=1)
        try:
            async with make_sessionmaker(engine)() as session:
                user = await create_user(
                    session,
                    email=body.email,
                    password_hash=hash_password(body.password),
                    display_name=None,
                    role="admin" if admin else "user",
                    signup_credits=Decimal(settings.signup_credits),
                )
                return str(user.id)
        finally:
            await engine.dispose()

    with contextlib.ExitStack() as stack:
        try:
            settings = resolve(settings, stack, need_redis=False)
        except ConfigError as exc:
            return _fail(str(exc))
        migrate_to(settings.database_url)
        try:
            user_id = asyncio.run(create(settings.database_url))
        except EmailTaken as exc:
            return _fail(exc.message, 1)
    print(f"created {'admin' if admin else 'user'} {body.email.strip().lower()} ({user_id})")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="daygen", description="AI image studio backend on Ray Serve.")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run the whole product (embedded defaults when nothing is configured)")
    commands.add_parser("migrate", help="bring the database schema up to date")
    user = commands.add_parser("user", help="manage users").add_subparsers(dest="user_command", required=True)
    create = user.add_parser("create", help="create a user (or an admin with --admin)")
    create.add_argument("--email", required=True)
    create.add_argument("--password", required=True)
    create.add_argument("--admin", action="store_true")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:
        return _fail(f"invalid settings: {exc}")
    configure_logging(settings.log_level)
    if args.command == "up":
        return cmd_up(settings)
    if args.command == "migrate":
        return cmd_migrate(settings)
    return cmd_user_create(settings, args.email, args.password, args.admin)


if __name__ == "__main__":
    sys.exit(main())
