"""users/organisations.allowance_due_from: the month from which an account next needs its allowance
reset (NULL: never, until its plan changes), so the ledger's pass reads the accounts due, not all

A trigger marks an account due at once ('') when it is made or its plan changes; the pass clears
the mark of accounts that need nothing and moves it past the month it reset.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TABLES = ("users", "organisations")

MARK_DUE = """
CREATE FUNCTION allowance_due_on_plan() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.plan IS DISTINCT FROM OLD.plan THEN
        NEW.allowance_due_from := '';
    END IF;
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.execute(MARK_DUE)
    for table in TABLES:
        op.add_column(table, sa.Column("allowance_due_from", sa.Text(collation="C"), nullable=True))
        op.execute(f"UPDATE {table} SET allowance_due_from = ''")  # every account looked at once
        op.create_index(
            f"ix_{table}_allowance_due",
            table,
            ["allowance_due_from"],
            postgresql_where=sa.text("allowance_due_from IS NOT NULL"),
        )
        op.execute(
            f"CREATE TRIGGER {table}_allowance_due BEFORE INSERT OR UPDATE OF plan ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION allowance_due_on_plan()"
        )


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TRIGGER {table}_allowance_due ON {table}")
        op.drop_index(f"ix_{table}_allowance_due", table)
        op.drop_column(table, "allowance_due_from")
    op.execute("DROP FUNCTION allowance_due_on_plan()")
