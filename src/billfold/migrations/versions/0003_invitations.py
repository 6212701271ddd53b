"""Invitations to organizations, for people who may not have an account yet.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")

    def user(name: str) -> sa.Column:
        return sa.Column(name, sa.String(255), sa.ForeignKey("users.id", ondelete="SET NULL"))

    op.create_table(
        "organization_invitations",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column(
            "organization_id",
            sa.String(255),
            sa.ForeignKey("organizations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("role", sa.String(50), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        user("invited_by_user_id"),
        sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.Column("expires_at", sa.TIMESTAMP(), nullable=False),
        sa.Column("accepted_at", sa.TIMESTAMP()),
        user("accepted_by_user_id"),
        sa.Column("revoked_at", sa.TIMESTAMP()),
        sa.UniqueConstraint("token_hash"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_organization_invitations_organization_id", "organization_invitations", ["organization_id"])
    op.create_index("idx_organization_invitations_email", "organization_invitations", ["email"])


def downgrade() -> None:
    op.drop_table("organization_invitations")
