"""Benchmark: reserve + commit pairs a second through the ledger actor, durable in Postgres.

Each of `--clients` callers in a closed loop asks the ledger actor to queue a one-credit job (its
reservation, in the transaction that inserts the job) and then to settle it (the commit); every
call is committed in Postgres before it is answered. Two runs: callers calling the actor one pair
at a time each (the worst case: a Ray call per reserve and per commit), then callers sharing
`--replicas` group-commit batchers for their reserves, as the submits a Serve replica serves share
one (serve_app/services.py), and one for their commits, as the jobs the dispatcher ends do. Prints
pairs a second and the p50/p99 of a reserve call and of a commit call (issue 7's target: 1,000
pairs a second on this machine), then checks every credit was held and charged exactly once.

    .venv/bin/python bench/ledger_pairs.py [--pairs 5000] [--clients 100] [--accounts 50] [--replicas 2]

Uses the machine's Postgres and Redis when DAYGEN_TEST_DATABASE_URL / DAYGEN_TEST_REDIS_URL are
set, else embedded ones.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import ray
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.ledger import LEDGER_NAME, UsageLedger  # noqa: E402
from bench.machine import speed_line  # noqa: E402
from daygen.ids import uuid7  # noqa: E402
from daygen.runtime import start_ray  # noqa: E402
from daygen.settings import Settings  # noqa: E402
from pipelines.batching import Batcher  # noqa: E402
from pipelines.jobs import QueueAnswer  # noqa: E402
from storage import ledger  # noqa: E402
from storage.db import make_engine, make_sessionmaker  # noqa: E402
from storage.jobs import NewJob  # noqa: E402
from storage.models import LedgerEntry, User  # noqa: E402
from tests.conftest import free_port, private_database, service_urls  # noqa: E402

GRANT = Decimal(10**6)
WARM_UP_PAIRS = 500
PARAMS = {"prompt": "a pair", "width": 64, "height": 64, "seed": 1}


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


async def make_accounts(sessions, count: int) -> list[uuid.UUID]:
    accounts = [uuid7() for _ in range(count)]
    async with sessions.begin() as session:
        session.add_all(User(id=a, email=f"pairs-{a}@example.com", password_hash="!") for a in accounts)
        await session.flush()
        for account in accounts:
            await ledger.append_entry(
                session, account_id=account, kind="grant", amount=GRANT, idempotency_key=f"grant:{account}"
            )
    return accounts


async def measure(owners: list[uuid.UUID], pairs: int, clients: int, reserve, commit) -> tuple[float, list, list]:
    """Pairs a second and each reserve's and commit's milliseconds, `clients` callers in a closed loop."""
    left = pairs
    reserves: list[float] = []
    commits: list[float] = []

    async def closed_loop(index: int) -> None:
        nonlocal left
        owner = owners[index % len(owners)]
        while left > 0:
            left -= 1
            job = NewJob(uuid7(), owner, "offline.generate", "offline", PARAMS, Decimal(1))
            started = time.perf_counter()
            answer = await reserve(job)
            held = time.perf_counter()
            assert answer.outcome == "queued", answer
            settled = await commit((job.id, Decimal(1)))
            assert settled == "commit", settled
            reserves.append((held - started) * 1000)
            commits.append((time.perf_counter() - held) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(closed_loop(i) for i in range(clients)))
    return len(reserves) / (time.perf_counter() - started), reserves, commits


async def run(settings: Settings, pairs: int, clients: int, accounts: int, replicas: int) -> None:
    engine = make_engine(settings.database_url, pool_size=2)
    sessions = make_sessionmaker(engine)
    owners = await make_accounts(sessions, accounts)
    actor = UsageLedger.options(name=LEDGER_NAME).remote(settings)

    async def reserve_alone(job: NewJob) -> QueueAnswer:
        [answer] = await actor.queue.remote([job])
        return answer

    async def commit_alone(charge: tuple[uuid.UUID, Decimal]) -> ledger.Settlement | None:
        [settled] = await actor.settle.remote([charge])
        return settled

    replicas_queuing = [Batcher(actor.queue.remote, max_size=500) for _ in range(replicas)]
    dispatcher_settling = Batcher(actor.settle.remote, max_size=500)
    runs = {
        "each caller calling the actor itself, a call a reserve and a call a commit": (reserve_alone, commit_alone),
        f"callers sharing {replicas} replicas' batchers for reserves and the dispatcher's for commits": (
            lambda job: replicas_queuing[hash(job.id) % replicas](job),
            dispatcher_settling,
        ),
    }
    await measure(owners, WARM_UP_PAIRS, clients, reserve_alone, commit_alone)  # connections opened, plans made
    for name, (reserve, commit) in runs.items():
        rate, reserves, commits = await measure(owners, pairs, clients, reserve, commit)
        print(
            f"reserve + commit through the ledger actor, {clients} clients in a closed loop, {name}, "
            f"{len(reserves)} pairs: {rate:.0f} pairs/s; reserve p50 {pct(reserves, 50):.1f} ms, "
            f"p99 {pct(reserves, 99):.1f} ms; commit p50 {pct(commits, 50):.1f} ms, p99 {pct(commits, 99):.1f} ms",
            flush=True,
        )
    async with sessions() as session:
        counted = await session.execute(select(LedgerEntry.kind, func.count()).group_by(LedgerEntry.kind))
        kinds = {kind: count for kind, count in counted}
        total = sum([await ledger.balance(session, owner) for owner in owners], Decimal(0))
    held = kinds.get("reserve", 0)
    assert kinds.get("commit", 0) == held, kinds
    assert total == GRANT * len(owners) - held, "every pair charged one credit, exactly once"
    print(f"checked: {held} reservations, each committed once; balances down by exactly {held} credits")
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=100, help="callers at once: a few replicas' submits")
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=2, help="Serve replicas whose submits share a batcher each")
    args = parser.parse_args()
    print(speed_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="dgl-") as tmp:
        work = Path(tmp)
        with service_urls(work) as (admin_url, redis_url), private_database(admin_url) as url:
            settings = Settings(
                _env_file=None,
                home=work,
                database_url=url,
                redis_url=redis_url,
                redis_namespace=f"daygen-bench-{secrets.token_hex(4)}",
                jwt_secret=secrets.token_urlsafe(32),
                log_level="WARNING",
            )
            start_ray(
                temp_dir=work / "ray", dashboard=False, http_port=free_port(), num_cpus=2, object_store_bytes=200 << 20
            )
            try:
                asyncio.run(run(settings, args.pairs, args.clients, args.accounts, args.replicas))
            finally:
                ray.shutdown()


if __name__ == "__main__":
    main()
