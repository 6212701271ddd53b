"""Billfold's own tables for webhooks out, to the merchant's systems (migration 0016; the spec has
none): the endpoints admins register, one delivery per event and endpoint (the outbox), and every
attempt at one. See docs/operations.md#webhooks-out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import JSONType, UTCDateTime

DELIVERY_STATUSES = ("pending", "delivered", "failed", "cancelled")


class WebhookEndpoint(Base):
    """A URL of the merchant's that is told of events: ``event_types`` (a JSON list of types, or
    ``["*"]`` for all), signed with its secret (encrypted at rest, shown once). ``consecutive_failures``
    counts failed attempts since the last success, ``failing_since`` is when the first of them was."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = table_args(
        sa.CheckConstraint("consecutive_failures >= 0", name="failures_not_negative"),
        sa.Index("idx_webhook_endpoints_is_active", "is_active"),
    )

    id: Mapped[str] = id_column("we")
    url: Mapped[str] = mapped_column(sa.String(2000), nullable=False)
    description: Mapped[str | None] = mapped_column(sa.String(500))
    event_types: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    secret: Mapped[str] = mapped_column(sa.Text, nullable=False)  # kit.crypto.encrypt of the whsec_… secret
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True, server_default=sa.true())
    disabled_reason: Mapped[str | None] = mapped_column(sa.String(500))
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default=sa.text("0"))
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class WebhookDelivery(Base):
    """One event for one endpoint, written in the transaction of the change it tells of. ``event_id``
    (the ``payment_events`` row's id) is the Standard Webhooks ``webhook-id``, the same on every
    attempt; ``entity_key`` (``order:ord_…``) keeps an entity's events in order."""

    __tablename__ = "webhook_deliveries"
    __mapper_args__ = {"eager_defaults": False}
    __table_args__ = table_args(
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed', 'cancelled')", name="status"),
        sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        sa.Index("idx_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        sa.Index("idx_webhook_deliveries_endpoint_id_entity_key", "endpoint_id", "entity_key", "status"),
        sa.Index("idx_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
    )

    id: Mapped[str] = id_column("whd")
    endpoint_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False
    )
    event_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    event_type: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    entity_key: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    payload: Mapped[Any] = mapped_column(JSONType, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(50), nullable=False, default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default=sa.text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.String(1000))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class WebhookDeliveryAttempt(Base):
    """One try at a delivery: the answer's status code (NULL: no answer, see ``error``), how long it
    took, and the first KB of the answer's body."""

    __tablename__ = "webhook_delivery_attempts"
    __table_args__ = table_args(sa.Index("idx_webhook_delivery_attempts_delivery_id", "delivery_id", "attempted_at"))

    id: Mapped[str] = id_column("wha")
    delivery_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    status_code: Mapped[int | None] = mapped_column(sa.Integer)
    error: Mapped[str | None] = mapped_column(sa.String(1000))
    latency_ms: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    response_excerpt: Mapped[str | None] = mapped_column(sa.Text)
