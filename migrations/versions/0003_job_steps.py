"""job steps: how many steps of a job have finished, so a retried job resumes after them

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("steps_done", sa.Integer(), server_default="0", nullable=False))
    op.execute("UPDATE jobs SET steps_done = 1 WHERE status = 'succeeded'")


def downgrade() -> None:
    op.drop_column("jobs", "steps_done")
