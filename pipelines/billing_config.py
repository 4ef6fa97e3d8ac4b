"""What jobs cost, from configs/billing.yaml: the one price list every submit and quote uses."""

from __future__ import annotations

import functools
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daygen.config_files import read_yaml
from pipelines.chains import job_steps
from pipelines.operations import OPERATIONS, Operation
from storage.ledger import ProviderCaps, ProviderShare

# A ledger amount has three decimals (storage.models.Credits).
Credits = Annotated[Decimal, Field(ge=0, max_digits=11, decimal_places=3)]


class Pack(BaseModel):
    """A credit pack sold through Stripe Checkout: the credits it adds, and its price in the currency's
    smallest unit (cents)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    credits: Annotated[Decimal, Field(gt=0, max_digits=11, decimal_places=3)]
    price: int = Field(gt=0)
    currency: str = Field("usd", pattern="^[a-z]{3}$")


Name = Annotated[str, Field(pattern="^[a-z][a-z0-9_-]{0,39}$")]
LIMIT_NAMES = ("requests_per_minute", "concurrent_jobs", "credits_per_day", "credits_per_month")


class Limits(BaseModel):
    """What an account may do, checked before a job starts; None is no limit.

    `requests_per_minute` counts jobs submitted (a batch of 20 is 20), `concurrent_jobs` the account's
    queued and running jobs, the credit limits what its jobs held on the UTC day and month (less what
    was given back)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    concurrent_jobs: int | None = Field(None, ge=1, le=1_000_000)
    credits_per_day: Annotated[Decimal, Field(ge=0, max_digits=11, decimal_places=3)] | None = None
    credits_per_month: Annotated[Decimal, Field(ge=0, max_digits=11, decimal_places=3)] | None = None

    def overridden(self, overrides: dict[str, Any] | None) -> Limits:
        """These limits with an admin's overrides (each given one replaces the plan's, None lifts it)."""
        return self.model_validate(self.model_dump() | (overrides or {})) if overrides else self

    def capped(self, caps: Limits) -> Limits:
        """The lower of each limit and the cap's (a throttled account's)."""
        lowered = {}
        for name in LIMIT_NAMES:
            mine, cap = getattr(self, name), getattr(caps, name)
            lowered[name] = cap if mine is None else mine if cap is None else min(mine, cap)
        return Limits(**lowered)


class Plan(BaseModel):
    """A plan: credits granted each calendar month (UTC) that do not carry over, and its default limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowance: Credits = Decimal(0)
    price: int | None = Field(None, ge=0)  # a month, in the currency's smallest unit (shown, not charged here)
    currency: str = Field("usd", pattern="^[a-z]{3}$")
    limits: Limits = Limits()


class ProviderLimits(BaseModel):
    """Limits on one provider's work across every account: its jobs a minute, its queued and running
    jobs, and the credits its jobs may take a UTC day and month (charged, and held by its open jobs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    concurrent_jobs: int | None = Field(None, ge=1, le=10_000_000)
    credits_per_day: Annotated[Decimal, Field(ge=0, max_digits=13, decimal_places=3)] | None = None
    credits_per_month: Annotated[Decimal, Field(ge=0, max_digits=13, decimal_places=3)] | None = None

    def caps(self, provider: str) -> ProviderCaps | None:
        """What the ledger judges a job of the provider by; None when there is nothing to judge."""
        caps = ProviderCaps(provider, self.concurrent_jobs, self.credits_per_day, self.credits_per_month)
        return caps if caps.any else None


class BillingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prices: dict[str, Credits]  # credits for one unit (an image) of each operation
    # What the provider charges us for one image of an operation, in USD (usage records); 0 if not given.
    provider_costs: dict[str, Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=6)]] = {}
    packs: dict[Name, Pack] = {}
    plans: dict[Name, Plan] = {"free": Plan()}
    default_plan: Name = "free"  # a new account's
    throttled: Limits = Limits(requests_per_minute=6, concurrent_jobs=1)  # caps on a throttled account
    provider_limits: dict[str, ProviderLimits] = {}

    @functools.cached_property
    def provider_rates(self) -> dict[str, int]:
        """Each provider's limit of jobs a minute across every account, for those that have one."""
        return {
            provider: limits.requests_per_minute
            for provider, limits in self.provider_limits.items()
            if limits.requests_per_minute is not None
        }

    def provider_caps(self, provider: str) -> ProviderCaps | None:
        limits = self.provider_limits.get(provider)
        return limits.caps(provider) if limits is not None else None

    def provider_shares(self, operation: str, params: dict[str, Any], cost: Decimal) -> tuple[ProviderShare, ...]:
        """A job's part for each of its providers with limits: what its steps there cost. A chain's
        steps may reach several providers; each judges its own part, and counts the chain among its
        open jobs, at the submit."""
        if not self.provider_limits:
            return ()
        steps = job_steps(operation, params, cost, None)
        parts: dict[str, Decimal] = {}
        for step in steps:
            parts[step.provider] = parts.get(step.provider, Decimal(0)) + step.cost
        return tuple(
            ProviderShare(caps, credits)
            for provider, credits in parts.items()
            if (caps := self.provider_caps(provider)) is not None
        )

    def plan_of(self, name: str) -> Plan:
        """An account's plan: the default one for a plan no longer in configs."""
        return self.plans.get(name, self.plans[self.default_plan])

    def limits(self, plan: str, overrides: dict[str, Any] | None, *, throttled: bool) -> Limits:
        """An account's limits: its plan's (`plan_of`), an admin's overrides, and a throttled account's caps."""
        limits = self.plan_of(plan).limits.overridden(overrides)
        return limits.capped(self.throttled) if throttled else limits

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
        if config.default_plan not in config.plans:
            raise ValueError(f"{path}: default_plan {config.default_plan!r} is not one of its plans")
        providers = {operation.provider for operation in OPERATIONS.values()}
        if unknown_providers := sorted(set(config.provider_limits) - providers):
            raise ValueError(f"{path} limits providers that do not exist: {', '.join(unknown_providers)}")
        if unknown:
            raise ValueError(f"{path} prices operations that do not exist: {', '.join(unknown)}")
        return config
