"""Spec § Transaction Tables, payments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import JSONType, UTCDateTime

PAYMENT_STATUSES = ("pending", "completed", "failed", "refunded")


class Payment(Base):
    __tablename__ = "payments"
    # Every server default here has a Python default too, so nothing needs fetching after an INSERT,
    # and a flush of many rows is one executemany rather than a RETURNING statement per batch.
    __mapper_args__ = {"eager_defaults": False}
    __table_args__ = table_args(
        # MariaDB refuses this CHECK (both columns are ON DELETE SET NULL); triggers there.
        sa.CheckConstraint("order_id IS NOT NULL OR subscription_id IS NOT NULL", name="purpose").ddl_if(
            dialect=("postgresql", "sqlite")
        ),
        sa.Index("idx_payments_status", "status"),
        sa.Index("idx_payments_order_id", "order_id"),
        # Not in the spec: a day's revenue and failed payments read these ranges (migration 0018).
        sa.Index("idx_payments_completed_at", "completed_at"),
        sa.Index("idx_payments_created_at", "created_at"),
        # Not in the spec: whether a user had paid in a currency before a moment, for the retention matrix (0019).
        sa.Index("idx_payments_user_id_currency", "user_id", "currency", "status", "completed_at"),
        sa.Index("idx_payments_subscription_id", "subscription_id"),  # a foreign key read by (migration 0022)
        sa.Index("idx_payments_organization_id", "organization_id"),  # a foreign key read by (migration 0022)
    )

    id: Mapped[str] = id_column("pay")
    order_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("orders.id", ondelete="SET NULL"))
    subscription_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("subscriptions.id", ondelete="SET NULL")
    )
    user_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="SET NULL"))
    organization_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("organizations.id", ondelete="SET NULL")
    )
    payment_method_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("payment_methods.id", ondelete="SET NULL")
    )
    provider_id: Mapped[str] = mapped_column(
        sa.String(50), sa.ForeignKey("payment_providers.id", ondelete="CASCADE"), nullable=False
    )
    provider_payment_id: Mapped[str | None] = mapped_column(sa.String(255))
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False, default="USD", server_default="USD")
    status: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
