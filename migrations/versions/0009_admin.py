"""admin: a user's status (banned accounts are refused), and the audit log of admin actions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("status", sa.Text(), server_default="active", nullable=False))
    op.create_check_constraint(op.f("ck_users_status_known"), "users", "status IN ('active', 'banned')")
    op.create_table(
        "admin_actions",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("admin_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("admin_email", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("action IN ('credits', 'ban', 'unban')", name=op.f("ck_admin_actions_action_known")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_actions")),
    )
    op.create_index("ix_admin_actions_user_id_id", "admin_actions", ["user_id", "id"])
    # The audit log is append-only, like the ledger: the database itself refuses edits and deletions.
    op.execute(
        """
        CREATE FUNCTION admin_actions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the admin audit log is append-only' USING ERRCODE = 'restrict_violation';
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER admin_actions_append_only BEFORE UPDATE OR DELETE ON admin_actions
            FOR EACH ROW EXECUTE FUNCTION admin_actions_append_only()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER admin_actions_append_only ON admin_actions")
    op.execute("DROP FUNCTION admin_actions_append_only()")
    op.drop_index("ix_admin_actions_user_id_id", table_name="admin_actions")
    op.drop_table("admin_actions")
    op.drop_constraint(op.f("ck_users_status_known"), "users", type_="check")
    op.drop_column("users", "status")
