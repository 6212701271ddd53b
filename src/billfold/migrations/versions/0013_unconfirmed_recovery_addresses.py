"""Forget recovery addresses that were never confirmed.

Before 0013 a signed-in session could set ``recovery_email`` without a password or a confirmation,
and password resets of a confirmed account went there too. Since then an address is only set by
its confirmation link, which writes a ``recovery_email_set`` event. An address without that event
was planted the old way, so it is cleared (the owner can set it again, confirmed). Nothing to undo
on downgrade: the cleared addresses are gone on purpose.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    users = sa.table("users", sa.column("id"), sa.column("recovery_email"))
    events = sa.table("payment_events", sa.column("entity_type"), sa.column("entity_id"), sa.column("event_type"))
    confirmed = sa.select(events.c.entity_id).where(
        events.c.entity_type == "user", events.c.event_type == "recovery_email_set"
    )
    # MariaDB refuses a subquery on the table being updated, but this one reads another table.
    op.execute(
        users.update()
        .where(users.c.recovery_email.is_not(None), users.c.id.not_in(confirmed))
        .values(recovery_email=None)
    )


def downgrade() -> None:
    pass
