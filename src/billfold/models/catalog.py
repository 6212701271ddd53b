"""Spec § Transaction Tables, the catalog part: product_categories, products."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import JSONType

PRODUCT_TYPES = ("physical", "digital", "service", "subscription")
BILLING_INTERVALS = ("monthly", "yearly")


class ProductCategory(Base):
    __tablename__ = "product_categories"
    __table_args__ = table_args()

    id: Mapped[str] = id_column("cat")
    name: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    description: Mapped[str | None] = mapped_column(sa.Text)
    parent_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("product_categories.id", ondelete="SET NULL")
    )
    image: Mapped[str | None] = mapped_column(sa.String(255))
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True, server_default=sa.true())
    sort_order: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default=sa.text("0"))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class Product(Base):
    """A product or plan. Variants are products whose ``parent_product_id`` names the product."""

    __tablename__ = "products"
    __table_args__ = table_args()

    id: Mapped[str] = id_column("prod")
    name: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    description: Mapped[str | None] = mapped_column(sa.Text)
    product_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    is_recurring: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False, server_default=sa.false())
    price_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False, default="USD", server_default="USD")
    billing_interval: Mapped[str | None] = mapped_column(sa.String(20))
    trial_days: Mapped[int | None] = mapped_column(sa.Integer, default=0, server_default=sa.text("0"))
    image: Mapped[str | None] = mapped_column(sa.String(255))
    gallery: Mapped[list[str] | None] = mapped_column(JSONType)
    category_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("product_categories.id", ondelete="SET NULL")
    )
    parent_product_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("products.id", ondelete="SET NULL")
    )
    variations: Mapped[list[Any] | None] = mapped_column(JSONType)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True, server_default=sa.true())
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
