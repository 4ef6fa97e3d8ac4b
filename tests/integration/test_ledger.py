"""Ledger arithmetic on the real Postgres: reservations, settlement exactly once, no overspending."""

from __future__ import annotations

import asyncio
import functools
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from daygen.errors import InsufficientCredits
from storage import ledger
from storage.db import make_engine, make_sessionmaker
from storage.models import LedgerEntry
from tests.conftest import private_database
from tests.integration.test_job_lifecycle import someone_waits_for
from tests.integration.test_shared_limits import eventually


async def funded_account(sessions, amount: Decimal) -> uuid.UUID:
    account = uuid.uuid4()
    async with sessions.begin() as session:
        await ledger.append_entry(
            session, account_id=account, kind="grant", amount=amount, idempotency_key=f"grant:{account}"
        )
    return account


async def balance(sessions, account: uuid.UUID) -> Decimal:
    async with sessions() as session:
        return await ledger.balance(session, account)


async def test_reserving_twice_for_one_job_holds_the_credit_once(sessions):
    account = await funded_account(sessions, Decimal(5))
    job = uuid.uuid4()
    for _ in range(2):
        async with sessions.begin() as session:
            await ledger.reserve(session, account_id=account, job_id=job, amount=Decimal(2))
    assert await balance(sessions, account) == 3


async def test_reservation_beyond_the_balance_is_refused_with_the_numbers(sessions):
    account = await funded_account(sessions, Decimal(1))
    async with sessions.begin() as session:
        with pytest.raises(InsufficientCredits) as exc:
            await ledger.reserve(session, account_id=account, job_id=uuid.uuid4(), amount=Decimal(2))
    assert exc.value.details == {"required": 2.0, "balance": 1.0}
    assert await balance(sessions, account) == 1


async def test_commit_then_release_settles_once_as_commit(sessions):
    account = await funded_account(sessions, Decimal(3))
    job = uuid.uuid4()
    async with sessions.begin() as session:
        await ledger.reserve(session, account_id=account, job_id=job, amount=Decimal(1))
    async with sessions.begin() as session:
        assert await ledger.settle(session, job_id=job, charged=Decimal(1)) == "commit"
    async with sessions.begin() as session:
        assert await ledger.settle(session, job_id=job, charged=Decimal(0)) == "commit"
    assert await balance(sessions, account) == 2


async def test_release_gives_the_credit_back_exactly_once(sessions):
    account = await funded_account(sessions, Decimal(3))
    job = uuid.uuid4()
    async with sessions.begin() as session:
        await ledger.reserve(session, account_id=account, job_id=job, amount=Decimal("1.5"))
    for _ in range(3):
        async with sessions.begin() as session:
            await ledger.settle(session, job_id=job, charged=Decimal(0))
    assert await balance(sessions, account) == 3
    async with sessions() as session:
        count = await session.scalar(select(func.count()).where(LedgerEntry.job_id == job))
    assert count == 2


async def test_settling_a_job_that_never_reserved_does_nothing(sessions):
    async with sessions.begin() as session:
        assert await ledger.settle(session, job_id=uuid.uuid4(), charged=Decimal(1)) is None


async def test_thirty_concurrent_reservations_against_ten_credits_accept_exactly_ten(sessions):
    account = await funded_account(sessions, Decimal(10))

    async def attempt() -> bool:
        try:
            async with sessions.begin() as session:
                await ledger.reserve(session, account_id=account, job_id=uuid.uuid4(), amount=Decimal(1))
            return True
        except InsufficientCredits:
            return False

    results = await asyncio.gather(*(attempt() for _ in range(30)))
    assert results.count(True) == 10
    assert await balance(sessions, account) == 0


async def test_the_database_refuses_to_edit_or_delete_ledger_entries(sessions):
    account = await funded_account(sessions, Decimal(1))
    for statement in (
        update(LedgerEntry).where(LedgerEntry.account_id == account).values(amount=Decimal(1000)),
        delete(LedgerEntry).where(LedgerEntry.account_id == account),
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with sessions.begin() as session:
                await session.execute(statement)
    assert await balance(sessions, account) == 1


async def test_a_partial_charge_keeps_what_ran_and_gives_back_the_rest_once(sessions):
    account = await funded_account(sessions, Decimal(5))
    job = uuid.uuid4()
    async with sessions.begin() as session:
        await ledger.reserve(session, account_id=account, job_id=job, amount=Decimal(4))
    for _ in range(2):
        async with sessions.begin() as session:
            assert await ledger.settle(session, job_id=job, charged=Decimal("1.5")) == "commit"
    assert await balance(sessions, account) == Decimal("3.5")
    async with sessions() as session:
        reason = await session.scalar(select(LedgerEntry.reason).where(LedgerEntry.idempotency_key == f"settle:{job}"))
    assert reason == "charged 1.5 of 4"


async def test_settling_many_jobs_in_one_call_answers_each_and_writes_one_entry_a_job(sessions):
    account = await funded_account(sessions, Decimal(10))
    full, partial, released, before, never = (uuid.uuid4() for _ in range(5))
    async with sessions.begin() as session:
        for job in (full, partial, released, before):
            await ledger.reserve(session, account_id=account, job_id=job, amount=Decimal(2))
        assert await ledger.settle(session, job_id=before, charged=Decimal(2)) == "commit"
    charges = [
        (full, Decimal(2)),
        (partial, Decimal("0.5")),
        (released, Decimal(0)),
        (before, Decimal(0)),  # settled already: stays as it was
        (never, Decimal(1)),  # never reserved anything
        (partial, Decimal(2)),  # twice in one call: the first counts
    ]
    async with sessions.begin() as session:
        answers = await ledger.settle_many(session, charges)
    assert answers == ["commit", "commit", "release", "commit", None, "commit"]
    # 10 granted: 2 + 0.5 + 0 + 2 kept, the rest given back
    assert await balance(sessions, account) == Decimal("5.5") == await sum_of_entries(sessions, account)
    async with sessions() as session:
        found = await session.execute(
            select(LedgerEntry.job_id, LedgerEntry.amount).where(
                LedgerEntry.account_id == account, LedgerEntry.kind.in_(("commit", "release"))
            )
        )
        settlements = {job_id: amount for job_id, amount in found}
    assert settlements == {full: 0, partial: Decimal("1.5"), released: 2, before: 0}


async def test_two_settlements_of_one_job_at_once_write_one_entry_and_both_answer_with_it(sessions):
    """Settling takes no account lock (it only gives credits back): the one that gets in second finds
    the first's entry by its key, adds nothing, and answers with how the job was really settled."""
    account = await funded_account(sessions, Decimal(3))
    job = uuid.uuid4()
    async with sessions.begin() as session:
        await ledger.reserve(session, account_id=account, job_id=job, amount=Decimal(2))

    async def release() -> str | None:
        async with sessions.begin() as session:
            return await ledger.settle(session, job_id=job, charged=Decimal(0))

    async with sessions() as first:
        assert await ledger.settle(first, job_id=job, charged=Decimal(2)) == "commit"
        second = asyncio.create_task(release())
        await eventually(functools.partial(someone_waits_for, first))
        await first.commit()
    assert await second == "commit"
    assert await balance(sessions, account) == 1
    async with sessions() as session:
        entries = await session.scalar(select(func.count()).where(LedgerEntry.job_id == job))
    assert entries == 2  # the reservation and one settlement


async def sum_of_entries(sessions, account: uuid.UUID) -> Decimal:
    async with sessions() as session:
        total = await session.scalar(select(func.sum(LedgerEntry.amount)).where(LedgerEntry.account_id == account))
    return total or Decimal(0)


async def test_balances_stay_the_sums_of_their_entries_while_reservations_settlements_and_grants_race(sessions):
    """Batches over several accounts in every order at once: each balance is still the sum of its
    entries, none went below zero, and no two writers deadlocked (that would raise here)."""
    accounts = [await funded_account(sessions, Decimal(30)) for _ in range(3)]
    rng = random.Random(7)
    reserved: list[uuid.UUID] = []

    async def reserve_batch() -> None:
        batch = [
            ledger.Reservation(rng.choice(accounts), uuid.uuid4(), rng.choice([Decimal(1), Decimal(2), Decimal("0.5")]))
            for _ in range(6)
        ]
        async with sessions.begin() as session:
            answers = await ledger.reserve_many(session, batch)
        reserved.extend(r.job_id for r, answer in zip(batch, answers, strict=True) if answer.accepted)

    async def settle_batch(jobs: list[uuid.UUID]) -> None:
        async with sessions.begin() as session:
            await ledger.settle_many(session, [(job, rng.choice([Decimal(0), Decimal(1)])) for job in jobs])

    async def grant(account: uuid.UUID) -> None:
        async with sessions.begin() as session:
            await ledger.append_entry(
                session, account_id=account, kind="grant", amount=Decimal(3), idempotency_key=f"grant:{uuid.uuid4()}"
            )

    await asyncio.gather(*(reserve_batch() for _ in range(12)))
    earlier = list(reserved)
    rng.shuffle(earlier)
    await asyncio.gather(
        *(settle_batch(earlier[i : i + 5]) for i in range(0, len(earlier), 5)),
        *(reserve_batch() for _ in range(12)),
        *(grant(account) for account in accounts * 2),
    )
    assert len(reserved) > len(earlier) > 0
    for account in accounts:
        assert await balance(sessions, account) == await sum_of_entries(sessions, account)
        assert await balance(sessions, account) >= 0


async def test_an_account_with_no_entries_has_a_balance_of_zero_and_can_reserve_nothing(sessions):
    account = uuid.uuid4()
    assert await balance(sessions, account) == 0
    async with sessions.begin() as session:
        with pytest.raises(InsufficientCredits):
            await ledger.reserve(session, account_id=account, job_id=uuid.uuid4(), amount=Decimal("0.5"))
    assert await sum_of_entries(sessions, account) == 0


@pytest.fixture(scope="module")
def own_database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """A database whose ledger holds only what the test puts in it."""
    with private_database(server_urls[0]) as url:
        yield url


@pytest.fixture
async def own_sessions(own_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(own_database_url.replace("postgresql://", "postgresql+asyncpg://"), pool_size=2)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def ledger_rows_scanned(session: AsyncSession) -> int:
    """Ledger rows this transaction has read by sequential scan so far."""
    query = text("SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_xact_user_tables WHERE relname = 'ledger_entries'")
    return (await session.execute(query)).scalar_one()


async def test_reserving_and_settling_look_up_their_own_entries_not_the_whole_ledger(own_sessions):
    """With 5,000 past jobs in the ledger, reserving and settling 100 new ones reads none of the
    others' entries: each is found by its key. (Asked as `key = ANY(keys)`, Postgres chose to read the
    whole ledger for every reservation and settlement of a ledger this size.)"""
    account = await funded_account(own_sessions, Decimal(10_000))
    async with own_sessions.begin() as session:
        await session.execute(
            text(
                "INSERT INTO ledger_entries (account_id, kind, amount, job_id, idempotency_key) "
                "SELECT :account, kind, amount, job, key || ':' || job "
                "FROM (SELECT gen_random_uuid() AS job FROM generate_series(1, 5000)) AS past, "
                "(VALUES ('reserve', 'reserve', -1), ('release', 'settle', 1)) AS entry(kind, key, amount)"
            ).bindparams(account=account)
        )
    jobs = [uuid.uuid4() for _ in range(100)]
    async with own_sessions.begin() as session:
        answers = await ledger.reserve_many(session, [ledger.Reservation(account, job, Decimal(1)) for job in jobs])
        assert await ledger_rows_scanned(session) == 0
    assert all(answer.accepted for answer in answers)
    async with own_sessions.begin() as session:
        settled = await ledger.settle_many(session, [(job, Decimal(1)) for job in jobs])
        assert await ledger_rows_scanned(session) == 0
    assert settled == ["commit"] * 100
    assert await balance(own_sessions, account) == 10_000 - 100


async def test_an_adjustment_applies_once_per_key_even_sent_at_once_to_an_account_without_history(sessions):
    """A new account has no balance row to lock: the key's unique index is what keeps a repeat out."""
    account = uuid.uuid4()

    async def adjust(amount: Decimal) -> ledger.Adjusted:
        async with sessions.begin() as session:
            return await ledger.adjust(
                session, account_id=account, amount=amount, idempotency_key=f"adjust:{account}", reason="grant"
            )

    outcomes = await asyncio.gather(*(adjust(Decimal(5)) for _ in range(8)))
    assert sorted(o.outcome for o in outcomes) == ["applied"] + ["repeat"] * 7
    assert (await adjust(Decimal(6))).outcome == "key_taken"
    async with sessions() as session:
        assert await ledger.balance(session, account) == 5


async def test_a_revoke_never_takes_a_balance_below_zero(sessions):
    account = uuid.uuid4()
    async with sessions.begin() as session:
        await ledger.append_entry(
            session, account_id=account, kind="grant", amount=Decimal(3), idempotency_key=f"g:{account}"
        )

    async def revoke(key: str) -> ledger.Adjusted:
        async with sessions.begin() as session:
            return await ledger.adjust(session, account_id=account, amount=Decimal(-2), idempotency_key=key, reason="x")

    outcomes = await asyncio.gather(*(revoke(f"revoke:{account}:{i}") for i in range(4)))
    assert sorted(o.outcome for o in outcomes) == ["applied", "refused", "refused", "refused"]
    async with sessions() as session:
        assert await ledger.balance(session, account) == 1
