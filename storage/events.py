"""Job events on Redis Streams: live delivery, and a way to await a job's end without polling."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("daygen.events")

TERMINAL_EVENTS = {"job.succeeded", "job.failed", "job.canceled"}


class JobEvents:
    def __init__(self, redis: Redis, namespace: str, maxlen: int = 1000) -> None:
        self.redis = redis
        self.namespace = namespace
        self.maxlen = maxlen

    def stream(self, job_id: uuid.UUID | str) -> str:
        return f"{self.namespace}:job:{job_id}"

    async def publish(self, job_id: uuid.UUID, event_type: str, data: dict[str, Any]) -> str:
        fields = {"type": event_type, "data": json.dumps(data, default=str)}
        return _text(await self.redis.xadd(self.stream(job_id), fields, maxlen=self.maxlen, approximate=True))

    async def last_id(self, job_id: uuid.UUID) -> str:
        entries = await self.redis.xrevrange(self.stream(job_id), count=1)
        if not entries:
            return "0-0"
        return _text(entries[0][0])

    async def wait_for_end(self, job_id: uuid.UUID, after: str, timeout_s: float) -> bool:
        """Block until a terminal event newer than `after` arrives; False on timeout."""
        stream = self.stream(job_id)
        deadline = time.monotonic() + timeout_s
        last = after
        while (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            try:
                reply = await self.redis.xread({stream: last}, block=left_ms, count=100)
            except RedisError:
                log.warning("could not wait on job events", extra={"job_id": str(job_id)}, exc_info=True)
                return False
            if not reply:
                return False
            for event_id, fields in reply[0][1]:
                last = event_id
                if _text(fields.get(b"type", fields.get("type"))) in TERMINAL_EVENTS:
                    return True
        return False


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
