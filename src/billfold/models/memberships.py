"""Spec § Membership System: membership_types, user_memberships."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import JSONType, UTCDateTime

DURATION_TYPES = ("recurring", "fixed", "lifetime")
MEMBERSHIP_STATUSES = ("active", "expired", "cancelled", "pending")


class MembershipType(Base):
    __tablename__ = "membership_types"
    __table_args__ = table_args(sa.Index("idx_membership_types_is_active", "is_active"))

    id: Mapped[str] = id_column("mtyp")
    name: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    description: Mapped[str | None] = mapped_column(sa.Text)
    duration_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    duration_days: Mapped[int | None] = mapped_column(sa.Integer)
    price_cents: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(sa.String(3), nullable=False, default="USD", server_default="USD")
    features: Mapped[list[Any] | None] = mapped_column(JSONType)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True, server_default=sa.true())
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class UserMembership(Base):
    __tablename__ = "user_memberships"
    __table_args__ = table_args(
        sa.Index("idx_user_memberships_user_id", "user_id"),
        sa.Index("idx_user_memberships_status", "status"),
        sa.Index("idx_user_memberships_order_id", "order_id"),  # a foreign key read by (migration 0022)
        sa.Index("idx_user_memberships_subscription_id", "subscription_id"),  # a foreign key read by (migration 0022)
    )

    id: Mapped[str] = id_column("umem")
    user_id: Mapped[str] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    membership_type_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("membership_types.id", ondelete="RESTRICT"), nullable=False
    )
    subscription_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("subscriptions.id", ondelete="SET NULL")
    )
    order_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("orders.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    start_date: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    end_date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    auto_renew: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False, server_default=sa.false())
    addons: Mapped[list[Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
