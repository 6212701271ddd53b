"""Spec § Transaction Tables, orders: orders, order_items."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import JSONType, UTCDateTime
from billfold.models.accounts import owner_check

ORDER_STATUSES = ("pending", "paid", "cancelled", "refunded")


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = table_args(
        # MariaDB refuses a CHECK over a column whose foreign key is ON DELETE SET NULL
        # (error 1901); the migrations enforce the rule there with triggers instead.
        owner_check().ddl_if(
            dialect=("postgresql", "sqlite")
        ),
        sa.Index("idx_orders_status", "status"),
        sa.Index("idx_orders_user_id", "user_id"),
        sa.Index("idx_orders_organization_id", "organization_id"),  # a foreign key read by (migration 0022)
    )

    id: Mapped[str] = id_column("ord")
    order_number: Mapped[str] = mapped_column(sa.String(255), nullable=False, unique=True)
    user_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="SET NULL"))
    organization_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("organizations.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(sa.String(50), nullable=False, default="pending", server_default="pending")
    subtotal_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    tax_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0, server_default=sa.text("0"))
    discount_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0, server_default=sa.text("0"))
    total_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False, default="USD", server_default="USD")
    billing_address_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("addresses.id", ondelete="SET NULL")
    )
    shipping_address_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("addresses.id", ondelete="SET NULL")
    )
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OrderItem(Base):
    __tablename__ = "order_items"
    __table_args__ = table_args(sa.Index("idx_order_items_order_id", "order_id"))  # a foreign key read by (migration 0022)

    id: Mapped[str] = id_column("oit")
    order_id: Mapped[str] = mapped_column(sa.String(255), sa.ForeignKey("orders.id", ondelete="CASCADE"), nullable=False)
    product_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("products.id", ondelete="RESTRICT"), nullable=False
    )
    quantity: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1, server_default=sa.text("1"))
    unit_price_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    total_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = created_at_column()
