"""Spec § Transaction Tables, invoices."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import UTCDateTime

INVOICE_STATUSES = ("draft", "open", "paid", "void", "uncollectible")


class Invoice(Base):
    __tablename__ = "invoices"
    # Every server default here has a Python default too, so nothing needs fetching after an INSERT,
    # and a flush of many rows is one executemany rather than a RETURNING statement per batch.
    __mapper_args__ = {"eager_defaults": False}
    # Not in the spec: MRR movements look up a customer's earlier invoices by subscription (migration 0018).
    __table_args__ = table_args(
        sa.Index("idx_invoices_subscription_id", "subscription_id"),
        sa.Index("idx_invoices_paid_date", "paid_date"),  # invoices paid in a day (migration 0020)
        sa.Index("idx_invoices_issue_date", "issue_date"),  # and issued (migration 0020)
        # Not in the spec: foreign keys read by (an order's invoice, a customer's invoices; migration 0022).
        sa.Index("idx_invoices_order_id", "order_id"),
        sa.Index("idx_invoices_user_id", "user_id"),
        sa.Index("idx_invoices_organization_id", "organization_id"),
    )

    id: Mapped[str] = id_column("inv")
    invoice_number: Mapped[str] = mapped_column(sa.String(255), nullable=False, unique=True)
    order_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("orders.id", ondelete="SET NULL"))
    subscription_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("subscriptions.id", ondelete="SET NULL")
    )
    user_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="SET NULL"))
    organization_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("organizations.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    tax_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0, server_default=sa.text("0"))
    discount_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0, server_default=sa.text("0"))
    total_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False, default="USD", server_default="USD")
    issue_date: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    due_date: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    paid_date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    billing_address_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("addresses.id", ondelete="SET NULL")
    )
    provider_id: Mapped[str | None] = mapped_column(
        sa.String(50), sa.ForeignKey("payment_providers.id", ondelete="SET NULL")
    )
    provider_invoice_id: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
