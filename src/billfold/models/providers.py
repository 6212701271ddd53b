"""Spec § Payment Provider Integration: payment_providers, provider_customers, payment_methods."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import JSONType
from billfold.models.accounts import owner_check


class PaymentProvider(Base):
    """A provider Billfold can charge through; its id is a slug such as ``stripe`` or ``sandbox``."""

    __tablename__ = "payment_providers"
    __table_args__ = table_args()

    id: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    display_name: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    picture: Mapped[str | None] = mapped_column(sa.String(255))
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True, server_default=sa.true())
    supports_subscriptions: Mapped[bool] = mapped_column(
        sa.Boolean, nullable=False, default=False, server_default=sa.false()
    )
    supports_saved_methods: Mapped[bool] = mapped_column(
        sa.Boolean, nullable=False, default=False, server_default=sa.false()
    )
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class ProviderCustomer(Base):
    __tablename__ = "provider_customers"
    __table_args__ = table_args(
        sa.UniqueConstraint("provider_id", "provider_customer_id"),
        owner_check(),
        sa.Index("idx_provider_customers_user_id", "user_id"),  # a foreign key read by (migration 0022)
        sa.Index("idx_provider_customers_organization_id", "organization_id"),  # a foreign key read by (migration 0022)
    )

    id: Mapped[str] = id_column("pcus")
    user_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="CASCADE"))
    organization_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("organizations.id", ondelete="CASCADE")
    )
    provider_id: Mapped[str] = mapped_column(
        sa.String(50), sa.ForeignKey("payment_providers.id", ondelete="CASCADE"), nullable=False
    )
    provider_customer_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class PaymentMethod(Base):
    """A saved way to pay, known to Billfold only by the provider's token and what is safe to show."""

    __tablename__ = "payment_methods"
    __table_args__ = table_args(
        owner_check(),
        sa.Index("idx_payment_methods_user_id", "user_id"),
        sa.Index("idx_payment_methods_organization_id", "organization_id"),
        sa.Index("idx_payment_methods_provider_id", "provider_id"),
    )

    id: Mapped[str] = id_column("pm")
    user_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="CASCADE"))
    organization_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("organizations.id", ondelete="CASCADE")
    )
    provider_id: Mapped[str] = mapped_column(
        sa.String(50), sa.ForeignKey("payment_providers.id", ondelete="CASCADE"), nullable=False
    )
    provider_payment_method_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    payment_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    last_four: Mapped[str | None] = mapped_column(sa.String(4))
    expiry_month: Mapped[str | None] = mapped_column(sa.String(2))
    expiry_year: Mapped[str | None] = mapped_column(sa.String(4))
    card_brand: Mapped[str | None] = mapped_column(sa.String(50))
    is_default: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False, server_default=sa.false())
    billing_address_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("addresses.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
