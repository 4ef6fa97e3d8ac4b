"""Credit ledger queries: append-only entries, and each account's running balance beside them.

The database adds every new entry to its account's balance row in the entry's own transaction
(migration 0007), so a balance is always the sum of its entries, however they were added. A
reservation locks the balance rows it reads until it commits, so two reservations can never both
spend the last credit, whichever process makes them.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from sqlalchemy import (
    Date,
    Insert,
    Row,
    Select,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    distinct,
    func,
    literal,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from daygen.errors import InsufficientCredits
from storage.db import insert_unnested, unnest_rows
from storage.events import owners_locked
from storage.models import PIPELINE, Credits, Job, LedgerBalance, LedgerEntry, UsageRecord

Settlement = Literal["commit", "release"]


async def append_entry(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    kind: str,
    amount: Decimal,
    idempotency_key: str,
    job_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> bool:
    """Add an entry once: a retried call with the same key adds nothing and returns False."""
    row = {
        "account_id": account_id,
        "kind": kind,
        "amount": amount,
        "job_id": job_id,
        "idempotency_key": idempotency_key,
        "reason": reason,
    }
    return idempotency_key in await _insert_entries(session, [row])


async def balance(session: AsyncSession, account_id: uuid.UUID) -> Decimal:
    stmt = select(LedgerBalance.balance).where(LedgerBalance.account_id == account_id)
    return (await session.execute(stmt)).scalar_one_or_none() or Decimal(0)


_ENTRY_COLUMNS: tuple[tuple[str, TypeEngine], ...] = (
    ("account_id", PgUUID(as_uuid=True)),
    ("kind", Text()),
    ("amount", Credits),
    ("job_id", PgUUID(as_uuid=True)),
    ("idempotency_key", Text()),
    ("reason", Text()),
)


@functools.cache
def _insert_entries_statement() -> Insert:
    """New entries in one statement, so their balances are updated once; each key is added once, and
    the keys added are answered."""
    key = LedgerEntry.__table__.c.idempotency_key
    return (
        insert_unnested(LedgerEntry.__table__, _ENTRY_COLUMNS)
        .on_conflict_do_nothing(index_elements=[key])
        .returning(key)
    )


async def _insert_entries(session: AsyncSession, rows: list[dict]) -> set[str]:
    if not rows:
        return set()
    params = {name: [row[name] for row in rows] for name, _ in _ENTRY_COLUMNS}
    return set((await session.execute(_insert_entries_statement(), params)).scalars())


@dataclass(frozen=True)
class Caps:
    """Limits a reservation is judged against beside the balance; None is no limit. The credit limits
    count what the account's reservations held on the UTC day (month), less what settlements gave back
    (the balance row's counters, migration 0011); `concurrent_jobs` its queued and running jobs."""

    concurrent_jobs: int | None = None
    credits_per_day: Decimal | None = None
    credits_per_month: Decimal | None = None
    # What the job's owner may spend of a team's balance a UTC month (their member cap).
    member_credits_per_month: Decimal | None = None


NO_CAPS = Caps()


@dataclass(frozen=True)
class ProviderCaps:
    """Limits on a provider's work across every account, judged under a lock of the provider's own:
    its open jobs (those with a step still to run on it), and the credits its calls were charged on the
    UTC day (month) with those its open jobs' steps still to run hold."""

    provider: str
    concurrent_jobs: int | None = None
    credits_per_day: Decimal | None = None
    credits_per_month: Decimal | None = None

    @property
    def any(self) -> bool:
        return (self.concurrent_jobs, self.credits_per_day, self.credits_per_month) != (None, None, None)


@dataclass(frozen=True)
class ProviderShare:
    """A provider's part in a job, judged against its limits: the credits of the job's steps it runs.
    The job is one of the provider's open jobs from its submit until its last step there ran."""

    caps: ProviderCaps
    credits: Decimal

    @property
    def provider(self) -> str:
        return self.caps.provider


Refusal = Literal[
    "credits",
    "credits_per_day",
    "credits_per_month",
    "concurrent_jobs",
    "member_credits_per_month",
    "provider_concurrent_jobs",
    "provider_credits_per_day",
    "provider_credits_per_month",
]


@dataclass(frozen=True)
class Reservation:
    """Credits to hold on `account_id` for a job of `owner_id` (the account's own, or a team member's)."""

    account_id: uuid.UUID
    job_id: uuid.UUID
    amount: Decimal
    caps: Caps = NO_CAPS
    owner_id: uuid.UUID | None = None  # None: the account's own job
    provider_shares: tuple[ProviderShare, ...] = ()  # one for each of its providers with limits

    @property
    def owner(self) -> uuid.UUID:
        return self.owner_id or self.account_id


@dataclass(frozen=True)
class Reserved:
    """Whether the credits are held, and the account's balance after (or, refused, as it stands).
    Refused: why, and for a limit, what already counts against it (credits, or open jobs), and for a
    provider's limit, which provider's."""

    accepted: bool
    balance: Decimal
    repeat: bool = False  # held by an earlier call for the same job: nothing was held now
    refusal: Refusal | None = None
    used: Decimal = Decimal(0)
    provider: str | None = None


def spending_columns() -> tuple[ColumnElement[Decimal], ColumnElement[Decimal]]:
    """The credits a balance row's account spent today and this month (UTC, the transaction's): its
    counters, when they are of this day (month), else nothing."""
    today = cast(func.timezone("UTC", func.now()), Date)  # the trigger's day: the transaction's
    month = functools.partial(func.date_trunc, "month")
    nothing = literal(0, Credits)
    spent_today = case((LedgerBalance.spent_on == today, func.greatest(LedgerBalance.spent_day, 0)), else_=nothing)
    spent_this_month = case(
        (month(LedgerBalance.spent_on) == month(today), func.greatest(LedgerBalance.spent_month, 0)), else_=nothing
    )
    return spent_today.label("spent_today"), spent_this_month.label("spent_this_month")


@dataclass(frozen=True)
class Standing:
    """An account's balance, and the credits it spent today and this month (UTC)."""

    balance: Decimal = Decimal(0)
    spent_today: Decimal = Decimal(0)
    spent_this_month: Decimal = Decimal(0)


async def standing(session: AsyncSession, account_id: uuid.UUID) -> Standing:
    stmt = select(LedgerBalance.balance, *spending_columns()).where(LedgerBalance.account_id == account_id)
    row = (await session.execute(stmt)).first()
    return Standing(*row) if row is not None else Standing()


@functools.cache
def _locked_balances_statement(event_logs: bool) -> Select:
    """The accounts' balances, each row locked until commit, in one order (sorted) so two writers can't
    deadlock. A row another transaction changed meanwhile is read as that one committed it. With
    `event_logs`, the event logs of `owners` (the accounts' jobs' owners) are locked first, in the same
    statement."""
    uuids = ARRAY(PgUUID(as_uuid=True))
    accounts = bindparam("accounts", type_=uuids)
    spent_today, spent_this_month = spending_columns()
    stmt = (
        select(LedgerBalance.account_id, LedgerBalance.balance, spent_today, spent_this_month)
        .where(LedgerBalance.account_id == func.any(accounts))
        .order_by(LedgerBalance.account_id)
        .with_for_update()
    )
    if event_logs:
        owners = func.unnest(bindparam("owners", type_=uuids)).table_valued(column("owner_id", PgUUID(as_uuid=True)))
        stmt = stmt.where(owners_locked(select(owners.render_derived())) >= 0)
    return stmt


@functools.cache
def _entries_by_key_statement() -> Select:
    """The entries with the given idempotency keys, each looked up through the unique index.

    A lateral lookup per key, not `idempotency_key = ANY(keys)`: for that, with a ledger of tens
    of thousands of entries, the planner chose to read the whole ledger on every call (Postgres's
    default costs make a hundred index lookups look dearer than a sequential scan until the table is
    larger), and the reservations and settlements of a busy minute took most of Postgres's CPU."""
    wanted = unnest_rows("wanted", [("key", Text())], prefix="wanted_")
    entries = LedgerEntry.__table__
    found = (
        select(entries.c.idempotency_key, entries.c.kind, entries.c.account_id, entries.c.amount, entries.c.job_id)
        .where(entries.c.idempotency_key == wanted.c.key)
        .limit(1)  # a key is unique; the limit also keeps the planner from turning this into a join
        .lateral("found")
    )
    return select(found).select_from(wanted.join(found, true()))


async def _entries_by_key(session: AsyncSession, keys: Sequence[str]) -> dict[str, Row]:
    """The entries made under `keys` (those that exist), by key."""
    rows = await session.execute(_entries_by_key_statement(), {"wanted_key": list(keys)})
    return {row.idempotency_key: row for row in rows}


async def lock_accounts(
    session: AsyncSession, accounts: Iterable[uuid.UUID], *, event_logs: bool = False
) -> dict[uuid.UUID, Decimal]:
    """Lock the accounts' balance rows until the caller's transaction ends, as a reservation would: what
    the caller reads meanwhile about what their reservations are for can't change under it. With
    `event_logs`, their owners' event logs first (as `reserve_many`). Answers each account's balance."""
    wanted = sorted(set(accounts))
    locked = await session.execute(_locked_balances_statement(event_logs), {"accounts": wanted, "owners": wanted})
    return {account: Decimal(0) for account in wanted} | {row.account_id: row.balance for row in locked}


@dataclass
class _Account:
    """An account as a reservation judges it: its balance and what counts against its limits."""

    balance: Decimal = Decimal(0)
    spent_today: Decimal = Decimal(0)
    spent_this_month: Decimal = Decimal(0)
    open_jobs: int = 0

    def refusal(self, amount: Decimal, caps: Caps, member_spent: Decimal) -> tuple[Refusal, Decimal] | None:
        """Why a reservation of `amount` is refused, with what counts against the limit; None: it fits.
        `member_spent`: what the job's owner spent of this (a team's) account this month."""
        member_cap = caps.member_credits_per_month
        if member_cap is not None and member_spent + amount > member_cap:
            return "member_credits_per_month", member_spent
        if caps.concurrent_jobs is not None and self.open_jobs >= caps.concurrent_jobs:
            return "concurrent_jobs", Decimal(self.open_jobs)
        if caps.credits_per_day is not None and self.spent_today + amount > caps.credits_per_day:
            return "credits_per_day", self.spent_today
        if caps.credits_per_month is not None and self.spent_this_month + amount > caps.credits_per_month:
            return "credits_per_month", self.spent_this_month
        if self.balance < amount:
            return "credits", Decimal(0)
        return None

    def hold(self, amount: Decimal) -> None:
        self.balance -= amount
        self.spent_today += amount
        self.spent_this_month += amount
        self.open_jobs += 1


OPEN_JOB = ("queued", "running")


async def _open_jobs(session: AsyncSession, accounts: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Each account's queued and running jobs: a team's, or a user's own (not those charged to a team);
    through the indexes of open jobs by owner and by team."""
    wanted = func.any(bindparam("accounts", type_=ARRAY(PgUUID(as_uuid=True))))
    account = func.coalesce(Job.org_id, Job.owner_id)
    stmt = (
        select(account, func.count())
        .where(or_(Job.org_id == wanted, and_(Job.org_id.is_(None), Job.owner_id == wanted)))
        .where(Job.status.in_(OPEN_JOB))
        .group_by(account)
    )
    return {owner: count for owner, count in await session.execute(stmt, {"accounts": list(accounts)})}


@dataclass
class _Provider:
    """A provider as a reservation judges it: its open jobs and the credits they still hold, and what
    its calls were charged today and this month."""

    open_jobs: int = 0
    held: Decimal = Decimal(0)
    charged_today: Decimal = Decimal(0)
    charged_this_month: Decimal = Decimal(0)

    def refusal(self, share: ProviderShare) -> tuple[Refusal, Decimal] | None:
        caps = share.caps
        if caps.concurrent_jobs is not None and self.open_jobs >= caps.concurrent_jobs:
            return "provider_concurrent_jobs", Decimal(self.open_jobs)
        today, month = self.held + self.charged_today, self.held + self.charged_this_month
        if caps.credits_per_day is not None and today + share.credits > caps.credits_per_day:
            return "provider_credits_per_day", today
        if caps.credits_per_month is not None and month + share.credits > caps.credits_per_month:
            return "provider_credits_per_month", month
        return None

    def hold(self, share: ProviderShare) -> None:
        self.open_jobs += 1
        self.held += share.credits


@functools.cache
def _open_by_providers() -> Select:
    """Each provider's open jobs and the credits they hold there, counting the steps of every open job
    still to run: a job of one operation is one step, its provider's; a chain's steps are its params'
    (each its operation's provider, the first part of the name), those before `steps_done` ran (and
    are counted by their usage records). A chain is an open job of each provider it has steps left
    on, from its submit, not only of the one whose step is next: a provider's limit holds however
    many chains reach it at once."""
    one_step = func.jsonb_build_array(func.jsonb_build_object("provider", Job.provider, "cost", Job.cost))
    steps = case((Job.operation == PIPELINE, Job.params["steps"]), else_=one_step)
    elements = func.jsonb_array_elements(steps).table_valued(column("step", JSONB), with_ordinality="number")
    step = elements.render_derived(name="steps").lateral()
    provider = func.coalesce(step.c.step["provider"].astext, func.split_part(step.c.step["operation"].astext, ".", 1))
    return (
        select(provider, func.count(distinct(Job.id)), func.sum(step.c.step["cost"].astext.cast(Credits)))
        .select_from(Job)
        .join(step, true())
        .where(Job.status.in_(OPEN_JOB), step.c.number > Job.steps_done)
        .where(provider == func.any(bindparam("providers", type_=ARRAY(Text()))))
        .group_by(provider)
    )


async def _lock_providers(session: AsyncSession, providers: Sequence[str]) -> dict[str, _Provider]:
    """Lock the providers (until commit, in one order) and read what their limits count. The lock is
    taken after the balances', as every reservation takes them: two can't deadlock."""
    names = sorted(providers)
    locking = select(func.unnest(bindparam("providers", type_=ARRAY(Text()))).label("p")).order_by("p").subquery()
    lock = func.pg_advisory_xact_lock(func.hashtextextended(func.concat("daygen-provider:", locking.c.p), 0))
    await session.execute(select(func.count(lock)), {"providers": names})
    standing = {name: _Provider() for name in names}
    for provider, open_jobs, held in await session.execute(_open_by_providers(), {"providers": names}):
        standing[provider].open_jobs, standing[provider].held = open_jobs, held
    now_utc = func.timezone("UTC", func.now())
    day_start = func.timezone("UTC", func.date_trunc("day", now_utc))
    month_start = func.timezone("UTC", func.date_trunc("month", now_utc))
    record = UsageRecord
    charged = await session.execute(
        select(
            record.provider,
            func.coalesce(func.sum(record.credits).filter(record.created_at >= day_start), 0),
            func.coalesce(func.sum(record.credits), 0),
        )
        .where(record.provider.in_(names), record.created_at >= month_start)
        .group_by(record.provider)
    )
    for provider, today, month in charged:
        standing[provider].charged_today, standing[provider].charged_this_month = today, month
    return standing


async def _member_spending(
    session: AsyncSession, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> dict[tuple[uuid.UUID, uuid.UUID], Decimal]:
    """For each (team, member), what the member's jobs spent of the team's balance this UTC month
    (held, less what was given back)."""
    month_start = func.timezone("UTC", func.date_trunc("month", func.timezone("UTC", func.now())))
    spent: dict[tuple[uuid.UUID, uuid.UUID], Decimal] = {}
    for org, member in pairs:  # a handful a call: teams are few among a call's jobs
        stmt = (
            select(func.coalesce(-func.sum(LedgerEntry.amount), 0))
            .join(Job, Job.id == LedgerEntry.job_id)
            .where(LedgerEntry.account_id == org, LedgerEntry.created_at >= month_start)
            .where(LedgerEntry.kind.in_(("reserve", "commit", "release")), Job.owner_id == member)
        )
        spent[(org, member)] = (await session.execute(stmt)).scalar_one()
    return spent


@dataclass(frozen=True)
class Adjusted:
    """`applied` now, a `repeat` of a key applied before to the same account and amount (nothing more
    done), `key_taken` by another change, or `refused`: a revoke that would take the balance below
    zero. With the balance after (or as it stands)."""

    outcome: Literal["applied", "repeat", "key_taken", "refused"]
    balance: Decimal


async def adjust(
    session: AsyncSession, *, account_id: uuid.UUID, amount: Decimal, idempotency_key: str, reason: str
) -> Adjusted:
    """An admin's grant (amount > 0) or revoke (amount < 0) of credits, once per key, in the caller's
    transaction. A balance never goes below zero: a revoke of more than is there is refused."""
    [current] = (await lock_accounts(session, [account_id])).values()
    # Read under the lock: a repeat made meanwhile is seen.
    if earlier := (await _entries_by_key(session, [idempotency_key])).get(idempotency_key):
        same = (earlier.account_id, earlier.amount) == (account_id, amount)
        return Adjusted("repeat" if same else "key_taken", current)
    if current + amount < 0:
        return Adjusted("refused", current)
    added = await append_entry(
        session, account_id=account_id, kind="adjust", amount=amount, idempotency_key=idempotency_key, reason=reason
    )
    if not added:  # made meanwhile for an account that had no balance row to lock
        return Adjusted("repeat", current)
    return Adjusted("applied", current + amount)


async def reserve_many(
    session: AsyncSession, requests: Sequence[Reservation], *, event_logs: bool = False
) -> list[Reserved]:
    """Hold credits for many jobs at once, each judged in order against what the earlier ones left:
    the balance, and the limits each request carries (its account's, its owner's cap on a team's
    balance, its provider's), all read under the locks that keep two reservations from both taking
    the last of anything.

    Idempotent on the job id: a reservation made before is answered accepted (a repeat) and holds
    nothing more, whatever the limits say now. `event_logs`: the caller will append events of the
    jobs' owners in this transaction, so their event logs are locked first, before the balances, in
    the one order every transaction that does both keeps (`storage.events.owners_locked`).
    """
    accounts: dict[uuid.UUID, _Account] = {r.account_id: _Account() for r in requests}
    owners = sorted({r.owner for r in requests})
    locked = await session.execute(
        _locked_balances_statement(event_logs), {"accounts": sorted(accounts), "owners": owners}
    )
    for account_id, balance, spent_today, spent_this_month in locked:
        accounts[account_id] = _Account(balance, spent_today, spent_this_month)
    # Counted under the lock (a statement of its own, so it sees every job queued before the lock was had).
    if capped := sorted({r.account_id for r in requests if r.caps.concurrent_jobs is not None}):
        for owner, count in (await _open_jobs(session, capped)).items():
            accounts[owner].open_jobs = count
    capped_members = {(r.account_id, r.owner) for r in requests if r.caps.member_credits_per_month is not None}
    member_spent = await _member_spending(session, sorted(capped_members)) if capped_members else {}
    limited = {share.provider for r in requests for share in r.provider_shares}
    providers = await _lock_providers(session, sorted(limited)) if limited else {}
    keys = [f"reserve:{r.job_id}" for r in requests]
    # Read after the lock, so a repeat of a reservation that was being made meanwhile is seen.
    held = set(await _entries_by_key(session, keys))
    rows, answers = [], []
    for request, key in zip(requests, keys, strict=True):
        account = accounts[request.account_id]
        if key in held:
            answers.append(Reserved(True, account.balance, repeat=True))
            continue
        member = (request.account_id, request.owner)
        refused = account.refusal(request.amount, request.caps, member_spent.get(member, Decimal(0)))
        refused_by = None
        for share in request.provider_shares if refused is None else ():
            if (refused := providers[share.provider].refusal(share)) is not None:
                refused_by = share.provider
                break
        if refused is not None:
            answers.append(Reserved(False, account.balance, refusal=refused[0], used=refused[1], provider=refused_by))
            continue
        held.add(key)
        account.hold(request.amount)
        for share in request.provider_shares:
            providers[share.provider].hold(share)
        if member in member_spent:
            member_spent[member] += request.amount
        rows.append(
            {
                "account_id": request.account_id,
                "kind": "reserve",
                "amount": -request.amount,
                "idempotency_key": key,
                "job_id": request.job_id,
                "reason": None,
            }
        )
        answers.append(Reserved(True, account.balance))
    await _insert_entries(session, rows)
    return answers


async def reserve(session: AsyncSession, *, account_id: uuid.UUID, job_id: uuid.UUID, amount: Decimal) -> Decimal:
    """Hold `amount` for a job; returns the balance after. Idempotent on the job id."""
    [answer] = await reserve_many(session, [Reservation(account_id, job_id, amount)])
    if not answer.accepted:
        raise InsufficientCredits(
            "not enough credits for this job",
            details={"required": float(amount), "balance": float(answer.balance)},
        )
    return answer.balance


async def _settlements(session: AsyncSession, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Settlement]:
    """How each of the jobs was settled, for those that were."""
    found = await _entries_by_key(session, [f"settle:{job_id}" for job_id in job_ids])
    return {row.job_id: row.kind for row in found.values()}


@functools.cache
def _settle_statement() -> Insert:
    """Each job's settlement entry, made from its reservation in the statement that looks it up (one
    round trip): for (job_id, charged), a "commit" of what was held but not charged (nothing, when
    the whole job ran), or a "release" of everything. A job without a reservation gets nothing; one
    settled before keeps its entry (its key). Answers (job_id, kind) of the entries made."""
    entries = LedgerEntry.__table__
    wanted = unnest_rows("wanted", [("job_id", PgUUID(as_uuid=True)), ("charged", Credits)], prefix="wanted_")
    reservation = (
        select(entries.c.account_id, (-entries.c.amount).label("held"))
        .where(entries.c.idempotency_key == func.concat("reserve:", wanted.c.job_id))
        .limit(1)  # a key is unique; the limit keeps the lookup a lateral index probe (`_entries_by_key`)
        .lateral("reservation")
    )
    kept = func.least(func.greatest(wanted.c.charged, 0), reservation.c.held)
    plain = functools.partial(func.trim_scale, type_=Credits)  # 1.500 -> 1.5
    reason = case(
        (
            and_(kept > 0, kept < reservation.c.held),
            func.concat("charged ", plain(kept), " of ", plain(reservation.c.held)),
        ),
        else_=null(),
    )
    rows = select(
        reservation.c.account_id,
        case((kept > 0, "commit"), else_="release"),
        reservation.c.held - kept,
        wanted.c.job_id,
        func.concat("settle:", wanted.c.job_id),
        reason,
    ).select_from(wanted.join(reservation, true()))
    names = ["account_id", "kind", "amount", "job_id", "idempotency_key", "reason"]
    return (
        insert(entries)
        .from_select(names, rows)
        .on_conflict_do_nothing(index_elements=[entries.c.idempotency_key])
        .returning(entries.c.job_id, entries.c.kind)
    )


async def settle_many(session: AsyncSession, charges: Sequence[tuple[uuid.UUID, Decimal]]) -> list[Settlement | None]:
    """Settle jobs' reservations exactly once: for each (job id, charged), keep `charged` of it, give the rest back.

    One entry a job does it (`_settle_statement`). Answers how each job ended up settled, the first
    time or any later time; None for a job that never reserved anything. A settlement gives credits
    back, so it reads no balance: the balance rows are locked only as its entries are added to them.
    """
    if not charges:
        return []
    job_ids = [job_id for job_id, _ in charges]
    first: dict[uuid.UUID, Decimal] = {}
    for job_id, charged in charges:
        first.setdefault(job_id, charged)  # a job twice in one call: the first charge counts
    params = {"wanted_job_id": list(first), "wanted_charged": list(first.values())}
    settled: dict[uuid.UUID, Settlement] = {
        job: kind for job, kind in await session.execute(_settle_statement(), params)
    }
    # Settled before (or by a concurrent call that got in first), or never reserved: read back, for the answer.
    others = [job_id for job_id in job_ids if job_id not in settled]
    if others:
        settled.update(await _settlements(session, others))
    return [settled.get(job_id) for job_id in job_ids]


async def settle(session: AsyncSession, *, job_id: uuid.UUID, charged: Decimal) -> Settlement | None:
    """One job's `settle_many`."""
    [outcome] = await settle_many(session, [(job_id, charged)])
    return outcome


async def unsettled_finished_jobs(
    session: AsyncSession, *, ended_since: datetime | None, after: uuid.UUID | None = None, limit: int = 100
) -> list[Job]:
    """Jobs that ended at or after `ended_since` (at any time: None) but whose reservation is still
    open, a crash having hit between the two writes; in id order, after `after`.

    Each job's entries are looked up by key. Asked as `id NOT IN (every settled job)`, Postgres
    hashed the settled jobs while they fitted in its work memory and, past that, planned to read them
    all again for every ended job: 10^10 for a million jobs, every pass."""
    entry = select(LedgerEntry.id)
    reserved = entry.where(LedgerEntry.idempotency_key == func.concat("reserve:", Job.id)).exists()
    settled = entry.where(LedgerEntry.idempotency_key == func.concat("settle:", Job.id)).exists()
    stmt = select(Job).where(Job.status.in_(("succeeded", "failed", "canceled")), reserved, ~settled)
    if ended_since is not None:
        stmt = stmt.where(Job.completed_at >= ended_since)
    if after is not None:
        stmt = stmt.where(Job.id > after)
    return list((await session.execute(stmt.order_by(Job.id).limit(limit))).scalars())


@dataclass(frozen=True)
class ReservationPage:
    """A page of reservations looked at in id order: how many, the last one's id (0: none), and the
    jobs among them whose reservation nothing will ever settle."""

    looked_at: int
    last_id: int
    vanished: list[uuid.UUID]


async def vanished_reservations(
    session: AsyncSession, *, after: int, held_before: datetime, limit: int = 1000
) -> ReservationPage:
    """Among the `limit` reservations after entry `after`, those held before `held_before`, never
    settled, whose job no longer exists (deleted with its account, say): nothing else would ever give
    their credits back. A page is index lookups a reservation, so the whole ledger can be swept a
    page at a time."""
    entry = LedgerEntry.__table__.alias("reservation")
    settlement = LedgerEntry.__table__.alias("settlement")
    settled = (
        select(settlement.c.id).where(settlement.c.idempotency_key == func.concat("settle:", entry.c.job_id)).exists()
    )
    job_exists = select(Job.id).where(Job.id == entry.c.job_id).exists()
    gone = and_(entry.c.created_at < held_before, ~job_exists, ~settled)
    stmt = (
        select(entry.c.id, entry.c.job_id, gone.label("gone"))
        .where(entry.c.kind == "reserve", entry.c.id > after)
        .order_by(entry.c.id)
        .limit(limit)
    )
    rows = (await session.execute(stmt)).all()
    return ReservationPage(len(rows), rows[-1].id if rows else 0, [row.job_id for row in rows if row.gone])
