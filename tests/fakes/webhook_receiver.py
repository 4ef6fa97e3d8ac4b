"""A webhook receiver on a loopback port: records every delivery, answers as scripted.

Real HTTP in a background thread (like the provider fakes), so the app's sender reaches it over
the network. Tests wait for deliveries with `wait_for(count)`, which blocks on a condition, never
on a sleep.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.server import FakeServer


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._replies: list[tuple[str | None, int, dict[str, str]]] = []
        self._changed = threading.Condition()
        self._server = FakeServer(Starlette(routes=[Route("/{path:path}", self._receive, methods=["POST"])]))

    def __enter__(self) -> WebhookReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def url(self, path: str = "/hook") -> str:
        return f"{self._server.base_url}{path}"

    def answer_next(
        self, status: int, times: int = 1, headers: dict[str, str] | None = None, path: str | None = None
    ) -> None:
        """The next `times` deliveries (to `path`, or any) get `status` (with `headers`); then 200 again."""
        with self._changed:
            self._replies += [(path, status, headers or {})] * times

    def reset(self) -> None:
        with self._changed:
            self.deliveries.clear()
            self._replies.clear()

    def to(self, path: str) -> list[Delivery]:
        with self._changed:
            return [d for d in self.deliveries if d.path == path]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 20.0) -> list[Delivery]:
        """Block until `count` deliveries (to `path`, or any) have arrived; all of them, in order."""
        with self._changed:

            def arrived() -> list[Delivery]:
                return [d for d in self.deliveries if path is None or d.path == path]

            if not self._changed.wait_for(lambda: len(arrived()) >= count, timeout):
                raise TimeoutError(f"{len(arrived())} of {count} deliveries arrived in {timeout} s")
            return arrived()

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        with self._changed:
            self.deliveries.append(Delivery(request.url.path, dict(request.headers), body, time.monotonic()))
            status, headers = 200, {}
            for index, (path, scripted, scripted_headers) in enumerate(self._replies):
                if path is None or path == request.url.path:
                    status, headers = scripted, scripted_headers
                    del self._replies[index]
                    break
            self._changed.notify_all()
        return Response(b'{"ok": true}', status, headers=headers, media_type="application/json")
