"""A pool actor's steps sent together: each answered as it ends, aborts, crashes."""

from __future__ import annotations

import asyncio

import pytest

from pipelines import steps
from pipelines.steps import RunningSteps, StepCall, StepContext, StepOutcome


class Gates:
    """Test steps (`test.step`) that each wait for their own gate, then answer their name."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []

    async def __call__(self, ctx, params, inputs) -> StepOutcome:
        name = params["name"]
        self.started.append(name)
        try:
            await self.gates.setdefault(name, asyncio.Event()).wait()
        except asyncio.CancelledError:
            self.stopped.append(name)
            raise
        if name == "crash":
            raise RuntimeError("a bug in a step")
        return StepOutcome(texts=[name])

    def open(self, *names: str) -> None:
        for name in names:
            self.gates.setdefault(name, asyncio.Event()).set()


@pytest.fixture
def gates(monkeypatch) -> Gates:
    made = Gates()
    monkeypatch.setitem(steps.STEPS, "test.step", made)
    return made


def call(name: str) -> StepCall:
    return StepCall(key=f"key-{name}", operation="test.step", params={"name": name}, inputs={})


async def settle() -> None:
    """Let every task that can run, run (the steps above wait only on their gates)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_steps_sent_together_are_answered_as_they_end_those_ending_together_in_one_message(gates):
    running = RunningSteps()
    stream = running.run_many(StepContext(store=None), [call("a"), call("b"), call("c")])
    first = asyncio.ensure_future(anext(stream))
    await settle()
    assert sorted(gates.started) == ["a", "b", "c"] and not first.done()

    gates.open("b")
    assert [(key, outcome.texts) for key, outcome in await first] == [("key-b", ["b"])]
    gates.open("a", "c")
    await settle()
    rest = await anext(stream)
    assert sorted(key for key, _ in rest) == ["key-a", "key-c"]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert running.tasks == {}


async def test_an_aborted_step_stops_and_is_not_answered_while_the_others_go_on(gates):
    running = RunningSteps()
    stream = running.run_many(StepContext(store=None), [call("a"), call("b")])
    first = asyncio.ensure_future(anext(stream))
    await settle()
    running.abort("key-a")
    gates.open("b")
    assert [key for key, _ in await first] == ["key-b"]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert gates.stopped == ["a"]


async def test_an_abort_that_arrives_before_its_step_keeps_it_from_starting(gates):
    running = RunningSteps()
    running.abort("key-late")
    running.abort("key-later")
    assert await running.run(StepContext(store=None), call("late")) is None
    stream = running.run_many(StepContext(store=None), [call("later"), call("b")])
    gates.open("b")
    assert [key for key, _ in await anext(stream)] == ["key-b"]
    assert gates.started == ["b"], "neither aborted step started"
    assert running.aborted == {}, "an early abort is kept only until its step arrives"


async def test_a_step_that_crashes_answers_an_internal_error_not_the_exception(gates):
    running = RunningSteps()
    gates.open("crash")
    outcome = await running.run(StepContext(store=None), call("crash"))
    assert (outcome.error_code, outcome.error_message) == ("internal_error", "the job failed unexpectedly")


async def test_an_aborted_lone_step_answers_none_and_a_canceled_call_stays_canceled(gates):
    running = RunningSteps()
    aborted = asyncio.ensure_future(running.run(StepContext(store=None), call("a")))
    canceled = asyncio.ensure_future(running.run(StepContext(store=None), call("b")))
    await settle()
    running.abort("key-a")
    canceled.cancel()
    assert await aborted is None
    with pytest.raises(asyncio.CancelledError):
        await canceled
    assert sorted(gates.stopped) == ["a", "b"]
