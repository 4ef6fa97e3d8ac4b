"""The one place where errors become HTTP: status codes and the JSON error bodies.

/v1 answers `{"error": {"code", "message", "details"}}`; the daygen-compatible /api keeps
the original backend's `{"statusCode", "message", "error"}`.
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from daygen import errors

log = logging.getLogger("daygen.api")

STATUS: dict[type[errors.DaygenError], int] = {
    errors.MalformedBody: 400,
    errors.InvalidInput: 422,
    errors.NotAuthenticated: 401,
    errors.InsufficientCredits: 402,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.RateLimited: 429,
    errors.UpstreamFailed: 502,
    errors.ServiceUnavailable: 503,
    errors.StillRunning: 504,
}

HTTP_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def status_for(exc: errors.DaygenError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(path: str, status: int, code: str, message: str, details: Any = None) -> dict[str, Any]:
    if path.startswith("/api/"):
        return {"statusCode": status, "message": message, "error": HTTPStatus(status).phrase}
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(
    request: Request, status: int, code: str, message: str, details: Any = None, headers: dict | None = None
) -> JSONResponse:
    request.state.error_code = code
    return JSONResponse(error_body(request.url.path, status, code, message, details), status, headers=headers)


async def _domain_error(request: Request, exc: errors.DaygenError) -> JSONResponse:
    status = status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return error_response(request, status, exc.code, exc.message, exc.details, headers or None)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = exc.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return error_response(request, 400, "malformed_body", "the request body is not valid JSON")
    details = [
        {"field": ".".join(str(part) for part in p["loc"] if part != "body"), "message": p["msg"]} for p in problems
    ]
    message = "invalid request: " + "; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in details)
    return error_response(request, 422, "validation_error", message, details)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return error_response(request, exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _database_busy(request: Request, exc: SQLAlchemyTimeoutError) -> JSONResponse:
    """Every database connection of this replica stayed busy for the pool's whole timeout: overload,
    not a bug; the client may try again shortly."""
    log.warning("database pool exhausted", extra={"path": request.url.path})
    return error_response(
        request, 503, "overloaded", "the service is busy; try again shortly", headers={"Retry-After": "1"}
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(request, 500, "internal_error", "something went wrong on our side")


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.DaygenError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyTimeoutError, _database_busy)
    app.add_exception_handler(Exception, _unexpected)
