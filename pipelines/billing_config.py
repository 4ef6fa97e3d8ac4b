"""What jobs cost, from configs/billing.yaml: the one price list every submit and quote uses."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daygen.config_files import read_yaml
from pipelines.operations import OPERATIONS, Operation

# A ledger amount has three decimals (storage.models.Credits).
Credits = Annotated[Decimal, Field(ge=0, max_digits=11, decimal_places=3)]


class Pack(BaseModel):
    """A credit pack sold through Stripe Checkout: the credits it adds, and its price in the currency's
    smallest unit (cents)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    credits: Annotated[Decimal, Field(gt=0, max_digits=11, decimal_places=3)]
    price: int = Field(gt=0)
    currency: str = Field("usd", pattern="^[a-z]{3}$")


class BillingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prices: dict[str, Credits]  # credits for one unit (an image) of each operation
    # What the provider charges us for one image of an operation, in USD (usage records); 0 if not given.
    provider_costs: dict[str, Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=6)]] = {}
    packs: dict[Annotated[str, Field(pattern="^[a-z][a-z0-9_-]{0,39}$")], Pack] = {}

    def price(self, operation: Operation, params: dict[str, Any]) -> Decimal:
        """Credits for one request of the operation: its unit price times the units the params ask for."""
        return self.prices[operation.name] * operation.units(params)

    @classmethod
    def load(cls, path: Path) -> BillingConfig:
        raw = read_yaml(path, "billing config")
        try:
            config = cls.model_validate(raw or {})
        except ValidationError as exc:
            raise ValueError(f"invalid billing config {path}: {exc}") from None
        missing = sorted(set(OPERATIONS) - set(config.prices))
        unknown = sorted((set(config.prices) | set(config.provider_costs)) - set(OPERATIONS))
        if missing:
            raise ValueError(f"{path} has no price for {', '.join(missing)}")
        if unknown:
            raise ValueError(f"{path} prices operations that do not exist: {', '.join(unknown)}")
        return config
