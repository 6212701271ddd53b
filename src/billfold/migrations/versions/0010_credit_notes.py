"""Credit notes: what a refund gives back, as a document of its own, linked to the invoice it credits.

The spec's ``invoices`` has no type and no link to another invoice, so a credit note there could
not say which invoice it corrects (docs/schema.md).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
PG_NOW = "date_trunc('second', timezone('UTC', CURRENT_TIMESTAMP))"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = sa.text(PG_NOW if dialect == "postgresql" else "CURRENT_TIMESTAMP")
    op.create_table(
        "credit_notes",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("credit_note_number", sa.String(255), nullable=False, unique=True),
        sa.Column("invoice_id", sa.String(255), sa.ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("refund_id", sa.String(255), sa.ForeignKey("refunds.id", ondelete="CASCADE"), nullable=False, unique=True),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("reason", sa.String(255)),
        sa.Column("issue_date", sa.TIMESTAMP(), nullable=False),
        sa.Column("created_at", sa.TIMESTAMP(), nullable=False, server_default=now),
        sa.CheckConstraint("amount_cents > 0", name="amount_positive"),
        **MYSQL_OPTIONS,
    )
    op.create_index("idx_credit_notes_invoice_id", "credit_notes", ["invoice_id"])


def downgrade() -> None:
    op.drop_table("credit_notes")
