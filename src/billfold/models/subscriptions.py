"""Spec § Transaction Tables, subscriptions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import JSONType, UTCDateTime
from billfold.models.accounts import owner_check

SUBSCRIPTION_STATUSES = ("active", "cancelled", "past_due", "trialing")


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = table_args(
        owner_check(),
        sa.Index("idx_subscriptions_status", "status"),
        sa.Index("idx_subscriptions_user_id", "user_id"),
        # Not in the spec: the renewal and trial sweeps claim the oldest due first (migration 0009).
        sa.Index("idx_subscriptions_current_period_end", "current_period_end", "id"),
        # For analytics (migration 0018): trials in force and ended; an organization's earlier subscriptions.
        sa.Index("idx_subscriptions_trial_end", "trial_end"),
        sa.Index("idx_subscriptions_organization_id", "organization_id"),
    )

    id: Mapped[str] = id_column("sub")
    user_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="CASCADE"))
    organization_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("organizations.id", ondelete="CASCADE")
    )
    product_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("products.id", ondelete="RESTRICT"), nullable=False
    )
    payment_method_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("payment_methods.id", ondelete="SET NULL")
    )
    provider_id: Mapped[str] = mapped_column(
        sa.String(50), sa.ForeignKey("payment_providers.id", ondelete="CASCADE"), nullable=False
    )
    provider_subscription_id: Mapped[str | None] = mapped_column(sa.String(255))
    status: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    current_period_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    current_period_end: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    cancel_at_period_end: Mapped[bool] = mapped_column(
        sa.Boolean, nullable=False, default=False, server_default=sa.false()
    )
    trial_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    price_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False, default="USD", server_default="USD")
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class SubscriptionBilling(Base):
    """Billfold's own billing state of a subscription, beside the spec's row (docs/subscriptions.md):
    quantity, credit carried to the next invoice, the calendar anchor, pause and dunning. Columns,
    not JSON, because the sweeps query them (``paused_at``, ``next_retry_at``)."""

    __tablename__ = "subscription_billing"
    __table_args__ = table_args(
        sa.CheckConstraint("quantity > 0", name="quantity_positive"),
        sa.CheckConstraint("credit_cents >= 0", name="credit_not_negative"),
        sa.Index("idx_subscription_billing_next_retry_at", "next_retry_at"),
        sa.Index("idx_subscription_billing_cancelled_at", "cancelled_at"),  # analytics: a day's boundaries (migration 0020)
        sa.Index("idx_subscription_billing_paused_at", "paused_at"),  # (migration 0020)
    )

    subscription_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("subscriptions.id", ondelete="CASCADE"), primary_key=True
    )
    quantity: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1, server_default=sa.text("1"))
    credit_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0, server_default=sa.text("0"))
    billing_anchor: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    period_index: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default=sa.text("0"))
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outstanding_invoice_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("invoices.id", ondelete="SET NULL")
    )
    first_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retries_done: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default=sa.text("0"))
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
