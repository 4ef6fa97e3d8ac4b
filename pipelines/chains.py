"""Jobs as chains of steps: `{"steps": [{operation, params, input?}, ...]}`.

A step with `"input": "previous"` takes as its `image` the first image the step before it
produced. A job of one operation is a chain of one step, so the executor, the settlement
and the resume-after-a-crash logic have one shape to deal with.

A chain is stored as the job's params `{"steps": [{operation, params, input, cost}]}` with
the operation `pipeline`; its input assets as `{"<step index>": {name: ref}}`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from daygen.errors import DaygenError, InvalidInput
from pipelines.operations import OPERATIONS, Inputs, Operation, validate_request
from storage.models import PIPELINE

PREVIOUS = "previous"
MAX_STEPS = 10
# Stands in for the image a "previous" step will get, so its other params can be checked at submit.
_PLACEHOLDER = str(uuid.UUID(int=0))

Price = Callable[[Operation, dict[str, Any]], Decimal]  # what one request of an operation costs


@dataclass(frozen=True)
class Step:
    operation: str
    params: dict[str, Any]
    cost: Decimal
    input: str | None = None
    inputs: Inputs | None = None

    @property
    def refs(self) -> dict[str, str]:
        """The asset ids the step's own params name (a "previous" image is not one of them)."""
        return OPERATIONS[self.operation].asset_refs(self.params)

    @property
    def provider(self) -> str:
        return OPERATIONS[self.operation].provider

    def stored(self) -> dict[str, Any]:
        return {"operation": self.operation, "params": self.params, "input": self.input, "cost": str(self.cost)}


def _invalid(message: str, field: str, problem: str) -> InvalidInput:
    return InvalidInput(message, details=[{"field": field, "message": problem}])


def prefixed(exc: DaygenError, prefix: str) -> DaygenError:
    """The same error, about a field of one step: `params.image` becomes `steps.1.params.image`."""
    details = [{**d, "field": f"{prefix}.{d['field']}"} for d in (exc.details or [])]
    return type(exc)(f"{prefix}: {exc.message}", details=details)


def validate_steps(raw_steps: list[dict[str, Any]], price: Price) -> list[Step]:
    """Check every step as it would be checked alone, plus how the steps connect; each priced."""
    if not 1 <= len(raw_steps) <= MAX_STEPS:
        raise _invalid(f"a job has 1 to {MAX_STEPS} steps", "steps", f"give 1 to {MAX_STEPS} steps")
    steps: list[Step] = []
    for index, raw in enumerate(raw_steps):
        prefix = f"steps.{index}"
        params = dict(raw.get("params") or {})
        chained = raw.get("input") == PREVIOUS
        if chained:
            _check_link(steps, index, raw["operation"], params, prefix)
            params["image"] = _PLACEHOLDER
        try:
            operation, values = validate_request(raw["operation"], params)
        except InvalidInput as exc:
            raise prefixed(exc, prefix) from None
        if chained:
            del values["image"]
        steps.append(Step(operation.name, values, price(operation, values), PREVIOUS if chained else None))
    return steps


def _check_link(steps: list[Step], index: int, operation: str, params: dict[str, Any], prefix: str) -> None:
    if index == 0:
        raise _invalid(
            "the first step has no previous step", f"{prefix}.input", "only later steps take the previous output"
        )
    op = OPERATIONS.get(operation)
    if op is not None and "image" not in op.asset_params:
        raise _invalid(f"{operation} takes no input image", f"{prefix}.input", "this operation takes no image")
    if "image" in params:
        raise _invalid(
            "a step takes its image from params.image or from the previous step, not both",
            f"{prefix}.params.image",
            "remove it, or remove input",
        )
    previous = steps[-1].operation
    if previous.endswith(".describe"):
        raise _invalid(
            f"{previous} produces no image to pass on", f"{prefix}.input", "the previous step makes no image"
        )


def job_steps(operation: str, params: dict[str, Any], cost: Decimal, inputs: dict[str, Any] | None) -> list[Step]:
    """The steps of a stored job; a single-operation job is one step."""
    if operation != PIPELINE:
        return [Step(operation, params, cost, None, inputs or {})]
    inputs = inputs or {}
    return [
        Step(s["operation"], s["params"], Decimal(s["cost"]), s.get("input"), inputs.get(str(i), {}))
        for i, s in enumerate(params["steps"])
    ]


def providers_of(operation: str, params: dict[str, Any]) -> tuple[str, ...]:
    """The providers a stored job's steps call, each once, in the order they first do."""
    return tuple(dict.fromkeys(step.provider for step in job_steps(operation, params, Decimal(0), None)))


def first_prompt(operation: str, params: dict[str, Any]) -> str | None:
    """The prompt a job was asked for: its own, or a chain's first step that has one."""
    for step in job_steps(operation, params, Decimal(0), None):
        if isinstance(step.params.get("prompt"), str) and step.params["prompt"]:
            return step.params["prompt"]
    return None


def made_by(operation: str, result: dict[str, Any] | None, asset_id: str) -> str:
    """The operation of the step that produced the asset: a chain's step, never `pipeline` itself."""
    for step in (result or {}).get("steps", []):
        if asset_id in step.get("assetIds", []):
            return step["operation"]
    return operation


def final_image(result: dict[str, Any] | None) -> str | None:
    """The job's end product: the first image of the last step that made any (a closing describe makes none)."""
    for step in reversed((result or {}).get("steps", [])):
        if step.get("assetIds"):
            return step["assetIds"][0]
    return None


def charged_for(steps: list[Step], steps_done: int) -> Decimal:
    """What a job costs once `steps_done` of its steps have run: the rest is given back."""
    return sum((s.cost for s in steps[:steps_done]), Decimal(0))
