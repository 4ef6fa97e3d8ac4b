"""Live job events for the WebSockets of one replica: one Redis reader, events fanned out in log order.

Redis carries a user's new events to the replica as they commit. An announced event whose id
directly follows the last one handed out to its user is handed out from there: no event can lie
between. Any other announcement only rings a doorbell, and the events are read from the durable
log in Postgres, in id order, once per user for all of that user's sockets. An event is
announced only after its transaction commits, and one user's events commit in id order (the
per-owner lock of `storage.events.append_event`), so "the log after the last id handed out" is
complete whenever a doorbell rings: nothing is skipped even when two jobs announce their events
in the other order. All the replica's reads of the log (these, and its sockets' subscribes and
replays) go through one group commit: whatever is asked meanwhile is read in one transaction.
A socket's queue is bounded: a client that does not keep up is told so and disconnected,
without slowing the reader or anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pipelines.batching import Batcher
from storage.events import TERMINAL_EVENTS, Event, JobEvents, LogPage, LogRead, announced, read_logs

log = logging.getLogger("daygen.live")

READ_BLOCK_MS = 5000
READ_BATCH = 500
PAGE = 500  # events one read of the log answers at most
RETRY_SECONDS = 1.0
WATCH_MAX_PENDING = 1000  # events of one job a waiter may hold before it gives up


class Listener:
    """One socket's inbox: the events of its user it subscribed to, in order, until it overflows."""

    def __init__(
        self, owner_id: uuid.UUID, max_pending: int, *, every_job: bool = False, job_ids: Iterable[uuid.UUID] = ()
    ) -> None:
        self.owner_id = owner_id
        self.max_pending = max_pending
        # Events, and whatever else its socket orders with them (client messages); None: overflowed.
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.overflowed = False
        # What its socket subscribed to, so other jobs' events never wake it.
        self.every_job = every_job
        self.job_ids: frozenset[uuid.UUID] = frozenset(job_ids)
        self.group: ListenerGroup | None = None  # while it is joined to a hub

    def listen_to(self, *, every_job: bool, job_ids: Iterable[uuid.UUID]) -> None:
        """Change what it subscribed to; the hub's index of its user's listeners follows."""
        group = self.group
        if group is not None:
            group.unindex(self)
        self.every_job, self.job_ids = every_job, frozenset(job_ids)
        if group is not None:
            group.index(self)

    def wants(self, event: Event) -> bool:
        return self.every_job or event.job_id in self.job_ids

    async def wait_for_end(self, timeout_seconds: float) -> bool:
        """Until one of the jobs it listens to ends; False when the time is up (or it overflowed)."""
        try:
            async with asyncio.timeout(timeout_seconds):
                while (item := await self.queue.get()) is not None:
                    if isinstance(item, Event) and item.type in TERMINAL_EVENTS:
                        return True
        except TimeoutError:
            pass
        return False

    def offer(self, event: Event) -> None:
        if self.overflowed or not self.wants(event):
            return
        if self.queue.qsize() >= self.max_pending:
            self.overflowed = True
            self.queue.put_nowait(None)  # wakes the socket so it can close
            return
        self.queue.put_nowait(event)


class ListenerGroup:
    """One user's listeners on a hub, indexed by what they listen to: an event is offered to the
    listeners of its job and of every job, not to all the user's listeners (a user with 50 sockets
    open, each on its own jobs, made every event 50 offers)."""

    def __init__(self) -> None:
        self.members: set[Listener] = set()
        self.every_job: set[Listener] = set()
        self.by_job: dict[uuid.UUID, set[Listener]] = {}

    def add(self, listener: Listener) -> None:
        if listener not in self.members:
            self.members.add(listener)
            listener.group = self
            self.index(listener)

    def discard(self, listener: Listener) -> None:
        if listener in self.members:
            self.members.discard(listener)
            self.unindex(listener)
            listener.group = None

    def index(self, listener: Listener) -> None:
        if listener.every_job:
            self.every_job.add(listener)
            return
        for job_id in listener.job_ids:
            self.by_job.setdefault(job_id, set()).add(listener)

    def unindex(self, listener: Listener) -> None:
        self.every_job.discard(listener)
        for job_id in listener.job_ids:
            listening = self.by_job.get(job_id)
            if listening is not None:
                listening.discard(listener)
                if not listening:
                    del self.by_job[job_id]

    def wanting(self, event: Event) -> list[Listener]:
        return [*self.every_job, *self.by_job.get(event.job_id, ())]


class EventHub:
    def __init__(self, redis: Redis, events: JobEvents, sessions: async_sessionmaker[AsyncSession]) -> None:
        """`redis` is the hub's own client: its blocking read is cancelled whenever a user joins."""
        self.redis = redis
        self.events = events
        self.sessions = sessions
        self.listeners: dict[uuid.UUID, ListenerGroup] = {}
        self.cursors: dict[str, str] = {}  # Redis stream -> last entry read
        self.owners: dict[str, uuid.UUID] = {}
        self.handed_out: dict[uuid.UUID, int] = {}  # user -> last event id fanned out
        self.starting: dict[uuid.UUID, asyncio.Future[bool]] = {}  # user -> the read of their group's start
        self.rung: set[uuid.UUID] = set()
        self.puller: asyncio.Task | None = None
        self.reader: asyncio.Task | None = None
        self.reads = Batcher(self._read_logs, max_size=500)

    async def read(self, read: LogRead) -> LogPage | None:
        """A page of the log (None for a job that is not the owner's); the replica's concurrent reads
        share one transaction."""
        return await self.reads(read)

    async def _read_logs(self, reads: list[LogRead]) -> list[LogPage | None]:
        async with self.sessions() as session:
            return await read_logs(session, reads, PAGE)

    @contextlib.asynccontextmanager
    async def watching(self, owner_id: uuid.UUID, job_id: uuid.UUID) -> AsyncIterator[Listener]:
        """A listener to one job's events while the block runs: joined before the caller reads the
        job, so an end that commits after that read still reaches it."""
        listener = Listener(owner_id, max_pending=WATCH_MAX_PENDING, job_ids=[job_id])
        await self.join(listener)
        try:
            yield listener
        finally:
            self.leave(listener)

    async def join(self, listener: Listener) -> None:
        """Start delivering the user's events to the listener: once this returns, every event that
        commits afterwards reaches it.

        The user's first listener reads where the user's log stands; the group is made before that
        read, so the user's other listeners joining meanwhile join the same group, and they wait
        for the read too (an event that commits before it counts as handed out already)."""
        owner = listener.owner_id
        while (group := self.listeners.get(owner)) is not None:
            group.add(listener)
            starting = self.starting.get(owner)
            try:
                if starting is None or await asyncio.shield(starting):
                    return
            except BaseException:
                self.leave(listener)
                raise
            # The read failed (the request of the listener that made it went away): read again.
        group = self.listeners[owner] = ListenerGroup()
        group.add(listener)
        starting = self.starting[owner] = asyncio.get_running_loop().create_future()
        stream = self.events.user_stream(owner)
        try:
            latest = await self.redis.xrevrange(stream, count=1)
            newest = await self.read(LogRead(owner))
        except BaseException:
            if self.listeners.get(owner) is group:
                del self.listeners[owner]
            self._started(owner, starting, False)
            raise
        if self.listeners.get(owner) is group:  # else everyone left meanwhile
            self.handed_out[owner] = newest.after if newest is not None else 0
            self.cursors[stream] = latest[0][0].decode() if latest else "0-0"
            self.owners[stream] = owner
            self._restart()
        self._started(owner, starting, True)

    def _started(self, owner: uuid.UUID, starting: asyncio.Future[bool], read: bool) -> None:
        if self.starting.get(owner) is starting:
            del self.starting[owner]
        starting.set_result(read)

    def leave(self, listener: Listener) -> None:
        owner = listener.owner_id
        group = self.listeners.get(owner)
        if group is None:
            return
        group.discard(listener)
        if not group.members:
            del self.listeners[owner]
            stream = self.events.user_stream(owner)
            self.cursors.pop(stream, None)
            self.owners.pop(stream, None)
            self.handed_out.pop(owner, None)

    def _restart(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
        self.reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        for task in [self.reader, self.puller]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

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
                if owner is None or not entries:
                    continue
                self.cursors[stream] = entries[-1][0].decode()
                if not all(self._hand_out_announced(owner, fields) for _, fields in entries):
                    self._ring(owner)

    def _hand_out_announced(self, owner: uuid.UUID, fields: dict[bytes, bytes]) -> bool:
        """Hand out an entry's events while each id is the next after the last one handed out, which
        saves a read of the log; False at the first that is not (the log then decides: another
        user's event may have drawn the id between, or one of this user's may not be announced yet),
        or when the entry cannot be read.

        (The id of the user's previous event, written beside each, would let every announcement in
        order through, but a statement's snapshot is taken before it waits for the user's lock, so
        it can miss the event committed just before.)"""
        try:
            events = announced(owner, fields)
        except (KeyError, TypeError, ValueError):
            log.warning("unreadable job event announcement; reading the log instead", exc_info=True)
            return False
        if owner not in self.handed_out:
            return True  # everyone left meanwhile
        for event in events:
            if event.id <= self.handed_out[owner]:
                continue  # handed out already
            if event.id != self.handed_out[owner] + 1:
                return False
            self._hand_out(owner, event)
        return True

    def _hand_out(self, owner: uuid.UUID, event: Event) -> None:
        self.handed_out[owner] = event.id
        group = self.listeners.get(owner)
        if group is not None:
            for listener in group.wanting(event):
                listener.offer(event)

    def _ring(self, owner: uuid.UUID) -> None:
        """Pull the user's new events; a ring during a pull makes it look once more afterwards."""
        self.rung.add(owner)
        if self.puller is None:
            self.puller = asyncio.create_task(self._pull())

    async def _pull(self) -> None:
        """Read the new events of every user rung meanwhile, in one read of the log, until no one rings."""
        try:
            while self.rung:
                owners = [owner for owner in self.rung if owner in self.handed_out]  # joined, not left
                self.rung.clear()
                try:
                    pages = await asyncio.gather(
                        *(self.read(LogRead(owner, after=self.handed_out[owner])) for owner in owners)
                    )
                except Exception:
                    # The sockets' periodic catch-up reads the log too; the next ring tries again.
                    log.warning("could not read new job events", exc_info=True)
                    continue
                for owner, page in zip(owners, pages, strict=True):
                    if page is None or owner not in self.handed_out:
                        continue  # everyone left meanwhile
                    for event in page.events:
                        if event.id <= self.handed_out[owner]:
                            continue  # they left and came back during the read: from their newest on
                        self._hand_out(owner, event)
                    if len(page.events) == PAGE:
                        self.rung.add(owner)
        finally:
            self.puller = None
