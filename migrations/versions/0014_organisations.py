"""organisations: teams whose members' jobs are charged to the team's own balance, each member with
an optional cap on what they may spend of it a month; jobs and usage records name their team

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organisations",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("plan", sa.Text(), server_default="free", nullable=False),
        sa.Column("limits", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organisations")),
    )
    op.create_table(
        "org_members",
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("credits_per_month", sa.Numeric(14, 3), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("role IN ('owner', 'member')", name=op.f("ck_org_members_role_known")),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_org_members_org_id_organisations"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_org_members_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("org_id", "user_id", name=op.f("pk_org_members")),
    )
    op.create_index("ix_org_members_user_id", "org_members", ["user_id"])
    op.add_column("jobs", sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.create_index("ix_jobs_org_open", "jobs", ["org_id"], postgresql_where=sa.text("status IN ('queued', 'running')"))
    op.add_column("usage_records", sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.create_index("ix_usage_records_org_id_created_at", "usage_records", ["org_id", "created_at"])
    # What a member spent of the team's balance this month: the team's entries of the month, by job.
    op.create_index("ix_ledger_entries_account_id_created_at", "ledger_entries", ["account_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_ledger_entries_account_id_created_at", table_name="ledger_entries")
    op.drop_index("ix_usage_records_org_id_created_at", table_name="usage_records")
    op.drop_column("usage_records", "org_id")
    op.drop_index("ix_jobs_org_open", table_name="jobs")
    op.drop_column("jobs", "org_id")
    op.drop_index("ix_org_members_user_id", table_name="org_members")
    op.drop_table("org_members")
    op.drop_table("organisations")
