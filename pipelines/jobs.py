"""What happens to a claimed job, from start to settled credits; no Ray in here.

Order matters for "never lose a job, never charge twice": the output rows and the job's
end are written in one transaction, then the reservation is settled (idempotent on the
job id). A crash between the two is repaired by `settle_unsettled` on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pipelines.steps import StepOutcome
from storage import jobs as job_queries
from storage import ledger as ledger_queries
from storage.events import JobEvents

log = logging.getLogger("daygen.jobs")

RunStep = Callable[[str, dict[str, Any], dict[str, Any]], Awaitable[StepOutcome]]
Settle = Callable[[uuid.UUID, str], Awaitable[Any]]


async def _keep_lease(
    sessions: async_sessionmaker[AsyncSession], claimed: job_queries.ClaimedJob, lease_seconds: float
) -> None:
    while True:
        await asyncio.sleep(lease_seconds / 3)
        async with sessions() as session:
            if not await job_queries.renew_lease(session, claimed.id, claimed.attempt, lease_seconds):
                return


async def execute_job(
    claimed: job_queries.ClaimedJob,
    *,
    sessions: async_sessionmaker[AsyncSession],
    run_step: RunStep,
    settle: Settle,
    events: JobEvents,
    lease_seconds: float,
) -> str | None:
    """Run the job's step and record its end; returns the final status, or None if the lease was lost."""
    extra = {"job_id": str(claimed.id), "operation": claimed.operation, "attempt": claimed.attempt}
    await events.publish(claimed.id, "job.started", {"status": "running", "attempt": claimed.attempt})
    lease = asyncio.create_task(_keep_lease(sessions, claimed, lease_seconds))
    try:
        outcome = await run_step(claimed.operation, claimed.params, claimed.inputs or {})
    except Exception:
        log.exception("step crashed", extra=extra)
        outcome = StepOutcome(error_code="internal_error", error_message="the job failed unexpectedly")
    finally:
        lease.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lease

    async with sessions() as session:
        if outcome.ok:
            rows = await job_queries.finish_succeeded(session, claimed, assets=outcome.assets, text=outcome.text)
            finished = rows is not None
        else:
            finished = await job_queries.finish_failed(
                session, claimed, code=outcome.error_code or "failed", message=outcome.error_message or ""
            )
    if not finished:
        log.warning("lease lost; another attempt owns the job", extra=extra)
        return None

    status = "succeeded" if outcome.ok else "failed"
    await settle(claimed.id, "commit" if outcome.ok else "release")
    if outcome.ok:
        data: dict[str, Any] = {"status": status, "progress": 100, "assetIds": [str(r.id) for r in rows or []]}
    else:
        data = {"status": status, "error": {"code": outcome.error_code, "message": outcome.error_message}}
    await events.publish(claimed.id, f"job.{status}", data)
    log.info("job finished", extra={**extra, "status": status, "error_code": outcome.error_code})
    return status


async def settle_unsettled(sessions: async_sessionmaker[AsyncSession], settle: Settle) -> int:
    """Settle reservations of jobs that ended while the settlement was lost (a crash in between)."""
    async with sessions() as session:
        pending = await ledger_queries.unsettled_finished_jobs(session)
    for job_id, status in pending:
        await settle(job_id, "commit" if status == "succeeded" else "release")
    return len(pending)
