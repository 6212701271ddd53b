"""Billfold's own table for routing payments between providers (docs/payments.md#routing): the spec
has no table for it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import JSONType


class RoutingRule(Base):
    """Which providers a payment goes to when the caller names none: a rule matches a payment by
    its currency, the customer's billing country, its amount (minor units of ``currency``) and the
    product type (each condition NULL: any); the first matching rules by ``position`` win, one of
    them picked by ``weight`` (deterministically per payment), and its ``provider_ids`` are tried in
    order: the primary, then the fallbacks."""

    __tablename__ = "payment_routing_rules"
    __table_args__ = table_args(
        sa.CheckConstraint("weight >= 0", name="weight_not_negative"),
        sa.CheckConstraint("min_amount_cents IS NULL OR min_amount_cents >= 0", name="min_amount_not_negative"),
        sa.CheckConstraint(
            "min_amount_cents IS NULL OR max_amount_cents IS NULL OR min_amount_cents <= max_amount_cents",
            name="amount_bounds_ordered",
        ),
        sa.Index("idx_payment_routing_rules_position", "is_active", "position"),
    )

    id: Mapped[str] = id_column("rr")
    name: Mapped[str | None] = mapped_column(sa.String(255))
    position: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default=sa.text("0"))
    currency: Mapped[str | None] = mapped_column(sa.String(3))
    country: Mapped[str | None] = mapped_column(sa.String(2))
    min_amount_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    max_amount_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    product_type: Mapped[str | None] = mapped_column(sa.String(50))
    weight: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1, server_default=sa.text("1"))
    provider_ids: Mapped[list[Any]] = mapped_column(JSONType, nullable=False)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True, server_default=sa.true())
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
