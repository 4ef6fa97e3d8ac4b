"""Starting Ray small and deploying the Serve app: shared by `daygen up` and the tests."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import ray
from ray import serve

from daygen.settings import Settings

APP_NAME = "daygen"
RAY_NAMESPACE = "daygen"


class PortInUse(RuntimeError):
    pass


def check_port_free(host: str, port: int) -> None:
    """Serve would only fail after a delay on a taken port; say so at once instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUse(f"{host}:{port} is already in use; set DAYGEN_PORT to a free port") from None
            raise


def start_ray(
    *, temp_dir: Path, dashboard: bool, num_cpus: int | None = None, object_store_bytes: int | None = None
) -> ray.runtime_context.RuntimeContext:
    """A private local Ray: token auth off (loopback only), no shared /tmp/ray."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp_dir.mkdir(parents=True, exist_ok=True)
    return ray.init(
        namespace=RAY_NAMESPACE,
        num_cpus=num_cpus,
        object_store_memory=object_store_bytes,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        _temp_dir=str(temp_dir),
        configure_logging=True,
        logging_level="WARNING",
        log_to_driver=True,
    )


def deploy(settings: Settings) -> str:
    """Deploy the app on settings.host:port and return its base URL."""
    from serve_app.app import build_app

    check_port_free(settings.host, settings.port)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    return f"http://{settings.host}:{settings.port}"
