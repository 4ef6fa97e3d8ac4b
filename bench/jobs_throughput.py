"""Benchmark: offline jobs through the whole path (HTTP -> ledger -> dispatcher -> pool -> store).

Starts its own stack like the tests do (the machine's Postgres/Redis when
DAYGEN_TEST_DATABASE_URL / DAYGEN_TEST_REDIS_URL are set, else embedded servers), gives one
user enough credits, submits N jobs with C concurrent clients and waits for all of them.
Prints submit latency percentiles and end-to-end jobs per second.

    .venv/bin/python bench/jobs_throughput.py --jobs 200 --concurrency 20 --size 256
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daygen.runtime import deploy, start_ray  # noqa: E402
from daygen.settings import Settings  # noqa: E402
from storage import ledger  # noqa: E402
from storage.db import make_engine, make_sessionmaker  # noqa: E402
from tests.conftest import free_port, private_database, service_urls  # noqa: E402


async def grant(database_url: str, user_id: str, amount: int) -> None:
    engine = make_engine(Settings(database_url=database_url).database_url, pool_size=1)
    async with make_sessionmaker(engine).begin() as session:
        await ledger.append_entry(
            session,
            account_id=uuid.UUID(user_id),
            kind="grant",
            amount=Decimal(amount),
            idempotency_key=f"bench:{uuid.uuid4()}",
            reason="benchmark",
        )
    await engine.dispose()


async def run(base_url: str, database_url: str, jobs: int, concurrency: int, size: int) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        signup = await client.post(
            "/v1/auth/signup", json={"email": f"bench-{secrets.token_hex(4)}@example.com", "password": "benchmark!"}
        )
        body = signup.json()
        await grant(database_url, body["user"]["id"], jobs)
        headers = {"Authorization": f"Bearer {body['accessToken']}"}
        latencies: list[float] = []
        job_ids: list[str] = []
        queue = list(range(jobs))

        async def submitter() -> None:
            while queue:
                i = queue.pop()
                started = time.perf_counter()
                response = await client.post(
                    "/v1/jobs",
                    json={
                        "operation": "offline.generate",
                        "params": {"prompt": f"bench {i}", "width": size, "height": size},
                    },
                    headers=headers,
                )
                latencies.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                job_ids.append(response.json()["jobId"])

        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        submitted = time.perf_counter() - started
        statuses = []
        for job_id in job_ids:
            job = (await client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=headers)).json()
            statuses.append(job["status"])
        total = time.perf_counter() - started

    cuts = statistics.quantiles(latencies, n=100)
    print(f"jobs={jobs} concurrency={concurrency} size={size}x{size} cpus={os.cpu_count()}")
    print(f"submit latency ms: p50={cuts[49]:.1f} p95={cuts[94]:.1f} max={max(latencies):.1f}")
    print(f"submit rate: {jobs / submitted:.1f} jobs/s")
    print(f"end to end: {jobs / total:.1f} jobs/s ({total:.1f} s); succeeded={statuses.count('succeeded')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    import ray

    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="dgb-") as tmp:
        work = Path(tmp)
        pg_url, redis_url = stack.enter_context(service_urls(work))
        database_url = stack.enter_context(private_database(pg_url))
        settings = Settings(
            home=work,
            port=free_port(),
            database_url=database_url,
            redis_url=redis_url,
            redis_namespace=f"daygen-bench-{secrets.token_hex(4)}",
            storage_url=f"file://{work / 'objects'}",
            jwt_secret=secrets.token_urlsafe(32),
            log_level="WARNING",
        )
        start_ray(temp_dir=work / "ray", dashboard=False, num_cpus=2, object_store_bytes=200 * 1024 * 1024)
        stack.callback(ray.shutdown)
        base_url = deploy(settings)
        asyncio.run(run(base_url, database_url, args.jobs, args.concurrency, args.size))


if __name__ == "__main__":
    main()
