"""A day's analytics derived from the day before (docs/analytics.md "## Snapshots"): indexes that
find the subscriptions with a boundary inside one day (a service period starting or ending, an
invoice issued or paid, a cancellation or a pause taking effect) and the events that change figures
after the fact (docs/analytics.md "Figures that change after the fact"); and
``analytics_mrr_movers``, each snapshot day's customers whose MRR moved, so the 30-day churn window
is read from thirty small days instead of the billing history. Not in the spec; docs/schema.md
lists them.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
INDEXES = (
    ("idx_invoice_lines_period_start", "invoice_lines", ["period_start"]),
    ("idx_invoices_paid_date", "invoices", ["paid_date"]),
    ("idx_invoices_issue_date", "invoices", ["issue_date"]),
    ("idx_subscription_billing_cancelled_at", "subscription_billing", ["cancelled_at"]),
    ("idx_subscription_billing_paused_at", "subscription_billing", ["paused_at"]),
    ("idx_payment_events_type_created_at", "payment_events", ["event_type", "created_at"]),
)


def upgrade() -> None:
    op.create_table(
        "analytics_mrr_movers",
        sa.Column("snapshot_date", sa.Date(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("before_cents", sa.BigInteger(), nullable=False),
        sa.Column("after_cents", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_date", "currency", "customer_id", name="pk_analytics_mrr_movers"),
        **MYSQL_OPTIONS,
    )
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    op.drop_table("analytics_mrr_movers")
