"""The mail outbox: every email is a row, written in the transaction of the change that causes it
and delivered by the worker with retries (docs/operations.md#mail). The spec has no table for it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")
    now_on_update = sa.text("CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP") if dialect == "mysql" else now
    op.create_table(
        "mail_outbox",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("to_address", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(1000), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(50), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", sa.TIMESTAMP()),
        sa.Column("last_error", sa.Text()),
        sa.Column("sent_at", sa.TIMESTAMP()),
        sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.Column("updated_at", sa.TIMESTAMP(), nullable=False, server_default=now_on_update),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_mail_outbox_next_attempt_at", "mail_outbox", ["next_attempt_at", "id"])


def downgrade() -> None:
    op.drop_table("mail_outbox")
