"""The Postgres schema as SQLAlchemy models; Alembic migrations in migrations/ create it."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from daygen.ids import uuid7

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
# A banned account is refused on every authenticated call; a throttled one has lowered limits.
USER_STATUSES = ("active", "throttled", "banned")
ADMIN_ACTIONS = ("credits", "ban", "unban", "throttle", "unthrottle", "plan", "limits")
USAGE_STATUSES = ("succeeded", "failed")
LEDGER_KINDS = ("grant", "topup", "reserve", "commit", "release", "reset", "expire", "adjust")
Credits = Numeric(14, 3)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid7)


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("email = lower(btrim(email))", name="email_normalised"),
        CheckConstraint(f"status IN {USER_STATUSES}", name="status_known"),
        Index("ix_users_auto_top_up", "id", postgresql_where=text("auto_top_up_pack IS NOT NULL")),
        Index("ix_users_allowance_due", "allowance_due_from", postgresql_where=text("allowance_due_from IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = _id()
    email: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(Text, nullable=False)
    display_name: Mapped[str | None] = mapped_column(Text)
    profile_image: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text, nullable=False, default="user")
    status: Mapped[str] = mapped_column(Text, nullable=False, default="active", server_default="active")
    # A plan of configs/billing.yaml: its monthly allowance and its default limits.
    plan: Mapped[str] = mapped_column(Text, nullable=False, default="free", server_default="free")
    # The month ("2027-01") from which the account next needs its allowance reset; "" now, None never
    # (until the plan changes: a trigger marks it due then, and when the account is made).
    allowance_due_from: Mapped[str | None] = mapped_column(Text(collation="C"))
    # When the Stripe event that last set `plan` was made: an older one delivered later changes nothing.
    plan_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Stripe's customer for the account, made when it saved a card at checkout (auto top-up charges it).
    stripe_customer_id: Mapped[str | None] = mapped_column(Text)
    # Auto top-up: `pack` is bought off-session when the balance falls under `threshold` (no pack: off).
    # Armed while the balance is at or over the threshold; each fall under it is one crossing, charged
    # once (`pending` holds the crossing being charged, its number the charge's idempotency key;
    # `claimed_at` when it was claimed, to stop trying once Stripe may have forgotten that key).
    auto_top_up_pack: Mapped[str | None] = mapped_column(Text)
    auto_top_up_threshold: Mapped[Decimal | None] = mapped_column(Credits)
    auto_top_up_armed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True, server_default="true")
    auto_top_up_crossings: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    auto_top_up_pending: Mapped[int | None] = mapped_column(Integer)
    auto_top_up_claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # An admin's overrides of the plan's limits (pipelines.limits.Limits fields), None for none.
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Standard Webhooks signing secret (`whsec_...`), made on first use; after a rotation the
    # previous one still signs deliveries alongside it until `webhook_secret_previous_until`.
    webhook_secret: Mapped[str | None] = mapped_column(Text)
    webhook_secret_previous: Mapped[str | None] = mapped_column(Text)
    webhook_secret_previous_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    @property
    def banned(self) -> bool:
        return self.status == "banned"

    @property
    def throttled(self) -> bool:
        return self.status == "throttled"


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (Index("ix_templates_owner_id_id", "owner_id", "id"),)

    id: Mapped[uuid.UUID] = _id()
    owner_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(Text, nullable=False)
    modality: Mapped[str] = mapped_column(Text, nullable=False)
    category: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


# A chain's operation: its steps are its params' `steps`, each `{operation, params, input, cost}`.
PIPELINE = "pipeline"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        CheckConstraint(f"status IN {JOB_STATUSES}", name="status_known"),
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress_range"),
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
        Index("ix_jobs_claimable", "status", "lease_expires_at"),
        Index(
            "ix_jobs_provider_open",
            "provider",
            "owner_id",
            "id",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # An owner's (a team's) open jobs: counted by a submit under a concurrency limit.
        Index("ix_jobs_owner_open", "owner_id", postgresql_where=text("status IN ('queued', 'running')")),
        Index("ix_jobs_org_open", "org_id", postgresql_where=text("status IN ('queued', 'running')")),
        # What ended since a time: the dispatcher's reconciliation passes.
        Index("ix_jobs_completed_at", "completed_at", postgresql_where=text("completed_at IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = _id()
    owner_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    operation: Mapped[str] = mapped_column(Text, nullable=False)
    # The team whose balance pays for the job (its owner a member), None for the owner's own.
    org_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The provider of the next step to run: whose pool claims the job and counts it as queued.
    provider: Mapped[str] = mapped_column(Text, nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    inputs: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, nullable=False, default="queued")
    progress: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    steps_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    cost: Mapped[Decimal] = mapped_column(Credits, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error_code: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Asset(Base):
    __tablename__ = "assets"
    __table_args__ = (
        CheckConstraint("source IN ('upload', 'job')", name="source_known"),
        Index("ix_assets_owner_id_id", "owner_id", "id"),
        Index("ix_assets_key", "key"),
    )

    id: Mapped[uuid.UUID] = _id()
    owner_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    key: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str] = mapped_column(Text, nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    content_type: Mapped[str] = mapped_column(Text, nullable=False)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="SET NULL"))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class LedgerEntry(Base):
    """Append-only: rows are never updated or deleted, and a balance is the sum of its account's entries."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint(f"kind IN {LEDGER_KINDS}", name="kind_known"),
        Index("ix_ledger_entries_account_id", "account_id"),
        Index("ix_ledger_entries_job_id", "job_id"),
        # An account's entries by time: what a team's member spent of it this month.
        Index("ix_ledger_entries_account_id_created_at", "account_id", "created_at"),
        # Each account's allowance resets, latest first (storage/allowances.py).
        Index("ix_ledger_entries_resets", "account_id", "id", postgresql_where=text("kind = 'reset'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    amount: Mapped[Decimal] = mapped_column(Credits, nullable=False)
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    idempotency_key: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()


class LedgerBalance(Base):
    """An account's running balance: the database adds each new entry to it in the entry's own
    transaction (a trigger, migration 0007), so a reservation reads one row, not the account's history."""

    __tablename__ = "ledger_balances"

    account_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    balance: Mapped[Decimal] = mapped_column(Credits, nullable=False)
    # Credits spent (reserved, less what settlements gave back) on the UTC day `spent_on` and in its
    # month; the trigger starts them again when the day or month changes (migration 0011).
    spent_on: Mapped[date] = mapped_column(
        Date, nullable=False, server_default=text("(now() AT TIME ZONE 'UTC')::date")
    )
    spent_day: Mapped[Decimal] = mapped_column(Credits, nullable=False, server_default="0")
    spent_month: Mapped[Decimal] = mapped_column(Credits, nullable=False, server_default="0")
    updated_at: Mapped[datetime] = _now()


class JobEvent(Base):
    """The durable log of job changes, written in the transaction of the change it records.

    Ids are ordered per owner (writers take a per-owner lock), so "everything after id N" is
    complete once N has been seen: what a reconnecting client replays.
    """

    __tablename__ = "job_events"
    __table_args__ = (
        Index("ix_job_events_job_id_id", "job_id", "id"),
        Index("ix_job_events_owner_id_id", "owner_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    owner_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    type: Mapped[str] = mapped_column(Text, nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _now()


WEBHOOK_DELIVERY_STATUSES = ("pending", "delivering", "succeeded", "failed")


class WebhookEndpoint(Base):
    """An account-level receiver of job events (`/v1/webhooks`)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_owner_id_id", "owner_id", "id"),)

    id: Mapped[uuid.UUID] = _id()
    owner_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    url: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class WebhookDelivery(Base):
    """One event for one receiver (an endpoint, or a job's own `webhookUrl`): an outbox row written
    in the transaction of the event, then sent, retried on a schedule, and logged here."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(f"status IN {WEBHOOK_DELIVERY_STATUSES}", name="status_known"),
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
        Index(
            "ux_webhook_deliveries_job_url_event",
            "event_id",
            unique=True,
            postgresql_where=text("endpoint_id IS NULL"),
        ),
        Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_job_id", "job_id"),
    )

    id: Mapped[uuid.UUID] = _id()  # also the `webhook-id` header: the same on every retry
    owner_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    url: Mapped[str | None] = mapped_column(Text)  # a job's own webhookUrl; None for an endpoint's
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    event_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    event_type: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime] = _now()
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_response: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AdminAction(Base):
    """The audit log: who did what to whom, when and why. Append-only (a trigger refuses edits and
    deletions); no foreign keys, so it outlives the accounts it names."""

    __tablename__ = "admin_actions"
    __table_args__ = (
        CheckConstraint(f"action IN {ADMIN_ACTIONS}", name="action_known"),
        Index("ix_admin_actions_user_id_id", "user_id", "id"),
    )

    id: Mapped[uuid.UUID] = _id()
    admin_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    admin_email: Mapped[str] = mapped_column(Text, nullable=False)
    action: Mapped[str] = mapped_column(Text, nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _now()


class UsageRecord(Base):
    """One provider call a job made (one step): who, what, how much it used and cost. Written in the
    transaction that records the step's end, once per step; no foreign keys, so reports outlive jobs."""

    __tablename__ = "usage_records"
    __table_args__ = (
        CheckConstraint(f"status IN {USAGE_STATUSES}", name="status_known"),
        UniqueConstraint("job_id", "step"),
        Index("ix_usage_records_created_at", "created_at"),
        Index("ix_usage_records_user_id_created_at", "user_id", "created_at"),
        Index("ix_usage_records_org_id_created_at", "org_id", "created_at"),
        Index("ix_usage_records_provider_created_at", "provider", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    org_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))  # the team the job was charged to
    provider: Mapped[str] = mapped_column(Text, nullable=False)
    operation: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    images: Mapped[int] = mapped_column(Integer, nullable=False)
    upstream_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    credits: Mapped[Decimal] = mapped_column(Credits, nullable=False)
    provider_cost: Mapped[Decimal] = mapped_column(Numeric(14, 6), nullable=False)
    created_at: Mapped[datetime] = _now()


ORG_ROLES = ("owner", "member")


class Organisation(Base):
    """A team: its own balance (a ledger account with the team's id), plan and limits, paid for by its
    members' jobs."""

    __tablename__ = "organisations"
    __table_args__ = (
        Index(
            "ix_organisations_allowance_due",
            "allowance_due_from",
            postgresql_where=text("allowance_due_from IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(Text, nullable=False)
    plan: Mapped[str] = mapped_column(Text, nullable=False, default="free", server_default="free")
    # The month ("2027-01") from which the account next needs its allowance reset; "" now, None never
    # (until the plan changes: a trigger marks it due then, and when the account is made).
    allowance_due_from: Mapped[str | None] = mapped_column(Text(collation="C"))
    plan_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # as `User.plan_event_at`
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()


class OrgMember(Base):
    """A user in a team: owners manage it; `credits_per_month` caps what a member's jobs may spend of the
    team's balance in a UTC month (None: no cap)."""

    __tablename__ = "org_members"
    __table_args__ = (
        CheckConstraint(f"role IN {ORG_ROLES}", name="role_known"),
        Index("ix_org_members_user_id", "user_id"),
    )

    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(Text, nullable=False)
    credits_per_month: Mapped[Decimal | None] = mapped_column(Credits)
    created_at: Mapped[datetime] = _now()
