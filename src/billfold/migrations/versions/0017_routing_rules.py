"""Routing rules: which providers a payment goes to (and in which order it fails over) when the
caller names none (docs/payments.md#routing). The spec has no table for it; docs/schema.md lists it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")
    now_on_update = sa.text("CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP") if dialect == "mysql" else now
    op.create_table(
        "payment_routing_rules",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255)),
        sa.Column("position", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("currency", sa.String(3)),
        sa.Column("country", sa.String(2)),
        sa.Column("min_amount_cents", sa.BigInteger()),
        sa.Column("max_amount_cents", sa.BigInteger()),
        sa.Column("product_type", sa.String(50)),
        sa.Column("weight", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("provider_ids", sa.JSON(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.Column("updated_at", sa.TIMESTAMP(), nullable=False, server_default=now_on_update),
        sa.CheckConstraint("weight >= 0", name="weight_not_negative"),
        sa.CheckConstraint("min_amount_cents IS NULL OR min_amount_cents >= 0", name="min_amount_not_negative"),
        sa.CheckConstraint(
            "min_amount_cents IS NULL OR max_amount_cents IS NULL OR min_amount_cents <= max_amount_cents",
            name="amount_bounds_ordered",
        ),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_payment_routing_rules_position", "payment_routing_rules", ["is_active", "position"])


def downgrade() -> None:
    op.drop_table("payment_routing_rules")
