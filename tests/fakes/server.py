"""Run an ASGI app on a loopback port in a background thread, for provider fakes in tests.

The server binds 127.0.0.1 port 0 and `start()` returns the real base URL once uvicorn is
accepting connections. The app runs on the thread's own event loop, so tests on any loop
(or none) can talk to it over plain HTTP.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
import uvloop

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


class FakeServer:
    """A uvicorn server in a daemon thread; usable as `with FakeServer(app) as base_url:`."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", on_shutdown: Callable[[], None] | None = None) -> None:
        self.app = app
        self.host = host
        self.port: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._on_shutdown = on_shutdown
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeServer is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        if self._thread is not None:
            return self.base_url
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=0,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # Fakes can hang requests on purpose; do not let shutdown wait for them forever.
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"fake-server-{id(self):x}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError("FakeServer failed to start") from self._error
            if time.monotonic() > deadline:
                raise TimeoutError("FakeServer did not start in time")
            time.sleep(0.005)
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.port = sockets[0].getsockname()[1]
        return self.base_url

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        if self._on_shutdown is not None and self.loop is not None and not self.loop.is_closed():
            # Give the app a chance to release whatever it holds (hung requests) on its own loop.
            try:
                self.loop.call_soon_threadsafe(self._on_shutdown)
            except RuntimeError:
                pass
        self._server.should_exit = True
        self._thread.join(_STOP_TIMEOUT_S)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(_STOP_TIMEOUT_S)
        self._server = None
        self._thread = None
        self.port = None
        self.loop = None

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the server's event loop (for touching asyncio objects from another thread)."""
        if self.loop is None or self.loop.is_closed():
            callback()
            return
        self.loop.call_soon_threadsafe(callback)

    def _run(self) -> None:
        assert self._server is not None
        # uvloop, as uvicorn picks for itself when it makes the loop: a fake standing in for a provider
        # shares this machine's cores with the app under test, so its own CPU is kept small.
        loop = uvloop.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._server.serve())
        except BaseException as exc:  # surfaced to start() so a bind failure is not silent
            self._error = exc
        finally:
            loop.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
