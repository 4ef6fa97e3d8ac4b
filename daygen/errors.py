"""Domain errors raised by plain code; serve_app/errors.py maps them to HTTP in one place."""

from __future__ import annotations

from typing import Any


class DaygenError(Exception):
    code = "error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(DaygenError):
    code = "invalid_input"


class NotAuthenticated(DaygenError):
    code = "not_authenticated"


class Forbidden(DaygenError):
    code = "forbidden"


class AccountBanned(Forbidden):
    code = "account_banned"


class NotFound(DaygenError):
    code = "not_found"


class Conflict(DaygenError):
    code = "conflict"


class EmailTaken(Conflict):
    code = "email_taken"


class BalanceTooLow(Conflict):
    """A revoke of more credits than the account has: a balance never goes below zero."""

    code = "balance_too_low"


class NoSavedCard(Conflict):
    """Auto top-up needs a card saved at a checkout first."""

    code = "no_saved_card"


class InsufficientCredits(DaygenError):
    code = "insufficient_credits"


class CreditLimitReached(InsufficientCredits):
    """A job that would take the account past its credits a day or a month (402)."""

    code = "credit_limit_reached"


class RateLimited(DaygenError):
    """Too many jobs a minute for the account or the provider (429): try again in `retry_after` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, details: Any = None, *, retry_after: float) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class TooManyJobs(RateLimited):
    """The account has as many jobs queued and running as its limit allows (429)."""

    code = "too_many_concurrent_jobs"


class PayloadTooLarge(DaygenError):
    code = "payload_too_large"


class UnsupportedMediaType(DaygenError):
    code = "unsupported_media_type"


class ServiceUnavailable(DaygenError):
    code = "service_unavailable"


class BillingUnavailable(ServiceUnavailable):
    """Payments are not configured here, or the payment provider did not answer."""

    code = "billing_unavailable"


class ProviderDown(ServiceUnavailable):
    """A provider that can't take work now (no key configured, our key refused, its account out of
    funds): new jobs for it are a 503 before anything is charged, `retry_after` seconds if known."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class UpstreamFailed(DaygenError):
    """A job that waited on for its answer failed upstream (502), under the job's own error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StillRunning(DaygenError):
    """A job waited on for its answer did not end in time (504); it goes on and can be polled."""

    code = "job_still_running"


class JobFailed(DaygenError):
    """A job step failed; `code` is what the job's error records."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MalformedBody(DaygenError):
    code = "malformed_body"


class InvalidSignature(MalformedBody):
    """A signed request (a Stripe event) whose signature is missing, wrong or too old."""

    code = "invalid_signature"


class ProviderError(DaygenError):
    """An upstream image API said no. `job_code` is what a job that ends on it records."""

    code = "provider_error"
    job_code = "provider_error"
    retryable = False


class ProviderMisconfigured(ProviderError):
    """Our API key was refused (upstream 401): an operator must act; users see 503."""

    code = job_code = "provider_misconfigured"


class ProviderOutOfFunds(ProviderError):
    """The provider account can't pay (upstream 402): not a rate limit, not the user's fault."""

    code = job_code = "provider_out_of_funds"


class ContentRejected(ProviderError):
    """The provider's safety check refused the prompt or image (upstream 422)."""

    code = job_code = "content_rejected"


class ProviderBadRequest(ProviderError):
    """The provider refused the request as malformed (upstream 400)."""

    code = job_code = "provider_bad_request"


class ProviderRateLimited(ProviderError):
    """Upstream 429: wait `retry_after` seconds and try again; never a failure by itself."""

    code = job_code = "provider_rate_limited"
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None, details=None) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """Upstream 5xx, a timeout or a broken connection: retried with backoff, then the job fails."""

    code = job_code = "provider_unavailable"
    retryable = True
