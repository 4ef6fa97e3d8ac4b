"""jobs completed_at index: reconciliation passes look at what ended since the last one

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_completed_at", "jobs", ["completed_at"], postgresql_where=sa.text("completed_at IS NOT NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_completed_at", table_name="jobs")
