"""A socket's inbox: bounded, so a client that stops reading is cut off instead of growing memory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from serve_app.live import Listener, ListenerGroup
from storage.events import Event


def event(n: int) -> Event:
    return Event(n, uuid.uuid4(), uuid.uuid4(), "job.progress", {"progress": n}, datetime.now(UTC))


def test_a_listener_keeps_events_in_order_until_it_overflows_then_takes_nothing_more():
    listener = Listener(uuid.uuid4(), max_pending=3, every_job=True)
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
    listener.listen_to(every_job=False, job_ids=[mine.job_id])
    listener.offer(other)
    listener.offer(mine)
    assert [listener.queue.get_nowait().id] == [1] and listener.queue.empty()
    listener.listen_to(every_job=True, job_ids=[mine.job_id])
    listener.offer(other)
    assert listener.queue.get_nowait().id == 2


def test_a_group_offers_an_event_to_the_listeners_of_its_job_and_of_every_job_only():
    group = ListenerGroup()
    first, second = event(1), event(2)
    on_first = Listener(uuid.uuid4(), max_pending=10, job_ids=[first.job_id])
    on_both = Listener(uuid.uuid4(), max_pending=10, job_ids=[first.job_id, second.job_id])
    on_every = Listener(uuid.uuid4(), max_pending=10, every_job=True)
    on_nothing = Listener(uuid.uuid4(), max_pending=10)
    for listener in (on_first, on_both, on_every, on_nothing):
        group.add(listener)
    assert set(group.wanting(first)) == {on_first, on_both, on_every}
    assert set(group.wanting(second)) == {on_both, on_every}
    assert group.wanting(event(3)) == [on_every]


def test_a_group_follows_what_its_listeners_listen_to_and_forgets_those_that_leave():
    group = ListenerGroup()
    first, second = event(1), event(2)
    listener = Listener(uuid.uuid4(), max_pending=10, job_ids=[first.job_id])
    group.add(listener)
    listener.listen_to(every_job=False, job_ids=[second.job_id])
    assert (group.wanting(first), group.wanting(second)) == ([], [listener])
    listener.listen_to(every_job=True, job_ids=[second.job_id])
    assert group.wanting(first) == [listener] and group.wanting(second) == [listener], "once, not twice"
    listener.listen_to(every_job=False, job_ids=[])
    assert group.wanting(first) == group.wanting(second) == []
    listener.listen_to(every_job=True, job_ids=[first.job_id])
    group.discard(listener)
    assert group.wanting(first) == [] and group.by_job == {} and not group.members
    listener.listen_to(every_job=False, job_ids=[second.job_id])  # after it left: no trace in the group
    assert group.wanting(second) == []
