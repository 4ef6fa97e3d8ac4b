"""Benchmark: the Celery baseline of issue 6's targets, measured on this machine in this hour.

Issue 6 took its targets from Celery 5.7 (gevent pool, Redis broker and result backend) doing "the
same work: a job = a zero-latency or 2 s provider call, then one Postgres row; the client measures
until it is notified": 538 jobs/s with 50 clients in a closed loop, 2,000 jobs of 2 s done in 4.0 s.
This machine's speed moves two- to threefold from hour to hour (bench/machine.py), and every figure
of bench/job_engine.py moves with it, so ours are comparable only with Celery's taken in the same
hour: run the two in turn. Celery's side, the same way:

  a job     a Celery task on a gevent worker (`--concurrency`, 1,000 by default: 2,000 jobs of 2 s
            in 4.0 s is two rounds of it) that POSTs the fake DashScope's generation endpoint (the
            call a `qwen.generate` job makes; no latency, or 2 s), then inserts one row in Postgres
            (committed); the client waits for its result through the Redis backend
  latency   one client, after 10 jobs of warm-up: p50/p99 from the submit to the result
  throughput  50 clients in a closed loop, 5,000 zero-latency jobs: jobs/s, p50/p99
  burst     2,000 jobs of 2 s submitted at once by 20 submitters: time until every result is in

Each scenario prints the CPU a job of the worker, the clients and the whole machine (as
bench/job_engine.py prints each process's). Every job's row is counted at the end (none lost).
Worker and clients run in processes of their own (gevent patches them); the fake DashScope too, as
for bench/job_engine.py.

    .venv/bin/pip install -e '.[dev,celery-baseline]'
    .venv/bin/python bench/celery_baseline.py && .venv/bin/python bench/job_engine.py

Uses the machine's Postgres and Redis when DAYGEN_TEST_DATABASE_URL / DAYGEN_TEST_REDIS_URL are
set, else embedded ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = "bench_celery_jobs"
TASK = "bench.celery_baseline.job"
BODY = json.dumps(
    {
        "model": "qwen-image",
        "input": {"messages": [{"role": "user", "content": [{"text": "a benchmark"}]}]},
        "parameters": {"size": "1328*1328", "seed": 7},
    }
)


# -- the worker's side (imported by `celery -A bench.celery_baseline worker`, gevent-patched) ------------


def make_app():
    from celery import Celery

    app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
    app.conf.update(
        task_default_queue=os.environ["BENCH_QUEUE"],
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    return app


if "BENCH_QUEUE" in os.environ and __name__ != "__main__":  # the worker's import, not the clients' process
    app = make_app()
    _state: dict = {}

    def _connections():
        """A blocking pool of Postgres connections shared by the worker's greenlets."""
        if "pool" not in _state:
            import gevent.queue
            import psycopg2
            from psycogreen.gevent import patch_psycopg

            patch_psycopg()
            pool = _state["pool"] = gevent.queue.Queue()  # shared at once: greenlets arriving meanwhile wait on it
            for _ in range(int(os.environ.get("BENCH_PG_CONNECTIONS", "20"))):
                connection = psycopg2.connect(os.environ["BENCH_PG_DSN"])
                connection.autocommit = True
                pool.put(connection)
        return _state["pool"]

    def _http():
        if "http" not in _state:
            import urllib3

            _state["http"] = urllib3.PoolManager(maxsize=int(os.environ.get("BENCH_CONCURRENCY", "1000")))
        return _state["http"]

    @app.task(name=TASK)
    def job(job_id: str) -> str:
        response = _http().request(
            "POST",
            os.environ["BENCH_PROVIDER_URL"],
            body=BODY,
            headers={"Authorization": f"Bearer {os.environ['BENCH_PROVIDER_KEY']}", "Content-Type": "application/json"},
        )
        if response.status != 200:
            raise RuntimeError(f"the provider answered {response.status}")
        pool = _connections()
        connection = pool.get()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (job_id,))
        finally:
            pool.put(connection)
        return job_id


# -- the clients' side (a process of its own, gevent-patched) -----------------------------------------------


def run_clients(scenario: str, count: int, clients: int) -> dict:
    """Runs in the client process: the scenario's timings, and the CPU seconds the worker, this process
    and the whole machine spent on its measured jobs (warm-up and start-up left out)."""
    import time
    import uuid

    import gevent
    import psutil
    from celery.result import ResultSet

    app = make_app()
    worker = psutil.Process(int(os.environ["BENCH_WORKER_PID"]))

    def cpu() -> tuple[float, float, float]:
        mine, theirs, machine = time.process_time(), worker.cpu_times(), psutil.cpu_times()
        return theirs.user + theirs.system, mine, machine.user + machine.system

    def one() -> float:
        started = time.perf_counter()
        app.send_task(TASK, args=[str(uuid.uuid4())]).get(timeout=120)
        return (time.perf_counter() - started) * 1000

    def measured(figures: dict, before: tuple[float, float, float]) -> dict:
        return {**figures, "cpu": [after - then for after, then in zip(cpu(), before, strict=True)]}

    if scenario == "latency":
        for _ in range(10):
            one()
        before = cpu()
        return measured({"ms": [one() for _ in range(count)]}, before)
    if scenario == "throughput":
        left, times = [count], []

        def closed_loop() -> None:
            while left[0] > 0:
                left[0] -= 1
                times.append(one())

        before, started = cpu(), time.perf_counter()
        gevent.joinall([gevent.spawn(closed_loop) for _ in range(clients)])
        return measured({"ms": times, "seconds": time.perf_counter() - started}, before)
    # burst: `clients` submitters send `count` jobs at once, then every result is awaited
    before, started = cpu(), time.perf_counter()
    per = count // clients
    submitted: list = []

    def submit() -> None:
        submitted.extend(app.send_task(TASK, args=[str(uuid.uuid4())]) for _ in range(per))

    gevent.joinall([gevent.spawn(submit) for _ in range(clients)])
    sent = time.perf_counter() - started
    ResultSet(submitted).get(timeout=120)  # every result, read as they come through the backend's one channel
    figures = {"seconds": time.perf_counter() - started, "submitted": sent, "jobs": len(submitted)}
    return measured(figures, before)


# -- the driver -----------------------------------------------------------------------------------------------


def pct(values: list[float], q: int) -> float:
    import statistics

    return statistics.quantiles(values, n=100)[q - 1]


def main() -> None:
    import asyncio
    import contextlib
    import secrets
    import subprocess
    import tempfile

    import asyncpg
    from sqlalchemy import make_url

    sys.path.insert(0, str(ROOT))
    from bench.machine import speed_line
    from tests.conftest import private_database, service_urls
    from tests.fakes.dashscope import FakeDashScopeProcess

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--burst-jobs", type=int, default=2000)
    parser.add_argument("--burst-submitters", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1000, help="the gevent worker's greenlets")
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} celery worker: gevent, concurrency {args.concurrency}", flush=True)
    print(speed_line(), flush=True)

    async def sql(dsn: str, statement: str):
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetchval(statement)
        finally:
            await connection.close()

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dgc-")))
        pg_url, redis_url = stack.enter_context(service_urls(work))
        database_url = stack.enter_context(private_database(pg_url))
        dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        asyncio.run(
            sql(dsn, f"CREATE TABLE {TABLE} (id uuid PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())")
        )
        fake = stack.enter_context(contextlib.closing(FakeDashScopeProcess()))
        env = {
            **os.environ,
            "BENCH_QUEUE": f"bench-celery-{secrets.token_hex(4)}",
            "BENCH_REDIS_URL": redis_url,
            "BENCH_PG_DSN": dsn,
            "BENCH_PROVIDER_URL": fake.base_url + "/services/aigc/multimodal-generation/generation",
            "BENCH_PROVIDER_KEY": fake.api_key,
            "BENCH_CONCURRENCY": str(args.concurrency),
            "PYTHONPATH": str(ROOT),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.celery_baseline", "--quiet", "worker", "-P", "gevent"]
            + ["-c", str(args.concurrency), "--without-heartbeat", "--without-gossip", "--without-mingle"]
            + ["--loglevel", "WARNING"],
            cwd=ROOT,
            env=env,
        )
        stack.callback(lambda: (worker.terminate(), worker.wait(timeout=60)))

        env["BENCH_WORKER_PID"] = str(worker.pid)

        def clients(scenario: str, count: int, how_many: int) -> dict:
            answer = subprocess.run(
                [sys.executable, __file__, "--client", scenario, str(count), str(how_many)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            figures = json.loads(answer.stdout.strip().splitlines()[-1])
            worker_ms, client_ms, machine_ms = (seconds * 1000 / max(count, 1) for seconds in figures["cpu"])
            figures["cpu"] = "   CPU per job: " + (
                f"worker {worker_ms:.1f} ms, clients {client_ms:.1f}, machine {machine_ms:.1f}"
            )
            return figures

        clients("latency", 0, 1)  # the worker's start and 10 jobs of warm-up, out of the figures below
        run = clients("latency", args.latency_jobs, 1)
        latency = run["ms"]
        print(
            f"1. latency, submit to the result, 1 client, {args.latency_jobs} jobs: "
            f"p50 {pct(latency, 50):.1f} ms, p99 {pct(latency, 99):.1f} ms",
            flush=True,
        )
        print(run["cpu"], flush=True)
        run = clients("throughput", args.jobs, args.clients)
        print(
            f"2. throughput, {args.clients} clients in a closed loop, {args.jobs} jobs: "
            f"{args.jobs / run['seconds']:.0f} jobs/s in {run['seconds']:.1f} s; "
            f"per job p50 {pct(run['ms'], 50):.0f} ms, p99 {pct(run['ms'], 99):.0f} ms",
            flush=True,
        )
        print(run["cpu"], flush=True)
        fake.set_latency(2.0)
        burst = clients("burst", args.burst_jobs, args.burst_submitters)
        fake.set_latency(0.0)
        print(
            f"3. burst, {burst['jobs']} jobs of 2 s submitted at once by {args.burst_submitters} submitters: "
            f"all done in {burst['seconds']:.2f} s (submitted in {burst['submitted']:.2f} s)",
            flush=True,
        )
        print(burst["cpu"], flush=True)
        expected = 20 + args.latency_jobs + args.jobs + burst["jobs"]
        rows = asyncio.run(sql(dsn, f"SELECT count(*) FROM {TABLE}"))
        print(f"rows written {rows} of {expected} jobs", flush=True)
        if rows != expected:
            sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        from gevent import monkey

        monkey.patch_all()
        sys.path.insert(0, str(ROOT))
        print(json.dumps(run_clients(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))), flush=True)
        os._exit(0)  # past the pending results' finalizers, which fail once gevent's hub is gone
    else:
        main()
