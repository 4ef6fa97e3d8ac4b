"""`/v1/ws`: job events live, with replay from the durable log (protocol: docs/websocket.md).

One task per socket does everything in order — subscribe (replay, then live), events,
heartbeats — so a replay can never be overtaken by a live event of the same channel. Each
channel remembers the last event id it sent, which makes delivery exactly once per channel
however an event arrives (replay, live, or the catch-up on each heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from daygen.errors import NotAuthenticated
from serve_app.live import PAGE, EventHub, Listener
from serve_app.security import read_token
from serve_app.services import Services
from storage.events import Event, LogRead
from storage.users import get_user

log = logging.getLogger("daygen.ws")

router = APIRouter()

PROTOCOL = "daygen.v1"
BEARER_PREFIX = "bearer."
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
MAX_MESSAGE_CHARS = 4096
SEND_TIMEOUT_SECONDS = 10.0


@dataclass
class Subscription:
    channel: str
    job_id: uuid.UUID | None  # None: every job of the user
    last_id: int

    def wants(self, event: Event) -> bool:
        return event.id > self.last_id and (self.job_id is None or event.job_id == self.job_id)


@dataclass
class Connection:
    socket: WebSocket
    services: Services
    hub: EventHub
    owner_id: uuid.UUID
    listener: Listener
    subscriptions: dict[str, Subscription] = field(default_factory=dict)

    async def send(self, frame: dict[str, Any]) -> None:
        async with asyncio.timeout(SEND_TIMEOUT_SECONDS):  # no task per frame, as wait_for would make
            await self.socket.send_text(json.dumps(frame, default=str))

    async def error(self, code: str, message: str, channel: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if channel is not None:
            frame["channel"] = channel
        await self.send(frame)

    async def deliver(self, event: Event) -> None:
        for subscription in self.subscriptions.values():
            if subscription.wants(event):
                subscription.last_id = event.id
                await self.send(event.frame(subscription.channel))

    async def _next_page(self, subscription: Subscription) -> list[Event]:
        page = await self.hub.read(LogRead(self.owner_id, subscription.job_id, subscription.last_id))
        return page.events if page is not None else []

    async def _send_page(self, subscription: Subscription, page: list[Event]) -> bool:
        """Send a page of the log; True when there may be more."""
        for event in page:
            subscription.last_id = event.id
            await self.send(event.frame(subscription.channel))
        return len(page) == PAGE

    async def replay(self, subscription: Subscription) -> None:
        """Everything in the log after the subscription's last id, page by page."""
        while await self._send_page(subscription, await self._next_page(subscription)):
            pass

    async def catch_up(self) -> None:
        """Read the log for anything live delivery missed (Redis down, an announcement lost): every
        channel's first page in one read."""
        subscriptions = list(self.subscriptions.values())
        pages = await asyncio.gather(*map(self._next_page, subscriptions))
        for subscription, page in zip(subscriptions, pages, strict=True):
            if await self._send_page(subscription, page):
                await self.replay(subscription)

    def _listen_to_subscriptions(self) -> None:
        self.listener.listen_to(
            every_job=any(s.job_id is None for s in self.subscriptions.values()),
            job_ids=[s.job_id for s in self.subscriptions.values() if s.job_id is not None],
        )

    async def handle(self, raw: str) -> None:
        if len(raw) > MAX_MESSAGE_CHARS:
            await self.error("bad_request", f"messages are limited to {MAX_MESSAGE_CHARS} characters")
            return
        try:
            message = json.loads(raw)
        except ValueError:
            await self.error("bad_request", "messages are JSON objects")
            return
        if not isinstance(message, dict):
            await self.error("bad_request", "messages are JSON objects")
            return
        action, channel, last = message.get("action"), message.get("channel"), message.get("lastEventId")
        if action not in ("subscribe", "unsubscribe"):
            await self.error("bad_request", "action must be subscribe or unsubscribe")
            return
        if not isinstance(channel, str):
            await self.error("bad_request", "channel must be job:<id> or user:me")
            return
        if action == "unsubscribe":
            self.subscriptions.pop(channel, None)
            self._listen_to_subscriptions()
            await self.send({"type": "unsubscribed", "channel": channel})
            return
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
            await self.error("bad_request", "lastEventId must be a non-negative integer", channel)
            return
        await self.subscribe(channel, last)

    async def subscribe(self, channel: str, last: int | None) -> None:
        if channel not in self.subscriptions and len(self.subscriptions) >= self.services.settings.ws_max_subscriptions:
            await self.error("too_many_subscriptions", "unsubscribe from a channel first", channel)
            return
        job_id = None
        if channel.startswith("job:"):
            try:
                job_id = uuid.UUID(channel[4:])
            except ValueError:
                await self.error("bad_request", "channel must be job:<id> or user:me", channel)
                return
        elif channel != "user:me":
            await self.error("bad_request", "channel must be job:<id> or user:me", channel)
            return
        # Listening starts before the log is read, so nothing falls between the two; the read checks
        # the job is the user's (another user's job's events never reach this user's listener).
        previous = self.subscriptions.get(channel)
        subscription = self.subscriptions[channel] = Subscription(channel, job_id, last or 0)
        self._listen_to_subscriptions()
        # A job's channel replays its whole (short) history unless told otherwise; user:me starts now.
        after = last if last is not None or job_id is None else 0
        page = await self.hub.read(LogRead(self.owner_id, job_id, after))
        if page is None:
            if previous is None:
                del self.subscriptions[channel]
            else:
                self.subscriptions[channel] = previous
            self._listen_to_subscriptions()
            await self.error("not_found", "job not found", channel)
            return
        subscription.last_id = page.after
        if await self._send_page(subscription, page.events):
            await self.replay(subscription)
        await self.send({"type": "subscribed", "channel": channel, "lastEventId": subscription.last_id})


def _token(socket: WebSocket) -> tuple[str | None, str | None]:
    """The JWT from `?token=` or a `bearer.<jwt>` subprotocol, and the subprotocol to answer with."""
    offered = [p.strip() for p in socket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    token = next((p[len(BEARER_PREFIX) :] for p in offered if p.startswith(BEARER_PREFIX)), None)
    if token is None:
        token = socket.query_params.get("token")
    chosen = PROTOCOL if PROTOCOL in offered else (offered[0] if offered else None)
    return token, chosen


async def _authenticate(socket: WebSocket, services: Services) -> uuid.UUID | None:
    token, _ = _token(socket)
    if not token:
        return None
    try:
        user_id = read_token(token, services.jwt_secret)
    except NotAuthenticated:
        return None
    async with services.reads() as session:
        user = await get_user(session, user_id)
    return user.id if user is not None and not user.banned else None


async def _receive(socket: WebSocket, inbox: asyncio.Queue) -> None:
    """Client messages into the connection's one queue, in arrival order with its events."""
    try:
        while True:
            inbox.put_nowait(("message", await socket.receive_text()))
    except Exception:  # a disconnect, a binary frame, a broken socket: the connection ends
        inbox.put_nowait(("closed", None))


@router.websocket("/v1/ws")
async def events_socket(socket: WebSocket) -> None:
    services: Services = socket.app.state.services
    _, protocol = _token(socket)
    owner_id = await _authenticate(socket, services)
    await socket.accept(subprotocol=protocol)
    if owner_id is None:
        await socket.close(code=POLICY_VIOLATION, reason="invalid or missing access token")
        return
    settings = services.settings
    listener = Listener(owner_id, settings.ws_max_pending_events)
    hub = await services.event_hub()
    connection = Connection(socket, services, hub, owner_id, listener)
    await hub.join(listener)
    receiver = asyncio.create_task(_receive(socket, listener.queue))
    try:
        await _serve(connection, settings.ws_heartbeat_seconds)
    except (TimeoutError, WebSocketDisconnect, RuntimeError):
        pass  # the client stopped reading or went away
    finally:
        hub.leave(listener)
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        if socket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await socket.close()


async def _serve(connection: Connection, heartbeat: float) -> None:
    inbox = connection.listener.queue
    while True:
        try:
            async with asyncio.timeout(heartbeat):
                item = await inbox.get()
        except TimeoutError:
            await connection.send({"type": "heartbeat"})
            await connection.catch_up()
            continue
        if item is None:
            await connection.socket.close(code=TRY_AGAIN_LATER, reason="too far behind: reconnect with lastEventId")
            return
        if isinstance(item, Event):
            await connection.deliver(item)
        elif item[0] == "closed":
            return
        else:
            await connection.handle(item[1])
