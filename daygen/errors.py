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


class NotFound(DaygenError):
    code = "not_found"


class Conflict(DaygenError):
    code = "conflict"


class EmailTaken(Conflict):
    code = "email_taken"


class InsufficientCredits(DaygenError):
    code = "insufficient_credits"


class PayloadTooLarge(DaygenError):
    code = "payload_too_large"


class UnsupportedMediaType(DaygenError):
    code = "unsupported_media_type"


class ServiceUnavailable(DaygenError):
    code = "service_unavailable"


class JobFailed(DaygenError):
    """A job step failed; `code` is what the job's error records."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MalformedBody(DaygenError):
    code = "malformed_body"
