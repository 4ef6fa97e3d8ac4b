"""job provider: which pool runs the job's next step, for per-provider claims and queue depth

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("provider", sa.Text(), nullable=True))
    op.execute(
        """
        UPDATE jobs SET provider = split_part(
            CASE WHEN operation = 'pipeline'
                 THEN coalesce(params->'steps'->steps_done->>'operation', params->'steps'->0->>'operation')
                 ELSE operation END,
            '.', 1)
        """
    )
    op.alter_column("jobs", "provider", nullable=False)
    op.create_index(
        "ix_jobs_provider_open",
        "jobs",
        ["provider", "owner_id", "id"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_provider_open", table_name="jobs")
    op.drop_column("jobs", "provider")
