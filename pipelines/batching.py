"""Group commit: calls that arrive while a flush is running go out together in the next one.

A lone call is flushed at once (no added latency); under load, one database transaction or
one Ray call carries everything that piled up meanwhile, so the cost per item falls as the
load rises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class Batcher(Generic[Item, Answer]):
    def __init__(self, flush: Callable[[list[Item]], Awaitable[Sequence[Answer]]], max_size: int = 200) -> None:
        """`flush` takes a list of items and answers each, in order; what it raises goes to every caller."""
        self.flush = flush
        self.max_size = max_size
        self.pending: list[tuple[Item, asyncio.Future[Answer]]] = []
        self.draining: asyncio.Task | None = None

    async def __call__(self, item: Item) -> Answer:
        [answer] = self._queue([item])
        return await answer

    async def many(self, items: Sequence[Item]) -> list[Answer]:
        """Each item's answer, in order: one caller's items queued at once, with no task per item
        (as gathering a call per item would make: ~25 µs of CPU each, 100 to a submitted batch)."""
        return list(await asyncio.gather(*self._queue(items)))

    def _queue(self, items: Sequence[Item]) -> list[asyncio.Future[Answer]]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Answer]] = [loop.create_future() for _ in items]
        self.pending.extend(zip(items, futures, strict=True))
        if self.draining is None and futures:
            self.draining = asyncio.create_task(self._drain())
        return futures

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[: self.max_size], self.pending[self.max_size :]
                try:
                    answers = await self.flush([item for item, _ in batch])
                except BaseException as exc:
                    failure = exc if isinstance(exc, Exception) else RuntimeError("the flush was interrupted")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(failure)
                    if failure is exc:
                        continue
                    raise
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self.draining = None
