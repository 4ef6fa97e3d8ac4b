"""Monthly plan allowances on the real Postgres, on a clock the tests set: granted once a month,
spent before credits bought, and what is left of one expiring at the next month."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select, update

from daygen.ids import uuid7
from storage import allowances, ledger, orgs
from storage.models import LedgerEntry, Organisation, User
from tests.integration.test_account_limits import account as new_account

ALLOWANCES = {"free": Decimal(0), "plus": Decimal(200), "pro": Decimal(1000)}
JANUARY = datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC)
FEBRUARY = datetime(2027, 2, 1, 0, 0, 5, tzinfo=UTC)
MARCH = datetime(2027, 3, 1, 0, 0, 5, tzinfo=UTC)
APRIL = datetime(2027, 4, 1, 0, 0, 5, tzinfo=UTC)


async def account(sessions, plan: str, bought: int = 0) -> uuid.UUID:
    return await new_account(sessions, bought, plan)


async def spend(sessions, owner: uuid.UUID, amount: int) -> None:
    """Credits a job held and kept."""
    job = uuid7()
    async with sessions.begin() as session:
        await ledger.reserve(session, account_id=owner, job_id=job, amount=Decimal(amount))
        await ledger.settle(session, job_id=job, charged=Decimal(amount))


async def balance(sessions, owner: uuid.UUID) -> Decimal:
    async with sessions() as session:
        return await ledger.balance(session, owner)


async def entries(sessions, owner: uuid.UUID) -> list[tuple[str, Decimal, str]]:
    async with sessions() as session:
        rows = await session.execute(
            select(LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.idempotency_key)
            .where(LedgerEntry.account_id == owner, LedgerEntry.kind.in_(("reset", "expire")))
            .order_by(LedgerEntry.id)
        )
        return [(kind, amount, key) for kind, amount, key in rows]


async def reset(sessions, now: datetime) -> dict[uuid.UUID, allowances.Reset]:
    return {r.account_id: r for r in await allowances.reset_due(sessions, ALLOWANCES, now)}


async def test_the_allowance_is_spent_first_and_only_what_is_left_of_it_expires(sessions):
    owner = await account(sessions, "plus", bought=100)  # 100 bought credits never expire
    january = await reset(sessions, JANUARY)
    assert january[owner] == allowances.Reset(owner, "2027-01", Decimal(200), Decimal(0))
    assert await balance(sessions, owner) == 300
    await spend(sessions, owner, 50)  # from the allowance
    february = await reset(sessions, FEBRUARY)
    assert february[owner].expired == 150  # the allowance's 150 left; the 100 bought stay
    assert await balance(sessions, owner) == 100 + 200
    await spend(sessions, owner, 250)  # all of February's allowance, then 50 of the bought
    march = await reset(sessions, MARCH)
    assert march[owner].expired == 0
    assert await balance(sessions, owner) == 50 + 200
    keys = [key for _, _, key in await entries(sessions, owner)]
    assert keys == [
        f"reset:{owner}:2027-01",
        f"reset:{owner}:2027-02",
        f"expire:{owner}:2027-02",
        f"reset:{owner}:2027-03",
    ]


async def test_a_month_is_reset_once_however_often_and_however_many_at_once(sessions):
    owner = await account(sessions, "pro")
    results = await asyncio.gather(*(reset(sessions, JANUARY) for _ in range(5)))
    assert sum(owner in r for r in results) == 1
    assert owner not in await reset(sessions, datetime(2027, 1, 31, 23, 59, 59, tzinfo=UTC))
    assert await balance(sessions, owner) == 1000
    assert [(k, a) for k, a, _ in await entries(sessions, owner)] == [("reset", Decimal(1000))]


async def test_a_reset_takes_the_month_in_utc(sessions):
    owner = await account(sessions, "plus")
    # 23:30 on 31 January in New York is already February in UTC.
    late_january_new_york = datetime.fromisoformat("2027-01-31T23:30:00-05:00")
    assert (await reset(sessions, late_january_new_york))[owner].period == "2027-02"


async def test_accounts_without_an_allowance_get_no_entries_and_a_downgraded_one_loses_what_is_left(sessions):
    free = await account(sessions, "free", bought=20)
    downgraded = await account(sessions, "plus")
    await reset(sessions, JANUARY)
    assert await entries(sessions, free) == []
    await spend(sessions, downgraded, 30)
    async with sessions.begin() as session:
        await session.execute(update(User).where(User.id == downgraded).values(plan="free"))
    february = await reset(sessions, FEBRUARY)
    assert free not in february
    assert february[downgraded] == allowances.Reset(downgraded, "2027-02", Decimal(0), Decimal(170))
    assert await balance(sessions, downgraded) == 0
    assert downgraded not in await reset(sessions, MARCH)  # nothing left to expire: no more entries
    assert len(await entries(sessions, downgraded)) == 3


async def test_credits_held_over_a_month_end_count_as_spent_and_expire_later_if_given_back(sessions):
    owner = await account(sessions, "plus", bought=100)
    await reset(sessions, JANUARY)
    held = uuid7()
    async with sessions.begin() as session:  # a job holds 180 of January's allowance at the month's end
        await ledger.reserve(session, account_id=owner, job_id=held, amount=Decimal(180))
    february = await reset(sessions, FEBRUARY)
    assert february[owner].expired == 20
    assert await balance(sessions, owner) == 100 + 200
    async with sessions.begin() as session:  # it failed: January's 180 come back, to spend in February
        await ledger.settle(session, job_id=held, charged=Decimal(0))
    assert await balance(sessions, owner) == 100 + 200 + 180
    march = await reset(sessions, MARCH)
    assert march[owner].expired == 380  # allowance never carries over; the 100 bought stay
    assert await balance(sessions, owner) == 100 + 200
    assert (await reset(sessions, APRIL))[owner].expired == 200
    assert await balance(sessions, owner) == 100 + 200


async def test_what_expires_is_never_more_than_the_balance(sessions):
    owner = await account(sessions, "plus")
    await reset(sessions, JANUARY)
    async with sessions.begin() as session:  # an admin took 150 back
        key = f"refund:{owner}"
        await ledger.adjust(session, account_id=owner, amount=Decimal(-150), idempotency_key=key, reason="refund")
    assert (await reset(sessions, FEBRUARY))[owner].expired == 50
    assert await balance(sessions, owner) == 200


async def test_an_account_is_looked_at_again_when_a_month_begins_or_its_plan_changes(sessions):
    owner = await account(sessions, "free", bought=20)
    assert owner not in await reset(sessions, JANUARY)
    # Moved to a plan with an allowance mid-month: the next pass grants this month's.
    async with sessions.begin() as session:
        await session.execute(update(User).where(User.id == owner).values(plan="plus"))
    mid_january = datetime(2027, 1, 15, tzinfo=UTC)
    assert (await reset(sessions, mid_january))[owner] == allowances.Reset(owner, "2027-01", Decimal(200), Decimal(0))
    assert owner not in await reset(sessions, mid_january)
    assert (await reset(sessions, FEBRUARY))[owner].granted == 200
    assert await balance(sessions, owner) == 20 + 200


async def test_a_teams_plan_change_is_seen_by_the_next_pass(sessions):
    owner = await account(sessions, "free")
    async with sessions.begin() as session:
        team = (await orgs.create_org(session, name="Studio", owner_id=owner, plan="free")).org
    assert team.id not in await reset(sessions, JANUARY)
    async with sessions.begin() as session:
        await session.execute(update(Organisation).where(Organisation.id == team.id).values(plan="pro"))
    assert (await reset(sessions, JANUARY))[team.id].granted == 1000
    assert await balance(sessions, team.id) == 1000
