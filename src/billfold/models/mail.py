"""Billfold's own table for outgoing email: the outbox (see docs/operations.md#mail)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import UTCDateTime

MAIL_STATUSES = ("pending", "sent", "failed")


class OutboxEmail(Base):
    """One email, written in the transaction of the change that causes it and delivered after it
    commits. ``pending`` until delivered (``sent``) or given up (``failed``); ``next_attempt_at``
    is when a worker may next try it (NULL once it is no longer pending)."""

    __tablename__ = "mail_outbox"
    # Every server default has a Python default too: a batch of renewals flushes its receipts in
    # one executemany, with nothing to fetch back.
    __mapper_args__ = {"eager_defaults": False}
    __table_args__ = table_args(
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        sa.Index("idx_mail_outbox_next_attempt_at", "next_attempt_at", "id"),
    )

    id: Mapped[str] = id_column("mail")
    to_address: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    subject: Mapped[str] = mapped_column(sa.String(1000), nullable=False)
    body: Mapped[str] = mapped_column(sa.Text, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(50), nullable=False, default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default=sa.text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
