"""Credit notes can be voided: a refund that fails after succeeding gave nothing back, so its credit
note is marked void (``voided_at``, ``void_reason``), set once and never cleared. The note keeps
its number, so the series stays gapless, and stays listed (docs/invoices.md "## Credit notes").
Not in the spec; docs/schema.md lists them.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN works in place on all three databases (as in 0015).
    op.add_column("credit_notes", sa.Column("voided_at", sa.TIMESTAMP()))
    op.add_column("credit_notes", sa.Column("void_reason", sa.String(255)))


def downgrade() -> None:
    op.drop_column("credit_notes", "void_reason")
    op.drop_column("credit_notes", "voided_at")
