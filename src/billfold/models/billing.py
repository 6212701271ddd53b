"""Billfold's own tables for the money path, beyond the spec (see docs/schema.md): gapless number
series for orders (and later invoices), and refunds, which the spec has no table for."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import JSONType, UTCDateTime

REFUND_STATUSES = ("pending", "succeeded", "failed")


class NumberSeries(Base):
    """The last number handed out in one series (``order-2026``). Taking a number updates the row,
    which holds its lock until the transaction ends: numbers are gapless because a transaction
    that rolls back gives its number back."""

    __tablename__ = "number_series"
    __table_args__ = table_args()

    series: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    last_value: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0, server_default=sa.text("0"))


class Refund(Base):
    """Money given back on a completed payment, in full or in part. A payment may have several;
    they never add up to more than it took."""

    __tablename__ = "refunds"
    __table_args__ = table_args(
        sa.CheckConstraint("amount_cents > 0", name="amount_positive"),
        sa.Index("idx_refunds_payment_id", "payment_id"),
        sa.Index("idx_refunds_order_id", "order_id"),
    )

    id: Mapped[str] = id_column("re")
    payment_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("payments.id", ondelete="CASCADE"), nullable=False
    )
    order_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("orders.id", ondelete="SET NULL"))
    provider_id: Mapped[str] = mapped_column(
        sa.String(50), sa.ForeignKey("payment_providers.id", ondelete="CASCADE"), nullable=False
    )
    provider_refund_id: Mapped[str | None] = mapped_column(sa.String(255))
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False)
    status: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    reason: Mapped[str | None] = mapped_column(sa.String(255))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
