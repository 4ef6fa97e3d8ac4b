"""usage_records by provider and time: what a provider's calls were charged today and this month,
which a provider's credit limits count

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_usage_records_provider_created_at", "usage_records", ["provider", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_provider_created_at", table_name="usage_records")
