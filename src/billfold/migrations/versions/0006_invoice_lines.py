"""Invoice lines: what an invoice is for, line by line.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")
    op.create_table(
        "invoice_lines",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("invoice_id", sa.String(255), sa.ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(50), nullable=False, server_default="item"),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("product_id", sa.String(255), sa.ForeignKey("products.id", ondelete="SET NULL")),
        sa.Column("quantity", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("unit_amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.TIMESTAMP()),
        sa.Column("period_end", sa.TIMESTAMP()),
        sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.CheckConstraint("quantity > 0", name="quantity_positive"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_invoice_lines_invoice_id", "invoice_lines", ["invoice_id", "position"])


def downgrade() -> None:
    op.drop_table("invoice_lines")
