"""In-flight limits for a pool: a request for k images holds k places until it ends.

This is Ideogram's rule (images in flight per organisation). One limiter serves every call of
one pool process; sharing it across processes and Serve replicas is a later step (Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class InFlightLimiter:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.in_flight = 0
        self.peak = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, places: int) -> AsyncIterator[None]:
        """Wait until `places` fit (first come, first served), hold them for the block."""
        places = min(places, self.capacity)
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight + places <= self.capacity)
            self.in_flight += places
            self.peak = max(self.peak, self.in_flight)
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= places
                self._changed.notify_all()
