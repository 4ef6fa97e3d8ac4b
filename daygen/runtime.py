"""Starting Ray small and deploying the Serve app: shared by `daygen up` and the tests."""

from __future__ import annotations

import errno
import gc
import itertools
import os
import random
import socket
from collections.abc import Collection
from pathlib import Path

import ray
from ray import serve

from daygen.settings import Settings

APP_NAME = "daygen"
RAY_NAMESPACE = "daygen"


# Young collections every 7,000 new objects instead of 700, full ones a hundredth as often: still
# considered every 7,000 x 10 x 100 allocations (and run once a quarter of the heap is new, as ever),
# so cyclic garbage stays bounded.
GC_THRESHOLDS = (7_000, 10, 100)


def tune_garbage_collector() -> None:
    """Hide every object alive now (the modules, the settings, the clients) from the garbage collector,
    and collect less often.

    Called at the end of each actor's and replica's start. Full collections then walk only what
    the process made since, instead of the hundreds of thousands of objects of Ray, FastAPI and
    SQLAlchemy; walking those stalled requests by 50-100 ms (bench/job_engine.py latency p99: 114
    ms before, 55-61 ms after). What a process makes since still grows: an open WebSocket holds
    about 300 objects (its ASGI stack's coroutines and closures), so with 1,000 open a full
    collection took the replica 0.2-0.4 s of CPU, with nothing else running, twice in the burst of
    bench/job_engine.py at the default thresholds.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# HAProxy refuses unix socket paths over 97 characters; Ray puts its sockets in a folder named
# after the node id (56 characters) under ours, as `.../<node id>/metrics.sock`.
MAX_HAPROXY_DIR_CHARS = 97 - 1 - 56 - len("/metrics.sock")


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


# HAProxy's side listeners (stats, metrics, the backup Serve proxy) take their ports from here: below
# the kernel's ephemeral range (32768-60999 on Linux), where outgoing connections take their local
# ports (one took a port picked there before HAProxy bound it, and `daygen up` did not start), and
# apart from Ray's worker ports (10002-19999) and Serve's replica ports (30000-31000).
SIDE_PORTS = range(20000, 30000)


def _bindable(port: int) -> bool:
    """Free on every interface, as HAProxy binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def side_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """`count` distinct ports of SIDE_PORTS free now, picked at random (several daygens share a machine),
    none of `avoid` (ports free now that something else will bind, such as the app's own)."""
    free = (port for port in random.sample(SIDE_PORTS, len(SIDE_PORTS)) if port not in avoid and _bindable(port))
    chosen = list(itertools.islice(free, count))
    if len(chosen) < count:
        raise PortInUse(f"not {count} free ports between {SIDE_PORTS.start} and {SIDE_PORTS.stop - 1} for HAProxy")
    return chosen


def ingress_environment(temp_dir: Path, http_port: int) -> dict[str, str]:
    """Serve's HTTP ingress as daygen runs it: HAProxy in front of replicas that serve HTTP themselves.

    Measured on 2 cores (docs/ingress.md): about 9x the requests per second of Serve's Python
    proxy and a quarter of its latency, and with user code on the replica's own event loop and
    `serve_app.http_server` a request body streams with back-pressure instead of being read into
    memory ahead of the app. HAProxy's files and its side ports (stats, metrics, and the backup
    Serve proxy) are made private to this Ray, so several can run on one machine, and are never
    `http_port`, the app's own, which HAProxy binds only once Serve is up.
    """
    haproxy_dir = temp_dir / "hap"
    if len(str(haproxy_dir)) > MAX_HAPROXY_DIR_CHARS:
        raise ValueError(
            f"Ray's temp folder {temp_dir} is too long a path for HAProxy's sockets: "
            f"keep it under {MAX_HAPROXY_DIR_CHARS - 4} characters"
        )
    stats_port, metrics_port, fallback_port = side_ports(3, avoid={http_port})
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app.http_server:server_middlewares",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy_dir / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy_dir / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy_dir),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy_dir / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(haproxy_dir / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_port),
    }


def start_ray(
    *,
    temp_dir: Path,
    dashboard: bool,
    http_port: int,
    num_cpus: int | None = None,
    object_store_bytes: int | None = None,
) -> ray.runtime_context.RuntimeContext:
    """A private local Ray: token auth off (loopback only), no shared /tmp/ray, daygen's ingress for
    an app on `http_port`."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp_dir.mkdir(parents=True, exist_ok=True)
    # Ray's processes inherit the environment the cluster starts with.
    os.environ.update(ingress_environment(temp_dir, http_port))
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
