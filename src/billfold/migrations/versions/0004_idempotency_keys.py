"""Idempotency keys: the first response to each ``Idempotency-Key``, and how far its request got.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")

    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("scope", sa.String(255), nullable=False),
        sa.Column("idem_key", sa.String(255), nullable=False),
        sa.Column("request_method", sa.String(10), nullable=False),
        sa.Column("request_path", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("recovery_point", sa.String(50), nullable=False, server_default=sa.text("'started'")),
        sa.Column("lock_token", sa.String(36)),
        sa.Column("locked_at", sa.TIMESTAMP()),
        sa.Column("last_run_at", sa.TIMESTAMP(), nullable=False),
        sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.Column("response_code", sa.Integer()),
        sa.Column("response_body", sa.JSON()),
        sa.UniqueConstraint("scope", "idem_key", name="uq_idempotency_keys_scope_idem_key"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
