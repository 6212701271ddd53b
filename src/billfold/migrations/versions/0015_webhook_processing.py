"""What processing each stored webhook did: its attempts, last error, when it may be tried again,
and a note on what it changed (or why nothing), so that an event that failed is retried with
backoff and an admin can see why.

The spec's ``payment_webhooks`` columns stay as they are; these are added after them, nullable
(NULL ``attempts`` reads as none), with an index for the processing sweep. docs/schema.md lists them.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

DUE = "idx_payment_webhooks_processed_next_attempt_at"


def upgrade() -> None:
    op.add_column("payment_webhooks", sa.Column("attempts", sa.Integer()))
    op.add_column("payment_webhooks", sa.Column("last_error", sa.Text()))
    op.add_column("payment_webhooks", sa.Column("next_attempt_at", sa.TIMESTAMP()))
    op.add_column("payment_webhooks", sa.Column("note", sa.String(500)))
    op.create_index(DUE, "payment_webhooks", ["processed", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index(DUE, table_name="payment_webhooks")
    for column in ("note", "next_attempt_at", "last_error", "attempts"):
        op.drop_column("payment_webhooks", column)
