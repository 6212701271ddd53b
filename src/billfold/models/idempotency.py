"""Billfold's own table for ``Idempotency-Key``s (see docs/schema.md and ``billfold.idempotency``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, created_at_column, id_column, table_args
from billfold.kit.db.types import JSONType, UTCDateTime

STARTED = "started"
FINISHED = "finished"


class IdempotencyKey(Base):
    """One ``Idempotency-Key`` of one caller: the request it was first used with (as a hash), how
    far that request got (``recovery_point``), who holds it now (``lock_token``, ``locked_at``) and,
    once finished, the response every retry gets back."""

    __tablename__ = "idempotency_keys"
    __table_args__ = table_args(
        sa.UniqueConstraint("scope", "idem_key"),
        sa.Index("idx_idempotency_keys_created_at", "created_at"),
    )

    id: Mapped[str] = id_column("idem")
    scope: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    idem_key: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    request_method: Mapped[str] = mapped_column(sa.String(10), nullable=False)
    request_path: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    request_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    recovery_point: Mapped[str] = mapped_column(
        sa.String(50), nullable=False, default=STARTED, server_default=sa.text(f"'{STARTED}'")
    )
    lock_token: Mapped[str | None] = mapped_column(sa.String(36))
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_run_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = created_at_column()
    response_code: Mapped[int | None] = mapped_column(sa.Integer)
    response_body: Mapped[Any | None] = mapped_column(JSONType)
