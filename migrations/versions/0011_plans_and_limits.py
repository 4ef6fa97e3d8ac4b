"""plans and limits: each user's plan and admin overrides of its limits, throttled accounts, and the
credits each account spent today and this month beside its balance

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SPENDING = "('reserve', 'commit', 'release')"

# As 0007's, and the credits spent (held by reservations, less what settlements gave back) on the
# UTC day and month of the transaction: counters that start again when the day or month changes,
# read under the balance row's lock by a reservation that checks a daily or monthly limit.
BALANCES_WITH_SPENDING = f"""
CREATE OR REPLACE FUNCTION ledger_entries_to_balances() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_balances AS b (account_id, balance, spent_on, spent_day, spent_month)
    SELECT account_id, sum(amount), (now() AT TIME ZONE 'UTC')::date,
           coalesce(-sum(amount) FILTER (WHERE kind IN {SPENDING}), 0),
           coalesce(-sum(amount) FILTER (WHERE kind IN {SPENDING}), 0)
    FROM added GROUP BY account_id ORDER BY account_id
    ON CONFLICT (account_id) DO UPDATE SET
        balance = b.balance + excluded.balance,
        spent_day = CASE WHEN b.spent_on = excluded.spent_on THEN b.spent_day ELSE 0 END + excluded.spent_day,
        spent_month = CASE WHEN date_trunc('month', b.spent_on) = date_trunc('month', excluded.spent_on)
                           THEN b.spent_month ELSE 0 END + excluded.spent_month,
        spent_on = excluded.spent_on,
        updated_at = now();
    RETURN NULL;
END $$
"""

BALANCES_ONLY = """
CREATE OR REPLACE FUNCTION ledger_entries_to_balances() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_balances AS b (account_id, balance)
    SELECT account_id, sum(amount) FROM added GROUP BY account_id ORDER BY account_id
    ON CONFLICT (account_id) DO UPDATE SET balance = b.balance + excluded.balance, updated_at = now();
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.add_column("users", sa.Column("plan", sa.Text(), server_default="free", nullable=False))
    op.add_column("users", sa.Column("limits", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.drop_constraint(op.f("ck_users_status_known"), "users", type_="check")
    op.create_check_constraint(op.f("ck_users_status_known"), "users", "status IN ('active', 'throttled', 'banned')")
    op.drop_constraint(op.f("ck_admin_actions_action_known"), "admin_actions", type_="check")
    op.create_check_constraint(
        op.f("ck_admin_actions_action_known"),
        "admin_actions",
        "action IN ('credits', 'ban', 'unban', 'throttle', 'unthrottle', 'plan', 'limits')",
    )
    op.add_column(
        "ledger_balances",
        sa.Column("spent_on", sa.Date(), server_default=sa.text("(now() AT TIME ZONE 'UTC')::date"), nullable=False),
    )
    op.add_column("ledger_balances", sa.Column("spent_day", sa.Numeric(14, 3), server_default="0", nullable=False))
    op.add_column("ledger_balances", sa.Column("spent_month", sa.Numeric(14, 3), server_default="0", nullable=False))
    op.execute(BALANCES_WITH_SPENDING)
    # An owner's open jobs, counted under its balance lock by a submit that checks a concurrency limit.
    op.create_index(
        "ix_jobs_owner_open", "jobs", ["owner_id"], postgresql_where=sa.text("status IN ('queued', 'running')")
    )
    # Each account's allowance resets, latest first: the monthly reset's look at the last one.
    op.create_index(
        "ix_ledger_entries_resets", "ledger_entries", ["account_id", "id"], postgresql_where=sa.text("kind = 'reset'")
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_entries_resets", table_name="ledger_entries")
    op.drop_index("ix_jobs_owner_open", table_name="jobs")
    op.execute(BALANCES_ONLY)
    op.drop_column("ledger_balances", "spent_month")
    op.drop_column("ledger_balances", "spent_day")
    op.drop_column("ledger_balances", "spent_on")
    op.drop_constraint(op.f("ck_admin_actions_action_known"), "admin_actions", type_="check")
    # The log is append-only: rows of the newer actions stay, so the older check holds for new rows only.
    op.create_check_constraint(
        op.f("ck_admin_actions_action_known"),
        "admin_actions",
        "action IN ('credits', 'ban', 'unban')",
        postgresql_not_valid=True,
    )
    op.execute("UPDATE users SET status = 'active' WHERE status = 'throttled'")
    op.drop_constraint(op.f("ck_users_status_known"), "users", type_="check")
    op.create_check_constraint(op.f("ck_users_status_known"), "users", "status IN ('active', 'banned')")
    op.drop_column("users", "limits")
    op.drop_column("users", "plan")
