"""Billfold's own table of facts about the installation itself (not the shop's data): when a
worker last ran a round, and whether the demo was loaded to the end."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db.base import Base, table_args
from billfold.kit.db.types import UTCDateTime, current_timestamp_utc

WORKER_HEARTBEAT = "worker_heartbeat"
"""Written by every round of a worker loop (``billfold worker``, the embedded worker)."""
DEMO = "demo"
"""``loading`` in the transaction that loads the demo shop; ``loaded`` when its history is done."""


class InstanceMark(Base):
    """One row per fact, by name: a short value and when it was last written (real time)."""

    __tablename__ = "instance_marks"
    __table_args__ = table_args()

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=current_timestamp_utc())
