"""Gapless number series (order numbers, later invoice numbers) and refunds.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")
    now_on_update = sa.text("CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP") if dialect == "mysql" else now
    op.create_table(
        "number_series",
        sa.Column("series", sa.String(100), primary_key=True),
        sa.Column("last_value", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        **MYSQL_OPTIONS,
    )
    op.create_table(
        "refunds",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("payment_id", sa.String(255), sa.ForeignKey("payments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("order_id", sa.String(255), sa.ForeignKey("orders.id", ondelete="SET NULL")),
        sa.Column(
            "provider_id", sa.String(50), sa.ForeignKey("payment_providers.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("provider_refund_id", sa.String(255)),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(50), nullable=False),
        sa.Column("reason", sa.String(255)),
        sa.Column("error_message", sa.Text()),
        sa.Column("metadata", sa.JSON()),
        sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.Column("updated_at", sa.TIMESTAMP(), nullable=False, server_default=now_on_update),
        sa.Column("completed_at", sa.TIMESTAMP()),
        sa.CheckConstraint("amount_cents > 0", name="amount_positive"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_refunds_payment_id", "refunds", ["payment_id"])
    op.create_index("idx_refunds_order_id", "refunds", ["order_id"])


def downgrade() -> None:
    op.drop_table("refunds")
    op.drop_table("number_series")
