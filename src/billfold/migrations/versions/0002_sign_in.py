"""Billfold's own tables for signing in: sessions, challenges, API keys, sign-in throttles.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")

    def created() -> sa.Column:
        return sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now)

    def user(name: str, ondelete: str, nullable: bool) -> sa.Column:
        return sa.Column(name, sa.String(255), sa.ForeignKey("users.id", ondelete=ondelete), nullable=nullable)

    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.String(255), primary_key=True),
        user("user_id", "CASCADE", nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("transport", sa.String(20), nullable=False),
        sa.Column("user_agent", sa.String(255)),
        sa.Column("ip_address", sa.String(64)),
        created(),
        sa.Column("last_used_at", sa.TIMESTAMP(), nullable=False),
        sa.Column("expires_at", sa.TIMESTAMP(), nullable=False),
        sa.Column("revoked_at", sa.TIMESTAMP()),
        sa.UniqueConstraint("token_hash"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_auth_sessions_user_id", "auth_sessions", ["user_id"])
    op.create_table(
        "auth_challenges",
        sa.Column("id", sa.String(255), primary_key=True),
        user("user_id", "CASCADE", nullable=True),
        sa.Column("purpose", sa.String(50), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON()),
        created(),
        sa.Column("expires_at", sa.TIMESTAMP(), nullable=False),
        sa.Column("used_at", sa.TIMESTAMP()),
        sa.UniqueConstraint("secret_hash"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_auth_challenges_user_id", "auth_challenges", ["user_id"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("key_prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        user("created_by_user_id", "SET NULL", nullable=True),
        created(),
        sa.Column("last_used_at", sa.TIMESTAMP()),
        sa.Column("revoked_at", sa.TIMESTAMP()),
        sa.UniqueConstraint("key_hash"),
        **MYSQL_OPTIONS,
    )
    op.create_table(
        "sign_in_throttles",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("window_started_at", sa.TIMESTAMP(), nullable=False),
        **MYSQL_OPTIONS,
    )


def downgrade() -> None:
    for table_name in ("sign_in_throttles", "api_keys", "auth_challenges", "auth_sessions"):
        op.drop_table(table_name)
