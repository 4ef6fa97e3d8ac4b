"""A socket's inbox: bounded, so a client that stops reading is cut off instead of growing memory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from serve_app.live import Listener
from storage.events import Event


def event(n: int) -> Event:
    return Event(n, uuid.uuid4(), uuid.uuid4(), "job.progress", {"progress": n}, datetime.now(UTC))


def test_a_listener_keeps_events_in_order_until_it_overflows_then_takes_nothing_more():
    listener = Listener(uuid.uuid4(), max_pending=3)
    listener.every_job = True
    for n in range(1, 6):
        listener.offer(event(n))
    taken = [listener.queue.get_nowait() for _ in range(listener.queue.qsize())]
    assert [e.id if e is not None else None for e in taken] == [1, 2, 3, None]
    assert listener.overflowed


def test_a_listener_takes_only_the_jobs_it_subscribed_to_unless_it_wants_every_job():
    listener = Listener(uuid.uuid4(), max_pending=10)
    mine, other = event(1), event(2)
    listener.offer(mine)
    assert listener.queue.empty(), "nothing before a subscription"
    listener.job_ids = {mine.job_id}
    listener.offer(other)
    listener.offer(mine)
    assert [listener.queue.get_nowait().id] == [1] and listener.queue.empty()
    listener.every_job = True
    listener.offer(other)
    assert listener.queue.get_nowait().id == 2
