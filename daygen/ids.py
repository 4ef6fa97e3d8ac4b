"""Time-ordered UUIDs (version 7), so newest-first lists and cursors are an index scan on the id."""

from __future__ import annotations

import os
import threading
import time
import uuid

_RANDOM_BITS = 74  # rand_a (12) and rand_b (62), read as one counter
_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, counter) of the latest id this process made


def uuid7() -> uuid.UUID:
    """A new id; within one process, ids made in the same millisecond still sort in the order they were
    made (RFC 9562, 6.2 method 2: the random part grows by a random step), so a job's images keep theirs."""
    global _last
    ms = time.time_ns() // 1_000_000
    with _lock:
        last_ms, last_counter = _last
        if ms > last_ms:
            counter = _fresh_counter()
        else:
            ms = last_ms
            counter = last_counter + 1 + (int.from_bytes(os.urandom(4), "big") >> 1)
            if counter >> _RANDOM_BITS:
                ms, counter = ms + 1, _fresh_counter()
        _last = (ms, counter)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (counter >> 62) << 64
    value |= 0b10 << 62
    value |= counter & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def _fresh_counter() -> int:
    # The top bit starts clear, leaving room for the steps of the same millisecond.
    return int.from_bytes(os.urandom(10), "big") >> (80 - _RANDOM_BITS + 1)
