"""Webhooks out, to the merchant's systems: the endpoints admins register, one delivery per event
and endpoint (an outbox, written in the transaction of the change it tells of), and every attempt
at one (docs/operations.md#webhooks-out). The spec has no tables for them; docs/schema.md lists them.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")
    now_on_update = sa.text("CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP") if dialect == "mysql" else now
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("description", sa.String(500)),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("disabled_reason", sa.String(500)),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("failing_since", sa.TIMESTAMP()),
        sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.Column("updated_at", sa.TIMESTAMP(), nullable=False, server_default=now_on_update),
        sa.CheckConstraint("consecutive_failures >= 0", name="failures_not_negative"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_webhook_endpoints_is_active", "webhook_endpoints", ["is_active"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column(
            "endpoint_id", sa.String(255), sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("entity_key", sa.String(255), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(50), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", sa.TIMESTAMP()),
        sa.Column("last_status_code", sa.Integer()),
        sa.Column("last_error", sa.String(1000)),
        sa.Column("delivered_at", sa.TIMESTAMP()),
        sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.Column("updated_at", sa.TIMESTAMP(), nullable=False, server_default=now_on_update),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed', 'cancelled')", name="status"),
        sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_webhook_deliveries_status_next_attempt_at", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_index(
        "idx_webhook_deliveries_endpoint_id_entity_key", "webhook_deliveries", ["endpoint_id", "entity_key", "status"]
    )
    op.create_index("idx_webhook_deliveries_endpoint_id_id", "webhook_deliveries", ["endpoint_id", "id"])
    op.create_table(
        "webhook_delivery_attempts",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column(
            "delivery_id", sa.String(255), sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("attempted_at", sa.TIMESTAMP(), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error", sa.String(1000)),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("response_excerpt", sa.Text()),
        **MYSQL_OPTIONS,
    )
    op.create_index(
        "idx_webhook_delivery_attempts_delivery_id", "webhook_delivery_attempts", ["delivery_id", "attempted_at"]
    )


def downgrade() -> None:
    op.drop_table("webhook_delivery_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
