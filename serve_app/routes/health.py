"""Liveness and readiness: /readyz checks Postgres, Redis and the object store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from serve_app.deps import ServicesDep

router = APIRouter(tags=["health"])
CHECK_TIMEOUT = 3.0


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


async def _check(probe: Awaitable) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except Exception as exc:
        return f"failing: {type(exc).__name__}"
    return "ok"


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    async def postgres() -> None:
        async with services.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    names = ("postgres", "redis", "objectStore")
    results = await asyncio.gather(_check(postgres()), _check(services.redis.ping()), _check(services.store.check()))
    checks = dict(zip(names, results, strict=True))
    ready = all(r == "ok" for r in results)
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503)
