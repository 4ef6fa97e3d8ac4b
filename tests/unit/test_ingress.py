"""daygen's ingress set-up: which requests stream their bodies, and HAProxy's paths."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from daygen import runtime
from daygen.runtime import ingress_environment, side_ports
from serve_app.http_server import StreamRequestBodies, server_middlewares

SIDE_PORT_NAMES = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
)


async def headers_seen_by_app(method: str, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    await StreamRequestBodies(app)({"type": "http", "method": method, "headers": headers}, None, None)
    return seen["headers"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_requests_with_a_body_ask_serve_to_leave_the_body_to_the_app(method):
    headers = await headers_seen_by_app(method, [(b"content-type", b"image/png")])
    assert headers == [(b"content-type", b"image/png"), (b"x-request-disconnect-disabled", b"?1")]


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
async def test_requests_without_a_body_keep_serves_disconnect_watch(method):
    assert await headers_seen_by_app(method, [(b"accept", b"*/*")]) == [(b"accept", b"*/*")]


async def test_a_clients_own_hint_is_replaced_not_repeated():
    headers = await headers_seen_by_app("POST", [(b"x-request-disconnect-disabled", b"?0")])
    assert headers == [(b"x-request-disconnect-disabled", b"?1")]


async def test_websockets_pass_untouched():
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    scope = {"type": "websocket", "headers": [(b"origin", b"x")]}
    await StreamRequestBodies(app)(scope, None, None)
    assert seen == scope


def test_serve_gets_the_middleware_from_the_callback():
    assert [m.cls for m in server_middlewares()] == [StreamRequestBodies]


def test_the_ingress_uses_haproxy_with_user_code_on_the_replica_loop_and_private_paths(tmp_path):
    short = Path("/tmp/dgr-abc")
    env = ingress_environment(short, 20000)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "serve_app.http_server:server_middlewares"
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"].startswith("/tmp/dgr-abc/hap/")
    ports = {int(env[name]) for name in SIDE_PORT_NAMES}
    assert len(ports) == 3


def test_haproxys_side_ports_are_never_the_apps_own_port(monkeypatch):
    """The app's port is free until HAProxy binds it once Serve is up: a side port picked on it would
    be bound first, and HAProxy could not start ("Address already in use")."""
    start = next(p for p in range(20000, 29996, 4) if all(runtime._bindable(q) for q in range(p, p + 4)))
    monkeypatch.setattr(runtime, "SIDE_PORTS", range(start, start + 4))  # four ports: three side, one app
    for _ in range(20):
        env = ingress_environment(Path("/tmp/dgr-abc"), http_port=start)
        assert {int(env[name]) for name in SIDE_PORT_NAMES} == set(range(start + 1, start + 4))


def test_haproxys_side_ports_are_free_and_below_the_range_outgoing_connections_take_theirs():
    """A port picked from the ephemeral range was taken by an outgoing connection before HAProxy
    bound it, and `daygen up` did not start."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        ports = side_ports(3)
        assert len(set(ports)) == 3
        assert all(port < ephemeral_low and not 30000 <= port <= 31000 for port in ports)
        for port in ports:
            with socket.socket() as listener:  # as HAProxy binds it
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("0.0.0.0", port))


def test_a_temp_folder_too_long_for_haproxys_sockets_is_refused_up_front():
    with pytest.raises(ValueError, match="too long"):
        ingress_environment(Path("/tmp") / ("x" * 40), 20000)
