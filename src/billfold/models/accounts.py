"""Spec § Core Tables: users, organizations, organization_users, addresses."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args, updated_at_column
from billfold.kit.db.types import JSONType

USER_TYPES = ("individual", "business", "admin")
ORGANIZATION_ROLES = ("owner", "admin", "billing", "member")
ADDRESS_TYPES = ("billing", "shipping", "both")


def owner_check() -> sa.CheckConstraint:
    """The spec's ``CHECK (user_id IS NOT NULL OR organization_id IS NOT NULL)``: a row that
    belongs to a customer belongs to a user or an organization."""
    return sa.CheckConstraint("user_id IS NOT NULL OR organization_id IS NOT NULL", name="owner")


class User(Base):
    __tablename__ = "users"
    __table_args__ = table_args(
        sa.Index("idx_users_email", "email"),
        sa.Index("idx_users_user_name", "user_name"),
    )

    id: Mapped[str] = id_column("usr")
    name: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    last_name: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    email: Mapped[str] = mapped_column(sa.String(255), nullable=False, unique=True)
    user_type: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    picture: Mapped[str | None] = mapped_column(sa.Text)
    user_name: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    password_hash: Mapped[str | None] = mapped_column(sa.Text)
    salt: Mapped[str | None] = mapped_column(sa.String(255))
    recovery_email: Mapped[str | None] = mapped_column(sa.String(255))
    phone: Mapped[str | None] = mapped_column(sa.String(50))
    is_verified: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False, server_default=sa.false())
    is_locked: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False, server_default=sa.false())
    two_factor: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    passkeys: Mapped[list[Any] | None] = mapped_column(JSONType)
    first_time: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True, server_default=sa.true())
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class Organization(Base):
    __tablename__ = "organizations"
    __table_args__ = table_args()

    id: Mapped[str] = id_column("org")
    name: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    owner_user_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    business_email: Mapped[str | None] = mapped_column(sa.String(255))
    business_phone: Mapped[str | None] = mapped_column(sa.String(50))
    tax_id: Mapped[str | None] = mapped_column(sa.String(100))
    address: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class OrganizationUser(Base):
    __tablename__ = "organization_users"
    __table_args__ = table_args(
        sa.UniqueConstraint("organization_id", "user_id"),
        sa.Index("idx_organization_users_user_id", "user_id"),  # a foreign key read by (migration 0022)
    )

    id: Mapped[str] = id_column("oru")
    organization_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[str] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    role: Mapped[str] = mapped_column(sa.String(50), nullable=False, default="member", server_default="member")
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class Address(Base):
    __tablename__ = "addresses"
    __table_args__ = table_args(
        owner_check(),
        sa.Index("idx_addresses_user_id", "user_id"),
        sa.Index("idx_addresses_organization_id", "organization_id"),
        sa.Index("idx_addresses_type", "address_type"),
    )

    id: Mapped[str] = id_column("adr")
    user_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="CASCADE"))
    organization_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("organizations.id", ondelete="CASCADE")
    )
    address_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    is_default: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False, server_default=sa.false())
    name: Mapped[str | None] = mapped_column(sa.String(255))
    line1: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    line2: Mapped[str | None] = mapped_column(sa.String(255))
    city: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    state: Mapped[str | None] = mapped_column(sa.String(255))
    postal_code: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    country: Mapped[str] = mapped_column(sa.String(2), nullable=False)
    phone: Mapped[str | None] = mapped_column(sa.String(50))
    email: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
