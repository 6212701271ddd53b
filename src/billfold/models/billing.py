"""Billfold's own tables for the money path, beyond the spec (see docs/schema.md): gapless number
series for orders and invoices, refunds, which the spec has no table for, the lines of an
invoice (the spec's invoices have only totals), and credit notes (the spec's invoices cannot link
one to the invoice it credits)."""

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
        sa.Index("idx_refunds_completed_at", "completed_at"),  # a day's refunds (migration 0018)
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


INVOICE_LINE_KINDS = ("item", "proration", "credit", "shipping")


class InvoiceLine(Base):
    """One line of an invoice: an item sold, a proration, a credit or shipping. ``unit_amount_cents``
    and ``amount_cents`` may be negative (a credit, a proration refund); the invoice's
    ``amount_cents`` is the sum of its lines' ``amount_cents``."""

    __tablename__ = "invoice_lines"
    # Every server default here has a Python default too, so nothing needs fetching after an INSERT,
    # and a flush of many rows is one executemany rather than a RETURNING statement per batch.
    __mapper_args__ = {"eager_defaults": False}
    __table_args__ = table_args(
        sa.CheckConstraint("quantity > 0", name="quantity_positive"),
        sa.Index("idx_invoice_lines_invoice_id", "invoice_id", "position"),
        sa.Index("idx_invoice_lines_period_end", "period_end", "period_start"),  # MRR's periods in force (migration 0018)
        sa.Index("idx_invoice_lines_period_start", "period_start"),  # periods starting in a day (migration 0020)
    )

    id: Mapped[str] = id_column("inl")
    invoice_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False
    )
    position: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    kind: Mapped[str] = mapped_column(sa.String(50), nullable=False, default="item", server_default="item")
    description: Mapped[str] = mapped_column(sa.String(500), nullable=False)
    product_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("products.id", ondelete="SET NULL")
    )
    quantity: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1, server_default=sa.text("1"))
    unit_amount_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = created_at_column()


class CreditNote(Base):
    """What one refund gave back, as a document: numbered in its own gapless series
    (``CN-2026-000001``), linked to the invoice it credits. Issued once, never deleted or
    renumbered; the one change it takes is being voided (``voided_at``, ``void_reason``, set once,
    never cleared) when its refund fails after succeeding (migration 0021)."""

    __tablename__ = "credit_notes"
    __mapper_args__ = {"eager_defaults": False}
    __table_args__ = table_args(
        sa.CheckConstraint("amount_cents > 0", name="amount_positive"),
        sa.Index("idx_credit_notes_invoice_id", "invoice_id"),
    )

    id: Mapped[str] = id_column("cn")
    credit_note_number: Mapped[str] = mapped_column(sa.String(255), nullable=False, unique=True)
    invoice_id: Mapped[str] = mapped_column(sa.String(255), sa.ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False)
    refund_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("refunds.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False)
    reason: Mapped[str | None] = mapped_column(sa.String(255))
    issue_date: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = created_at_column()
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    void_reason: Mapped[str | None] = mapped_column(sa.String(255))
