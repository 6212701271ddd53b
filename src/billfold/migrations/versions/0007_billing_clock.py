"""The sandbox billing clock: one row holding how far the system's time runs ahead of real time.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")
    table = op.create_table(
        "billing_clock",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("offset_seconds", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.CheckConstraint("id = 1", name="single_row"),
        sa.CheckConstraint("offset_seconds >= 0", name="offset_not_negative"),
        **MYSQL_OPTIONS,
    )
    op.bulk_insert(table, [{"id": 1, "offset_seconds": 0}])


def downgrade() -> None:
    op.drop_table("billing_clock")
