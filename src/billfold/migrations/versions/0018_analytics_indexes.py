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
)
# Foreign key columns: MariaDB indexes them already (and refuses to drop an index a key needs).
FOREIGN_KEY_INDEXES = (
    ("idx_subscriptions_organization_id", "subscriptions", ["organization_id"]),
    ("idx_invoices_subscription_id", "invoices", ["subscription_id"]),
)


def _indexes() -> tuple[tuple[str, str, list[str]], ...]:
    return INDEXES + (FOREIGN_KEY_INDEXES if op.get_bind().dialect.name != "mysql" else ())


def upgrade() -> None:
    for name, table, columns in _indexes():
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(_indexes()):
        op.drop_index(name, table_name=table)
