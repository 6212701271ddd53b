"""The provider's event id on each stored webhook, unique per provider, so that a second delivery
of the same event is recognised by the database and stored once.

The spec's ``payment_webhooks`` has no column for it; ``provider_event_id`` is added after the
spec's columns, nullable (rows stored before it have none, and NULLs never collide), with a unique
index on ``(provider_id, provider_event_id)``. docs/schema.md lists it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UNIQUE = "uq_payment_webhooks_provider_id_provider_event_id"


def upgrade() -> None:
    # ADD COLUMN and a unique index (not a table constraint) work in place on all three databases;
    # SQLite could add a UNIQUE constraint only by rebuilding the table.
    op.add_column("payment_webhooks", sa.Column("provider_event_id", sa.String(255)))
    op.create_index(UNIQUE, "payment_webhooks", ["provider_id", "provider_event_id"], unique=True)


def downgrade() -> None:
    # MariaDB dropped the foreign key's own index on provider_id when the unique index (which
    # starts with that column) came, and refuses to drop the unique one until another is there.
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.create_index("fk_payment_webhooks_provider_id_payment_providers", "payment_webhooks", ["provider_id"])
    op.drop_index(UNIQUE, table_name="payment_webhooks")
    op.drop_column("payment_webhooks", "provider_event_id")
