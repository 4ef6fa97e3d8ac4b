"""ledger balances: each account's running balance, kept by the database as entries are added

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_balances",
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("balance", sa.Numeric(precision=14, scale=3), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_ledger_balances")),
    )
    # Every statement that adds entries adds their sums to the balances in the same transaction, so a
    # balance is always the sum of its account's entries (which can't be edited or deleted). Accounts
    # are updated in one order (sorted), so two writers of the same accounts can't deadlock.
    op.execute(
        """
        CREATE FUNCTION ledger_entries_to_balances() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO ledger_balances AS b (account_id, balance)
            SELECT account_id, sum(amount) FROM added GROUP BY account_id ORDER BY account_id
            ON CONFLICT (account_id) DO UPDATE SET balance = b.balance + excluded.balance, updated_at = now();
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER ledger_entries_to_balances AFTER INSERT ON ledger_entries
            REFERENCING NEW TABLE AS added
            FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_to_balances()
        """
    )
    # The trigger's lock (until this commits) keeps new entries out between it and the sums.
    op.execute(
        "INSERT INTO ledger_balances (account_id, balance) "
        "SELECT account_id, sum(amount) FROM ledger_entries GROUP BY account_id"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER ledger_entries_to_balances ON ledger_entries")
    op.execute("DROP FUNCTION ledger_entries_to_balances()")
    op.drop_table("ledger_balances")
