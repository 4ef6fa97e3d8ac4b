"""What runs in Serve's HTTP server, in front of the app: request bodies stream with back-pressure.

Serve's direct ingress normally starts a task per request that reads the whole request body
ahead of the app, into an unbounded queue, to notice a client that goes away. A 200 MB upload
then sits in the replica's memory however slowly the app consumes it. For requests that carry
a body, this middleware sets Serve's `x-request-disconnect-disabled: ?1` hint, which hands the
app the server's own `receive`: the body arrives as the app reads it, and a client that goes
away still shows up as `http.disconnect` in the app's own reads. Requests without a body
(long polls, downloads) keep Serve's disconnect watch, which cancels work nobody waits for.

Serve loads it through `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` (see `daygen.runtime`).
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

DISCONNECT_DISABLED = (b"x-request-disconnect-disabled", b"?1")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class StreamRequestBodies:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            headers = [(k, v) for k, v in scope["headers"] if k != DISCONNECT_DISABLED[0]]
            scope = {**scope, "headers": [*headers, DISCONNECT_DISABLED]}
        await self.app(scope, receive, send)


def server_middlewares() -> list[Middleware]:
    """The callback Serve calls when it builds each HTTP server."""
    return [Middleware(StreamRequestBodies)]
