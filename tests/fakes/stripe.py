"""A local fake of the Stripe endpoints daygen calls: `POST /v1/checkout/sessions` (a pack's payment,
a plan's subscription), and for auto top-up `GET /v1/payment_methods` and `POST /v1/payment_intents`.

Real HTTP on loopback (the app's `stripe` client reaches it through DAYGEN_STRIPE_API_BASE). It
checks the secret key, reads Stripe's form encoding (`line_items[0][price_data][currency]=usd`),
refuses what Stripe would, and answers as Stripe does. A session that saves the card
(`payment_intent_data[setup_future_usage]`) makes a customer with a card on file; a payment intent
charges it off-session once per Idempotency-Key (a repeat answers the first answer, as Stripe does),
or is declined after `decline_next`. Every session and charge made is kept for the tests to look at,
`fail_next` makes the next request answer 5xx, `lose_next_answers` makes the next payment intents
charge but answer 5xx (the answer lost on its way), and `forget_keys` forgets every Idempotency-Key,
as Stripe does after 24 hours.
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


@dataclass
class Charge:
    params: dict[str, str]  # the form as sent
    intent: dict[str, Any]  # the answer (a declined charge's payment intent too)


class FakeStripe:
    api_key = "sk_test_daygen_fake"

    def __init__(self) -> None:
        self.made: list[MadeSession] = []
        self.charges: list[Charge] = []
        self.cards: dict[str, list[str]] = {}  # customer -> its saved payment methods
        self._answers: dict[str, tuple[int, dict[str, Any]]] = {}  # Idempotency-Key -> the first answer
        self._failures = 0
        self._declines = 0
        self._lost_answers = 0
        self._lock = threading.Lock()
        routes = [
            Route("/v1/checkout/sessions", self._create, methods=["POST"]),
            Route("/v1/payment_methods", self._payment_methods, methods=["GET"]),
            Route("/v1/payment_intents", self._payment_intent, methods=["POST"]),
        ]
        self._server = FakeServer(Starlette(routes=routes))

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

    def decline_next(self, times: int = 1) -> None:
        """The next `times` off-session charges are declined (`card_declined`)."""
        with self._lock:
            self._declines += times

    def lose_next_answers(self, times: int = 1) -> None:
        """The next `times` payment intent requests (0: none from now) do what they ask (a charge once
        per key) but answer a 500, as when Stripe charged and its answer never arrived."""
        with self._lock:
            self._lost_answers = times

    def forget_keys(self) -> None:
        """Forget every Idempotency-Key's answer, as Stripe does 24 hours after a key's first use."""
        with self._lock:
            self._answers.clear()

    def reset(self) -> None:
        with self._lock:
            self._failures = 0
            self._declines = 0
            self._lost_answers = 0
            self.made.clear()
            self.charges.clear()
            self._answers.clear()

    def _refusal(self, request: Request) -> JSONResponse | None:
        """The answer to a request with a wrong key, or during an incident; None for the rest."""
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(401, "invalid_request_error", "Invalid API Key provided")
        with self._lock:
            failing = self._failures > 0
            self._failures -= failing
        return self._error(500, "api_error", "An unknown error occurred") if failing else None

    async def _payment_methods(self, request: Request) -> JSONResponse:
        if refused := self._refusal(request):
            return refused
        customer = request.query_params.get("customer", "")
        if customer not in self.cards:
            return self._error(404, "invalid_request_error", f"No such customer: '{customer}'")
        methods = [
            {"id": pm, "object": "payment_method", "type": "card", "customer": customer} for pm in self.cards[customer]
        ]
        return JSONResponse({"object": "list", "data": methods, "has_more": False, "url": "/v1/payment_methods"})

    async def _payment_intent(self, request: Request) -> JSONResponse:
        if refused := self._refusal(request):
            return refused
        status, body = await self._charge(request)
        with self._lock:
            lost = self._lost_answers > 0
            self._lost_answers -= lost
        return self._error(500, "api_error", "An unknown error occurred") if lost else JSONResponse(body, status)

    async def _charge(self, request: Request) -> tuple[int, dict[str, Any]]:
        key = request.headers.get("idempotency-key")
        with self._lock:
            if key is not None and key in self._answers:
                return self._answers[key]
        params = {k: str(v) for k, v in (await request.form()).items()}
        customer, method = params.get("customer", ""), params.get("payment_method", "")
        if method not in self.cards.get(customer, []):
            return 400, self._body("invalid_request_error", "The payment method does not belong to the customer.")
        if params.get("off_session") != "true" or params.get("confirm") != "true":
            return 400, self._body("invalid_request_error", "This fake only charges off-session, confirmed.")
        metadata = {k[len("metadata[") : -1]: v for k, v in params.items() if k.startswith("metadata[")}
        with self._lock:
            declined = self._declines > 0
            self._declines -= declined
        intent = {
            "id": f"pi_{secrets.token_hex(12)}",
            "object": "payment_intent",
            "amount": int(params["amount"]),
            "currency": params["currency"],
            "customer": customer,
            "payment_method": method,
            "metadata": metadata,
            "status": "requires_payment_method" if declined else "succeeded",
        }
        status, body = 200, intent
        if declined:
            status = 402
            error = {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds"}
            body = {"error": {**error, "message": "Your card has insufficient funds.", "payment_intent": intent}}
        with self._lock:
            self.charges.append(Charge(params, intent))
            if key is not None:
                self._answers[key] = (status, body)
        return status, body

    @staticmethod
    def _body(kind: str, message: str) -> dict[str, Any]:
        return {"error": {"type": kind, "message": message}}

    @classmethod
    def _error(cls, status: int, kind: str, message: str) -> JSONResponse:
        return JSONResponse(cls._body(kind, message), status)

    async def _create(self, request: Request) -> JSONResponse:
        if refused := self._refusal(request):
            return refused
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
            "customer": None,
        }
        if params.get("payment_intent_data[setup_future_usage]") == "off_session":
            customer = f"cus_{secrets.token_hex(8)}"
            session["customer"] = customer
            with self._lock:
                self.cards[customer] = [f"pm_{secrets.token_hex(8)}"]  # as once the buyer has paid
        self.made.append(MadeSession(params, session))
        return JSONResponse(session)
