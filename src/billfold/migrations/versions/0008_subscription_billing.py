"""Subscriptions' own billing state: quantity, credit, calendar anchor, pause and dunning.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")
    now_on_update = sa.text("CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP") if dialect == "mysql" else now
    op.create_table(
        "subscription_billing",
        sa.Column(
            "subscription_id", sa.String(255), sa.ForeignKey("subscriptions.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("quantity", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("credit_cents", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("billing_anchor", sa.TIMESTAMP(), nullable=False),
        sa.Column("period_index", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("paused_at", sa.TIMESTAMP()),
        sa.Column("cancelled_at", sa.TIMESTAMP()),
        sa.Column("outstanding_invoice_id", sa.String(255), sa.ForeignKey("invoices.id", ondelete="SET NULL")),
        sa.Column("first_failed_at", sa.TIMESTAMP()),
        sa.Column("retries_done", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_retry_at", sa.TIMESTAMP()),
        sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.Column("updated_at", sa.TIMESTAMP(), nullable=False, server_default=now_on_update),
        sa.CheckConstraint("quantity > 0", name="quantity_positive"),
        sa.CheckConstraint("credit_cents >= 0", name="credit_not_negative"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_subscription_billing_next_retry_at", "subscription_billing", ["next_retry_at"])


def downgrade() -> None:
    op.drop_table("subscription_billing")
