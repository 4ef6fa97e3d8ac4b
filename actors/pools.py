"""Provider pools: N actors per provider run job steps and write outputs to the store.

The actors of one pool share its upstream limits through Redis (`pipelines.shared_limits`), so
adding actors adds concurrency without ever adding to what the provider sees. The dispatcher's
side of a pool (`PoolSteps`) sends the steps asked for in the same moment to one actor in one
call: a Ray call costs far more than a step's share of a streamed one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from daygen.logs import configure_logging
from daygen.runtime import tune_garbage_collector
from daygen.settings import Settings
from pipelines.pool_config import ProviderPools
from pipelines.steps import RunningSteps, StepCall, StepContext, StepOutcome

log = logging.getLogger("daygen.pools")

CALL_ATTEMPTS = 5
RETRY_SECONDS = 0.5


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)
class ProviderWorker:
    async def __init__(self, settings: Settings, pools: ProviderPools, provider: str) -> None:
        # Async, so the step context (its HTTP session belongs to the event loop) is made on the actor's loop.
        configure_logging(settings.log_level)
        self.provider = provider
        self.context = StepContext.from_settings(settings, pools, provider)
        self.steps = RunningSteps()
        tune_garbage_collector()

    async def run(self, call: StepCall) -> StepOutcome | None:
        """One step; None if it was aborted."""
        return await self.steps.run(self.context, call)

    async def run_many(self, calls: list[StepCall]) -> AsyncIterator[list[tuple[str, StepOutcome]]]:
        """Steps sent together (a Ray streaming call), each answered as it ends."""
        async for answers in self.steps.run_many(self.context, calls):
            yield answers

    def abort(self, key: str) -> None:
        self.steps.abort(key)


def pool_name(provider: str, index: int) -> str:
    return f"daygen-pool-{provider}-{index}"


@dataclass
class _Asked:
    call: StepCall
    answer: asyncio.Future[StepOutcome]
    actor: ActorHandle | None = None
    tries: int = 0


class PoolSteps:
    """The dispatcher's side of one provider's pool.

    Steps asked for in the same turn of the event loop (a claim starts many jobs at once) are dealt
    out to the actors in turn, and each actor gets its share in one call: a lone step in a plain
    call, several in a streamed one that answers each as it ends, many per message under load.
    An actor that dies mid-call costs its steps a try on the next actor, not their jobs; a step
    whose caller is canceled is aborted.
    """

    def __init__(self, provider: str, actors: int, find: Callable[[str], ActorHandle]) -> None:
        self.provider = provider
        self.find = find  # an actor handle by name
        self.turns = itertools.cycle(range(actors))
        self.asked: list[_Asked] = []
        self.sending: set[asyncio.Task] = set()

    async def run(self, operation: str, params: dict[str, Any], inputs: dict[str, Any]) -> StepOutcome:
        asked = _Asked(
            StepCall(uuid.uuid4().hex, operation, params, inputs), asyncio.get_running_loop().create_future()
        )
        self._ask(asked)
        try:
            return await asked.answer
        except asyncio.CancelledError:
            if asked.actor is not None:  # the job was canceled: stop the upstream call too
                self._send_later(self._abort(asked.actor, asked.call.key))
            raise

    def _ask(self, asked: _Asked) -> None:
        self.asked.append(asked)
        if len(self.asked) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Deal what was asked this turn out to the actors in turn, as evenly as one step at a time
        (an actor's connections are sized for its share), then send each actor its share at once."""
        shares: dict[int, list[_Asked]] = {}
        for asked in self.asked:
            if not asked.answer.done():
                shares.setdefault(next(self.turns), []).append(asked)
        self.asked = []
        for index, share in shares.items():
            self._send_later(self._send(index, share))

    def _send_later(self, work) -> None:
        task = asyncio.create_task(work)
        self.sending.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self.sending.discard)

    async def _send(self, index: int, batch: list[_Asked]) -> None:
        try:
            actor = self.find(pool_name(self.provider, index))
        except ValueError:  # no such actor (yet): the pool is being restarted
            await self._retry(batch)
            return
        for asked in batch:
            asked.actor = actor
        try:
            if len(batch) == 1:
                [asked] = batch
                outcome = await actor.run.remote(asked.call)
                if outcome is not None and not asked.answer.done():
                    asked.answer.set_result(outcome)
            else:
                by_key = {asked.call.key: asked for asked in batch}
                async for answers in actor.run_many.remote([asked.call for asked in batch]):
                    for key, outcome in await answers:
                        if not by_key[key].answer.done():
                            by_key[key].answer.set_result(outcome)
            dropped = StepOutcome(error_code="internal_error", error_message="the step was dropped")
            for asked in batch:  # aborted by someone else: never left waiting
                if not asked.answer.done():
                    asked.answer.set_result(dropped)
        except RayActorError:
            log.warning("a pool actor died mid-step; trying again", extra={"provider": self.provider})
            await self._retry([asked for asked in batch if not asked.answer.done()])
        except Exception as exc:
            for asked in batch:
                if not asked.answer.done():
                    asked.answer.set_exception(exc)

    async def _retry(self, batch: list[_Asked]) -> None:
        await asyncio.sleep(RETRY_SECONDS)
        for asked in batch:
            asked.tries += 1
            asked.actor = None
            if asked.answer.done():
                continue
            if asked.tries >= CALL_ATTEMPTS:
                message = "the provider's workers kept stopping"
                asked.answer.set_result(StepOutcome(error_code="provider_unavailable", error_message=message))
            else:
                self._ask(asked)

    async def _abort(self, actor: ActorHandle, key: str) -> None:
        try:
            await actor.abort.remote(key)
        except RayActorError:
            pass  # it died, and its steps with it
