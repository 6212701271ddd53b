"""Spec § Webhooks and Events: payment_webhooks (the inbox) and payment_events (the audit trail)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args
from billfold.kit.db.types import JSONType, UTCDateTime


class PaymentWebhook(Base):
    __tablename__ = "payment_webhooks"
    __table_args__ = table_args(
        sa.Index("idx_payment_webhooks_processed", "processed"),
        # Billfold's addition (migration 0014): a provider's event is stored once, however often it is delivered.
        sa.Index("uq_payment_webhooks_provider_id_provider_event_id", "provider_id", "provider_event_id", unique=True),
        # Billfold's addition (migration 0015): the processing sweep's due events.
        sa.Index("idx_payment_webhooks_processed_next_attempt_at", "processed", "next_attempt_at"),
    )

    id: Mapped[str] = id_column("whk")
    provider_id: Mapped[str] = mapped_column(
        sa.String(50), sa.ForeignKey("payment_providers.id", ondelete="CASCADE"), nullable=False
    )
    event_type: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    payload: Mapped[Any] = mapped_column(JSONType, nullable=False)
    processed: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False, server_default=sa.false())
    created_at: Mapped[datetime] = created_at_column()
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Not in the spec: the provider's own id of the event (the Standard Webhooks ``webhook-id``).
    provider_event_id: Mapped[str | None] = mapped_column(sa.String(255))
    # Not in the spec (migration 0015): how processing went. ``attempts`` that failed (NULL: none),
    # the last one's error, when the sweep may try again (NULL: at once), and what it did.
    attempts: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(sa.String(500))


class PaymentEvent(Base):
    __tablename__ = "payment_events"
    # Every server default here has a Python default too, so nothing needs fetching after an INSERT,
    # and a flush of many rows is one executemany rather than a RETURNING statement per batch.
    __mapper_args__ = {"eager_defaults": False}
    __table_args__ = table_args(
        sa.Index("idx_payment_events_entity_type_entity_id", "entity_type", "entity_id"),
        sa.Index("idx_payment_events_type_created_at", "event_type", "created_at"),  # analytics: changes after the fact (0020)
    )

    id: Mapped[str] = id_column("evt")
    entity_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    entity_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    event_type: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = created_at_column()
