"""Billfold's own table for the sandbox billing clock (see docs/operations.md#billing-clock)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, table_args
from billfold.kit.db.types import UTCDateTime, current_timestamp_utc

CLOCK_ROW = 1


class BillingClock(Base):
    """One row: how far the whole system's clock runs ahead of real time in sandbox mode.
    Every process (API, workers) reads it, so they all agree on ``now``. It only grows."""

    __tablename__ = "billing_clock"
    __table_args__ = table_args(
        sa.CheckConstraint(f"id = {CLOCK_ROW}", name="single_row"),
        sa.CheckConstraint("offset_seconds >= 0", name="offset_not_negative"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False, default=CLOCK_ROW)
    offset_seconds: Mapped[int] = mapped_column(
        sa.BigInteger, nullable=False, default=0, server_default=sa.text("0")
    )
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=current_timestamp_utc())
