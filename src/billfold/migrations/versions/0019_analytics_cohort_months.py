"""The retention matrix's finished months, stored (``analytics_cohort_months``; docs/analytics.md,
"Retention matrix", and docs/performance.md, "Analytics"): each finished month's column is computed
once, so the matrix reads a few hundred rows instead of every payment. The spec has no table for it.
And ``idx_payments_user_id_currency`` on (user_id, currency, status, completed_at): whether a user
had paid in a currency before a moment, read from the index alone, for the months brought up to date
live.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")
    op.create_table(
        "analytics_cohort_months",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("cohort_type", sa.String(50), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("cohort_month", sa.Date(), nullable=False),
        sa.Column("joined", sa.Integer(), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("revenue_cents", sa.BigInteger(), nullable=False),
        sa.Column("through", sa.TIMESTAMP(), nullable=True),
        sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.UniqueConstraint("month", "cohort_type", "currency", "cohort_month", name="unique_analytics_cohort_month"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_payments_user_id_currency", "payments", ["user_id", "currency", "status", "completed_at"])


def downgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        # MariaDB dropped the index it made for the foreign key when ours came, and refuses to drop
        # ours while the key needs one: its own comes back first.
        op.create_index("fk_payments_user_id_users", "payments", ["user_id"])
    op.drop_index("idx_payments_user_id_currency", table_name="payments")
    op.drop_table("analytics_cohort_months")
