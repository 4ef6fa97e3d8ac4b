"""configs/billing.yaml: the shipped prices, what a request costs, and what a broken file says."""

from __future__ import annotations

from decimal import Decimal

import pytest
import yaml

from daygen.settings import Settings
from pipelines.billing_config import BillingConfig
from pipelines.operations import OPERATIONS

SHIPPED = Settings(_env_file=None).billing_config


def test_the_shipped_prices_are_the_originals_for_every_operation():
    """daygen's own prices: an image 1 credit, an upscale 2, a description 0.5, on every engine."""
    prices = BillingConfig.load(SHIPPED).prices
    assert set(prices) == set(OPERATIONS)
    for name, price in prices.items():
        expected = {"upscale": Decimal(2), "describe": Decimal("0.5")}.get(name.split(".")[1], Decimal(1))
        assert price == expected, name


def test_the_shipped_packs_are_the_originals():
    packs = BillingConfig.load(SHIPPED).packs
    assert {name: (p.credits, p.price, p.currency) for name, p in packs.items()} == {
        "starter": (100, 1900, "usd"),
        "pro": (500, 7900, "usd"),
        "agency": (2000, 24900, "usd"),
    }


def test_a_request_costs_its_unit_price_times_the_images_it_asks_for(tmp_path):
    prices = {name: 1 for name in OPERATIONS} | {"ideogram.generate": 1.25, "ideogram.upscale": 3}
    config = BillingConfig.load(write(tmp_path, yaml.safe_dump({"prices": prices})))
    assert config.price(OPERATIONS["ideogram.generate"], {"prompt": "x", "num_images": 4}) == Decimal(5)
    assert config.price(OPERATIONS["ideogram.generate"], {"prompt": "x"}) == Decimal("1.25")
    assert config.price(OPERATIONS["ideogram.upscale"], {"image": "x"}) == Decimal(3)


def write(tmp_path, text: str):
    path = tmp_path / "billing.yaml"
    path.write_text(text)
    return path


def all_priced(**changes) -> str:
    return yaml.safe_dump({"prices": {name: 1 for name in OPERATIONS} | changes})


def test_an_operation_without_a_price_is_named(tmp_path):
    prices = {name: 1 for name in OPERATIONS if name != "qwen.edit"}
    with pytest.raises(ValueError, match="no price for qwen.edit"):
        BillingConfig.load(write(tmp_path, yaml.safe_dump({"prices": prices})))


def test_a_price_for_an_operation_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(ValueError, match="do not exist: qwen.paint"):
        BillingConfig.load(write(tmp_path, all_priced(**{"qwen.paint": 1})))


@pytest.mark.parametrize(
    "text",
    [
        all_priced(**{"qwen.edit": -1}),  # negative
        all_priced(**{"qwen.edit": 0.0005}),  # finer than the ledger keeps
        all_priced(**{"qwen.edit": "cheap"}),
        all_priced() + "plans: {}\n",  # a section this version does not know
        "prices: [1, 2",
        "prices: 3\n",
        all_priced() + "packs: {pro: {credits: 500, price: 0}}\n",
        all_priced() + "packs: {pro: {credits: 0, price: 100}}\n",
        all_priced() + "packs: {pro: {credits: 5, price: 100, currency: USD}}\n",
        all_priced() + "packs: {Big Pack: {credits: 5, price: 100}}\n",
        all_priced() + "packs: {pro: {credits: 5, price: 100, bonus: 1}}\n",
    ],
    ids=[
        "negative",
        "four-decimals",
        "not-a-number",
        "unknown-section",
        "broken-yaml",
        "not-a-mapping",
        "free-pack",
        "empty-pack",
        "currency-case",
        "pack-name",
        "pack-extra",
    ],
)
def test_a_broken_config_is_refused_with_its_path(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=str(path)):
        BillingConfig.load(path)


def test_a_missing_file_is_refused_with_its_path(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        BillingConfig.load(tmp_path / "nowhere.yaml")


def test_the_shipped_plans_are_the_originals_with_limits_on_every_plan():
    config = BillingConfig.load(SHIPPED)
    assert {name: (p.allowance, p.price) for name, p in config.plans.items()} == {
        "free": (0, None),
        "plus": (200, 3900),
        "pro": (1000, 9900),
        "studio": (4000, 29900),
    }
    assert config.default_plan == "free"
    free = config.limits("free", None, throttled=False)
    assert (free.requests_per_minute, free.concurrent_jobs, free.credits_per_day) == (60, 4, 100)
    assert all(config.limits(name, None, throttled=False).requests_per_minute for name in config.plans)


def test_an_accounts_limits_are_its_plans_then_its_overrides_then_a_throttles_caps():
    config = BillingConfig.load(SHIPPED)
    overridden = config.limits("pro", {"concurrent_jobs": 100, "credits_per_day": None}, throttled=False)
    assert (overridden.requests_per_minute, overridden.concurrent_jobs, overridden.credits_per_day) == (300, 100, None)
    throttled = config.limits("pro", {"concurrent_jobs": 100, "credits_per_day": None}, throttled=True)
    assert (throttled.requests_per_minute, throttled.concurrent_jobs, throttled.credits_per_day) == (6, 1, 20)
    assert config.limits("retired-plan", None, throttled=False) == config.limits("free", None, throttled=False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"default_plan": "gold"}, "default_plan 'gold' is not one of its plans"),
        ({"provider_limits": {"midjourney": {"requests_per_minute": 5}}}, "limits providers that do not exist"),
        ({"plans": {"free": {"limits": {"requests_per_minute": 0}}}}, "invalid billing config"),
        ({"plans": {"free": {"allowance": -1}}}, "invalid billing config"),
        ({"throttled": {"burst": 5}}, "invalid billing config"),
    ],
)
def test_a_bad_plan_or_limit_is_refused_with_what_is_wrong(tmp_path, extra, message):
    prices = {name: 1 for name in OPERATIONS}
    with pytest.raises(ValueError, match=message):
        BillingConfig.load(write(tmp_path, yaml.safe_dump({"prices": prices, **extra})))


def test_a_providers_limits_become_the_caps_the_ledger_judges_by(tmp_path):
    prices = {name: 1 for name in OPERATIONS}
    limits = {"ideogram": {"requests_per_minute": 100, "concurrent_jobs": 7}, "qwen": {"requests_per_minute": 5}}
    config = BillingConfig.load(write(tmp_path, yaml.safe_dump({"prices": prices, "provider_limits": limits})))
    assert config.provider_rates == {"ideogram": 100, "qwen": 5}
    caps = config.provider_caps("ideogram")
    assert caps is not None and (caps.provider, caps.concurrent_jobs, caps.credits_per_day) == ("ideogram", 7, None)
    assert config.provider_caps("qwen") is None and config.provider_caps("offline") is None
