"""A local fake of the Stripe endpoint daygen calls: `POST /v1/checkout/sessions` (a pack's payment, or
a plan's subscription).

Real HTTP on loopback (the app's `stripe` client reaches it through DAYGEN_STRIPE_API_BASE). It
checks the secret key, reads Stripe's form encoding (`line_items[0][price_data][currency]=usd`),
refuses what Stripe would, and answers with a Checkout Session as Stripe does; every session made
is kept for the tests to look at, and `fail_next` makes it answer 5xx.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.server import FakeServer

REQUIRED = ("mode", "success_url", "line_items[0][quantity]", "line_items[0][price_data][currency]")


@dataclass
class MadeSession:
    params: dict[str, str]  # the form as sent
    session: dict[str, Any]  # the answer


class FakeStripe:
    api_key = "sk_test_daygen_fake"

    def __init__(self) -> None:
        self.made: list[MadeSession] = []
        self._failures = 0
        self._lock = threading.Lock()
        self._server = FakeServer(Starlette(routes=[Route("/v1/checkout/sessions", self._create, methods=["POST"])]))

    def __enter__(self) -> FakeStripe:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def fail_next(self, times: int = 1) -> None:
        """The next `times` requests get a 500, as during a Stripe incident."""
        with self._lock:
            self._failures += times

    def reset(self) -> None:
        with self._lock:
            self._failures = 0
            self.made.clear()

    @staticmethod
    def _error(status: int, kind: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"type": kind, "message": message}}, status)

    async def _create(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(401, "invalid_request_error", "Invalid API Key provided")
        with self._lock:
            failing = self._failures > 0
            self._failures -= failing
        if failing:
            return self._error(500, "api_error", "An unknown error occurred")
        params = {key: str(value) for key, value in (await request.form()).items()}
        if missing := [name for name in REQUIRED if name not in params]:
            return self._error(400, "invalid_request_error", f"Missing required param: {missing[0]}.")
        if params["mode"] not in ("payment", "subscription"):
            return self._error(400, "invalid_request_error", f"Invalid mode: {params['mode']}.")
        if params["mode"] == "subscription" and "line_items[0][price_data][recurring][interval]" not in params:
            return self._error(400, "invalid_request_error", "A subscription needs a recurring price.")
        session_id = f"cs_test_{secrets.token_hex(12)}"
        quantity = int(params["line_items[0][quantity]"])
        metadata = {key[len("metadata[") : -1]: value for key, value in params.items() if key.startswith("metadata[")}
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": params["mode"],
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            "client_reference_id": params.get("client_reference_id"),
            "metadata": metadata,
            "amount_total": int(params["line_items[0][price_data][unit_amount]"]) * quantity,
            "currency": params["line_items[0][price_data][currency]"],
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params["success_url"],
            "cancel_url": params.get("cancel_url"),
        }
        self.made.append(MadeSession(params, session))
        return JSONResponse(session)
