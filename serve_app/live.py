"""Live job events for the WebSockets of one replica: one Redis reader fans out to every socket.

Each connected user's stream (`<ns>:user:<id>`) is read by a single blocking XREAD over all
of them, so a replica holds one Redis connection for its sockets, not one per socket. A
socket's queue is bounded: a client that does not keep up is told so and disconnected,
without slowing the reader or anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from storage.events import Event, JobEvents, parse_entry

log = logging.getLogger("daygen.live")

READ_BLOCK_MS = 5000
READ_BATCH = 500
RETRY_SECONDS = 1.0


class Listener:
    """One socket's inbox: events of its user, in order, until it overflows."""

    def __init__(self, owner_id: uuid.UUID, max_pending: int) -> None:
        self.owner_id = owner_id
        self.max_pending = max_pending
        # Events, and whatever else its socket orders with them (client messages); None: overflowed.
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.overflowed = False

    def offer(self, event: Event) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= self.max_pending:
            self.overflowed = True
            self.queue.put_nowait(None)  # wakes the socket so it can close
            return
        self.queue.put_nowait(event)


class EventHub:
    def __init__(self, redis: Redis, events: JobEvents) -> None:
        """`redis` is the hub's own client: its blocking read is cancelled whenever a user joins."""
        self.redis = redis
        self.events = events
        self.listeners: dict[uuid.UUID, set[Listener]] = {}
        self.cursors: dict[str, str] = {}
        self.owners: dict[str, uuid.UUID] = {}
        self.reader: asyncio.Task | None = None

    async def join(self, listener: Listener) -> None:
        """Start delivering the user's events to the listener, from now on."""
        owner = listener.owner_id
        if owner not in self.listeners:
            stream = self.events.user_stream(owner)
            latest = await self.redis.xrevrange(stream, count=1)
            self.cursors[stream] = latest[0][0].decode() if latest else "0-0"
            self.owners[stream] = owner
            self.listeners[owner] = set()
            self._restart()
        self.listeners[owner].add(listener)

    def leave(self, listener: Listener) -> None:
        owner = listener.owner_id
        group = self.listeners.get(owner)
        if group is None:
            return
        group.discard(listener)
        if not group:
            del self.listeners[owner]
            stream = self.events.user_stream(owner)
            self.cursors.pop(stream, None)
            self.owners.pop(stream, None)

    def _restart(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
        self.reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader

    async def _read(self) -> None:
        while self.cursors:
            try:
                reply = await self.redis.xread(dict(self.cursors), block=READ_BLOCK_MS, count=READ_BATCH)
            except RedisError:
                log.warning("live event reader lost Redis; retrying", exc_info=True)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            for raw_stream, entries in reply or []:
                stream = raw_stream.decode()
                owner = self.owners.get(stream)
                if owner is None:
                    continue
                for entry_id, fields in entries:
                    self.cursors[stream] = entry_id.decode()
                    event = parse_entry(fields, owner)
                    for listener in list(self.listeners.get(owner, ())):
                        listener.offer(event)
