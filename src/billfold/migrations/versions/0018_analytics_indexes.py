"""Indexes for the analytics metrics (docs/analytics.md): each serves a range condition on a time
column that a day's figures read: revenue by the day a payment completed, was attempted, or a
refund completed; MRR by the service periods in force; trials by their end; and a customer's earlier
subscriptions and invoices, to tell a new customer from a reactivation. Not in the spec's
recommended indexes; docs/schema.md lists them.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

INDEXES = (
    ("idx_payments_completed_at", "payments", ["completed_at"]),
    ("idx_payments_created_at", "payments", ["created_at"]),
    ("idx_refunds_completed_at", "refunds", ["completed_at"]),
    ("idx_invoice_lines_period_end", "invoice_lines", ["period_end", "period_start"]),
    ("idx_subscriptions_trial_end", "subscriptions", ["trial_end"]),
    ("idx_subscriptions_organization_id", "subscriptions", ["organization_id"]),
    ("idx_invoices_subscription_id", "invoices", ["subscription_id"]),
)
# MariaDB indexed these foreign keys itself, dropped its index when ours came, and refuses to drop
# ours while the key needs one: going down, its own comes back first.
FOREIGN_KEY_INDEXES = {
    "idx_subscriptions_organization_id": "fk_subscriptions_organization_id_organizations",
    "idx_invoices_subscription_id": "fk_invoices_subscription_id_subscriptions",
}


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    mariadb = op.get_bind().dialect.name in ("mysql", "mariadb")
    for name, table, columns in reversed(INDEXES):
        if mariadb and name in FOREIGN_KEY_INDEXES:
            op.create_index(FOREIGN_KEY_INDEXES[name], table, columns)
        op.drop_index(name, table_name=table)
