"""What a job the ledger refused is answered with: the status, code and details a client acts on."""

from __future__ import annotations

import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import yaml

from daygen.errors import CreditLimitReached, InsufficientCredits, TooManyJobs
from daygen.settings import Settings
from pipelines.billing_config import BillingConfig, Limits
from pipelines.jobs import QueueAnswer
from serve_app.errors import status_for
from serve_app.routes.jobs import Submitter, refusal_error
from storage.jobs import NewJob
from storage.models import PIPELINE


def billing(tmp_path: Path) -> BillingConfig:
    config = yaml.safe_load(Settings(_env_file=None).billing_config.read_text())
    config["provider_limits"] = {"ideogram": {"concurrent_jobs": 5, "credits_per_day": 100}}
    path = tmp_path / "billing.yaml"
    path.write_text(yaml.safe_dump(config))
    return BillingConfig.load(path)


SUBMITTER = Submitter(uuid.uuid4(), Limits(credits_per_day=Decimal(10)))
JOB = NewJob(uuid.uuid4(), SUBMITTER.id, "ideogram.generate", "ideogram", {}, Decimal(2))


def refused(kind: str | None, used: int = 0) -> QueueAnswer:
    return QueueAnswer("refused", Decimal(7), kind, Decimal(used))


def test_each_refusal_has_its_status_code_and_numbers(tmp_path):
    config = billing(tmp_path)
    cases = [
        (refused("credits"), InsufficientCredits, 402, "insufficient_credits", {"required": 2.0, "balance": 7.0}),
        (
            refused("credits_per_day", 9),
            CreditLimitReached,
            402,
            "credit_limit_reached",
            {"limit": "credits_per_day", "max": 10.0, "used": 9.0, "required": 2.0},
        ),
        (
            refused("provider_credits_per_day", 99),
            CreditLimitReached,
            402,
            "credit_limit_reached",
            {"limit": "provider_credits_per_day", "provider": "ideogram", "max": 100.0, "used": 99.0, "required": 2.0},
        ),
        (
            refused("provider_concurrent_jobs", 5),
            TooManyJobs,
            429,
            "too_many_concurrent_jobs",
            {"limit": "provider_concurrent_jobs", "provider": "ideogram", "open": 5, "retryAfter": 2},
        ),
    ]
    for answer, kind, status, code, details in cases:
        error = refusal_error(answer, JOB, SUBMITTER, config)
        assert (type(error), status_for(error), error.code, error.details) == (kind, status, code, details)
    assert refusal_error(refused("provider_concurrent_jobs", 5), JOB, SUBMITTER, config).retry_after == 2


def test_a_chains_refusal_by_a_later_steps_provider_names_it_and_its_part(tmp_path):
    config = billing(tmp_path)
    steps = [
        {"operation": "qwen.generate", "params": {}, "input": None, "cost": "1"},
        {"operation": "ideogram.upscale", "params": {}, "input": "previous", "cost": "2"},
        {"operation": "ideogram.describe", "params": {}, "input": "previous", "cost": "0.5"},
    ]
    shares = config.provider_shares(PIPELINE, {"steps": steps}, Decimal("3.5"))
    assert [(s.provider, s.credits) for s in shares] == [("ideogram", Decimal("2.5"))]
    chain = NewJob(uuid.uuid4(), SUBMITTER.id, PIPELINE, "qwen", {"steps": steps}, Decimal("3.5"))
    chain = replace(chain, provider_shares=shares)
    answer = QueueAnswer("refused", Decimal(7), "provider_credits_per_day", Decimal(99), "ideogram")
    error = refusal_error(answer, chain, SUBMITTER, config)
    assert (error.code, error.details) == (
        "credit_limit_reached",
        {"limit": "provider_credits_per_day", "provider": "ideogram", "max": 100.0, "used": 99.0, "required": 2.5},
    )
