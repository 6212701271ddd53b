"""Billfold's own tables for signing in, beyond the spec (see docs/schema.md): sessions,
single-use challenges, API keys and sign-in throttles."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args
from billfold.kit.db.types import JSONType, UTCDateTime

SESSION_TRANSPORTS = ("cookie", "bearer")
API_KEY_SCOPES = ("read", "write")


class AuthSession(Base):
    """A signed-in user on one device. The token is shown once; only its SHA-256 is kept."""

    __tablename__ = "auth_sessions"
    __table_args__ = table_args(sa.Index("idx_auth_sessions_user_id", "user_id"))

    id: Mapped[str] = id_column("ses")
    user_id: Mapped[str] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    token_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    transport: Mapped[str] = mapped_column(sa.String(20), nullable=False)
    user_agent: Mapped[str | None] = mapped_column(sa.String(255))
    ip_address: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = created_at_column()
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuthChallenge(Base):
    """Something a user must answer once, before it expires: a WebAuthn challenge, or the second
    step of a sign-in that needs a second factor."""

    __tablename__ = "auth_challenges"
    __table_args__ = table_args(sa.Index("idx_auth_challenges_user_id", "user_id"))

    id: Mapped[str] = id_column("chl")
    user_id: Mapped[str | None] = mapped_column(sa.String(255), sa.ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    secret_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = created_at_column()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """A key for the merchant's backend. Shown once; only its SHA-256 and first characters are kept."""

    __tablename__ = "api_keys"
    __table_args__ = table_args()

    id: Mapped[str] = id_column("key")
    name: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    key_prefix: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    key_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    created_by_user_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = created_at_column()
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SignInThrottle(Base):
    """Failed sign-ins per key (``address:<ip>``, ``email:<address>``) in the current window, and
    the consecutive failures of one account (``user:<id>``) that lock it."""

    __tablename__ = "sign_in_throttles"
    __table_args__ = table_args()

    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    failures: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default=sa.text("0"))
    window_started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class OrganizationInvitation(Base):
    """An invitation to join an organization, sent to an email address that may not have an
    account yet. The token travels only in the email; only its SHA-256 is kept."""

    __tablename__ = "organization_invitations"
    __table_args__ = table_args(
        sa.Index("idx_organization_invitations_organization_id", "organization_id"),
        sa.Index("idx_organization_invitations_email", "email"),
    )

    id: Mapped[str] = id_column("inv")
    organization_id: Mapped[str] = mapped_column(
        sa.String(255), sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    email: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    role: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    token_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    invited_by_user_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = created_at_column()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accepted_by_user_id: Mapped[str | None] = mapped_column(
        sa.String(255), sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
