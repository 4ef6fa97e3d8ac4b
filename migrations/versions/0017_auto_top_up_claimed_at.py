"""users.auto_top_up_claimed_at: when the pending auto top-up's fall was claimed, so a charge that
has waited longer than Stripe keeps its idempotency key is not made again under a forgotten key

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("auto_top_up_claimed_at", sa.DateTime(timezone=True), nullable=True))
    # A fall pending now counts from now: its key is younger than that, so it keeps being tried.
    op.execute("UPDATE users SET auto_top_up_claimed_at = now() WHERE auto_top_up_pending IS NOT NULL")


def downgrade() -> None:
    op.drop_column("users", "auto_top_up_claimed_at")
