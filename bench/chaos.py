"""Check under load: jobs canceled and pool actors killed while a thousand chains run.

The promise of the job engine is that no job is lost and none is charged twice, whatever happens
meanwhile. This drives the engine through the public API on its own stack (as bench/job_engine.py
does) and checks that promise at a scale the tests don't reach: 1,000 two-step chains
(`qwen.generate` on the fake DashScope, answering in 150 ms, then `offline.describe` of its image)
from 10 users in batches of 100; as soon as they are in, 100 of them are canceled and actors are
`ray.kill`ed (Ray restarts them): by default one pool actor of each of the two providers, with
`--kill` also (or instead) the dispatcher and the ledger. Afterwards every job must have ended
exactly once (one terminal event), and its credits must be settled exactly once, for the steps
that ran: 1.5 for a success, 1 for a job canceled after its first step, 0 before it.

    .venv/bin/python bench/chaos.py [--jobs 1000] [--cancels 100] [--kill pools dispatcher ledger]

Prints the time until every job ended and what broke; exits 1 when anything did.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import ray
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from actors.dispatcher import DISPATCHER_NAME  # noqa: E402
from actors.ledger import LEDGER_NAME  # noqa: E402
from actors.pools import pool_name  # noqa: E402
from bench.job_engine import POOLS, TERMINAL, Stack, running_stack  # noqa: E402
from daygen.runtime import RAY_NAMESPACE  # noqa: E402
from storage.db import make_engine, make_sessionmaker  # noqa: E402
from storage.models import Job, JobEvent, LedgerEntry  # noqa: E402

CHAIN = {
    "steps": [
        {"operation": "qwen.generate", "params": {"prompt": "chaos", "size": "1328*1328", "seed": 1}},
        {"operation": "offline.describe", "input": "previous"},
    ]
}
STEP_COSTS = (Decimal(1), Decimal("0.5"))
USERS = 10


async def ended(client: httpx.AsyncClient, job_id: str, headers: dict) -> str:
    while True:
        response = await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers)
        response.raise_for_status()
        if (status := response.json()["status"]) in ("succeeded", "failed", "canceled"):
            return status


def victims(kill: list[str]) -> list[str]:
    """The names of the actors `--kill` chose."""
    names = {
        "pools": [pool_name("qwen", 0), pool_name("offline", 0)],
        "dispatcher": [DISPATCHER_NAME],
        "ledger": [LEDGER_NAME],
    }
    return [name for choice in kill for name in names[choice]]


async def chaos(stack: Stack, jobs: int, cancels: int, kill: list[str]) -> list[str]:
    stack.dashscope.set_latency(0.15)
    users = await stack.users(USERS, jobs)
    owner_of: dict[str, dict] = {}
    async with httpx.AsyncClient(base_url=stack.base, timeout=120) as client:
        started = time.perf_counter()

        async def submit(headers: dict, count: int) -> None:
            for begin in range(0, count, 100):
                body = {"jobs": [CHAIN] * min(100, count - begin)}
                response = await client.post("/v1/jobs/batch", json=body, headers=headers)
                response.raise_for_status()
                owner_of.update({item["jobId"]: headers for item in response.json()["results"]})

        await asyncio.gather(*(submit(headers, jobs // USERS) for _, headers in users))
        chosen = random.sample(sorted(owner_of), cancels)
        answers = await asyncio.gather(*(client.post(f"/v1/jobs/{j}/cancel", headers=owner_of[j]) for j in chosen))
        for name in victims(kill):
            ray.kill(ray.get_actor(name, namespace=RAY_NAMESPACE), no_restart=False)
        statuses = await asyncio.gather(*(ended(client, j, h) for j, h in owner_of.items()))
        elapsed = time.perf_counter() - started
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    print(
        f"{len(owner_of)} chains, {cancels} canceled ({sorted({a.status_code for a in answers})}), "
        f"killed {', '.join(victims(kill))}: all ended in {elapsed:.1f} s: {counts}"
    )
    return await violations(stack, [uuid.UUID(j) for j in owner_of])


async def violations(stack: Stack, job_ids: list[uuid.UUID]) -> list[str]:
    engine = make_engine(stack.settings.database_url, pool_size=2)
    try:
        async with make_sessionmaker(engine)() as session:
            ends_stmt = select(JobEvent.job_id, func.count()).where(JobEvent.type.in_(TERMINAL))
            ends = dict((await session.execute(ends_stmt.group_by(JobEvent.job_id))).all())
            entries_stmt = select(LedgerEntry.job_id, LedgerEntry.kind, LedgerEntry.amount)
            entries: dict[uuid.UUID, list[tuple[str, Decimal]]] = {}
            for job_id, kind, amount in await session.execute(entries_stmt.where(LedgerEntry.job_id.in_(job_ids))):
                entries.setdefault(job_id, []).append((kind, amount))
            jobs = {job.id: job for job in (await session.execute(select(Job).where(Job.id.in_(job_ids)))).scalars()}
    finally:
        await engine.dispose()
    found = []
    for job_id in job_ids:
        job, settled = jobs[job_id], entries.get(job_id, [])
        if ends.get(job_id) != 1:
            found.append(f"job {job_id} ended {ends.get(job_id, 0)} times")
        kinds = sorted(kind for kind, _ in settled)
        charged = -sum((amount for _, amount in settled), Decimal(0))
        owed = sum(STEP_COSTS[: job.steps_done], Decimal(0))
        if kinds.count("reserve") != 1 or len(kinds) != 2 or charged != owed:
            found.append(f"job {job_id} ({job.status}, {job.steps_done} steps) settled as {settled}, owed {owed}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--cancels", type=int, default=100)
    parser.add_argument("--kill", nargs="+", default=["pools"], choices=["pools", "dispatcher", "ledger"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dgb-") as tmp, running_stack(Path(tmp), POOLS, None) as stack:
        found = asyncio.run(chaos(stack, args.jobs, args.cancels, args.kill))
    print(f"ended more or less than once, or charged wrongly: {len(found)}", *found[:10], sep="\n  ")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
