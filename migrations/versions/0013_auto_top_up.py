"""auto top-up: each account's Stripe customer (a card saved at checkout), and its auto top-up: the
pack bought off-session when the balance falls under the threshold, once per time it falls

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("stripe_customer_id", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("auto_top_up_pack", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("auto_top_up_threshold", sa.Numeric(14, 3), nullable=True))
    op.add_column("users", sa.Column("auto_top_up_armed", sa.Boolean(), server_default="true", nullable=False))
    op.add_column("users", sa.Column("auto_top_up_crossings", sa.Integer(), server_default="0", nullable=False))
    op.add_column("users", sa.Column("auto_top_up_pending", sa.Integer(), nullable=True))
    op.create_index(
        "ix_users_auto_top_up", "users", ["id"], postgresql_where=sa.text("auto_top_up_pack IS NOT NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_users_auto_top_up", table_name="users")
    for column in (
        "auto_top_up_pending",
        "auto_top_up_crossings",
        "auto_top_up_armed",
        "auto_top_up_threshold",
        "auto_top_up_pack",
        "stripe_customer_id",
    ):
        op.drop_column("users", column)
