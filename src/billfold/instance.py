"""Facts about the installation itself, kept in ``instance_marks``: the worker's heartbeat (for
``/healthz``) and whether the demo shop finished loading (for ``billfold demo --if-empty``).

Times here are real time (``clock.SystemClock``), not the billing clock: they say whether a
process is alive, which moving the sandbox clock forward does not change."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.kit import clock
from billfold.kit.db.dialects import upsert
from billfold.models import InstanceMark
from billfold.models.instance import DEMO, WORKER_HEARTBEAT

LATE_AFTER = timedelta(minutes=2)
"""A heartbeat older than this (or than three worker ticks, if longer) makes the worker ``late``."""


def real_now() -> datetime:
    return clock.SystemClock().now()


def mark(session: Session, name: str, value: str | None) -> None:
    """Write (or overwrite) the fact ``name``, stamped with the real time."""
    upsert(session, InstanceMark.__table__, [{"name": name, "value": value and value[:255], "at": real_now()}], key=["name"])


def read(session: Session, name: str) -> InstanceMark | None:
    return session.scalars(sa.select(InstanceMark).where(InstanceMark.name == name)).one_or_none()


def heartbeat(session: Session) -> None:
    """The worker is alive: called once per round of a worker loop."""
    mark(session, WORKER_HEARTBEAT, f"{socket.gethostname()} pid {os.getpid()}")


@dataclass(frozen=True)
class WorkerHealth:
    last_seen: datetime | None
    lag_seconds: int | None
    status: Literal["ok", "late", "never"]


def worker_health(connection: Session | sa.Connection, tick_seconds: float) -> WorkerHealth:
    """When a worker last ran a round, how long ago, and whether that is longer than it should be."""
    at = connection.execute(sa.select(InstanceMark.at).where(InstanceMark.name == WORKER_HEARTBEAT)).scalar_one_or_none()
    if at is None:
        return WorkerHealth(None, None, "never")
    lag = max(timedelta(0), real_now() - at)
    late = lag > max(LATE_AFTER, timedelta(seconds=3 * tick_seconds))
    return WorkerHealth(at, int(lag.total_seconds()), "late" if late else "ok")


# The demo's marker

DEMO_LOADING, DEMO_LOADED = "loading", "loaded"


def demo_state(session: Session) -> str | None:
    """``loading`` (a load began and has not finished: it was interrupted, or still runs),
    ``loaded``, or None (no demo was ever loaded here)."""
    row = read(session, DEMO)
    return row.value if row else None


def mark_demo(session: Session, state: str) -> None:
    mark(session, DEMO, state)
