"""The operations a job can run: which provider does it, what it costs, which params it takes."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daygen.errors import InvalidInput

MAX_SEED = 2**31 - 1


class OfflineGenerateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    width: int = Field(1024, ge=64, le=2048)
    height: int = Field(1024, ge=64, le=2048)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


@dataclass(frozen=True)
class Operation:
    name: str
    provider: str
    params_model: type[BaseModel]
    cost: Decimal


OPERATIONS: dict[str, Operation] = {
    op.name: op for op in (Operation("offline.generate", "offline", OfflineGenerateParams, Decimal(1)),)
}


def validate_request(operation: str, params: dict[str, Any]) -> tuple[Operation, dict[str, Any]]:
    """Check the params against the operation's model; a missing seed is drawn now so a job can be re-run."""
    op = OPERATIONS.get(operation)
    if op is None:
        raise InvalidInput(
            f"unknown operation {operation!r}",
            details=[{"field": "operation", "message": "must be one of: " + ", ".join(sorted(OPERATIONS))}],
        )
    try:
        model = op.params_model.model_validate(params)
    except ValidationError as exc:
        raise InvalidInput(
            "invalid params",
            details=[{"field": ".".join(["params", *map(str, e["loc"])]), "message": e["msg"]} for e in exc.errors()],
        ) from None
    values = model.model_dump()
    if "seed" in values and values["seed"] is None:
        values["seed"] = secrets.randbelow(MAX_SEED + 1)
    return op, values
