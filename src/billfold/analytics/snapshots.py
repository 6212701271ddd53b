"""``analytics_snapshots``: a day's figures (``metrics.day_metrics``) stored, one row per (date,
metric, currency), so a series over months is read, not recomputed. See docs/analytics.md.

``take`` computes a day and replaces whatever that day had: its rows, and its ``analytics_mrr_movers``
(the customers whose MRR moved that day, which later days' churn windows read), are deleted and
written anew in the caller's transaction, so a reader sees the old day or the new one, never a mix.
The day is derived from the day before when that one is stored (``metrics.day_figures``). Each row
says how it was made (``calculation_method``: ``scheduled`` by the worker's nightly sweep,
``on_demand`` from the API or the command line, ``manual``), how long the whole day took
(``calculation_duration_ms``, measured), and how settled its figures were when taken
(``data_freshness``: ``real_time`` for a day not over yet, ``recent`` for one that ended less than a
day before, ``historical`` after that).

Two takes at once (the nightly sweep and an on-demand one from the API, or two workers) are
serialised by ``lock``: the first thing ``take`` does is lock one ``instance_marks`` row (an upsert,
which waits for the other transaction on PostgreSQL and MariaDB; SQLite has one writer at a time),
so the second take deletes and writes after the first committed: one set of rows, no error. (The
unique key cannot do it alone: the memberships rows have no currency, and NULLs never collide.)

``metric_value`` is DECIMAL(20,2): money in major units, a count, or a rate to two places. The
exact figure is in ``breakdown``: ``value`` (minor units for money, the rate to four places) and
``unit``, beside what the metric breaks down into (MRR by plan, movements by kind). A rate that is
undefined that day (nothing to divide by) has no row.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold import instance
from billfold.analytics import metrics
from billfold.kit import clock
from billfold.kit.ids import new_id
from billfold.models import AnalyticsMrrMover, AnalyticsSnapshot

METHODS = ("scheduled", "on_demand", "manual")
LOCK = "analytics.snapshots"
"""The ``instance_marks`` row a take locks; its value is the day last taken."""


def freshness(day: date) -> str:
    """How settled a day's figures are now (see the module's docstring)."""
    ended = metrics.end_of(day)
    now = clock.now()
    if now < ended:
        return "real_time"
    return "recent" if now - ended < timedelta(days=1) else "historical"


def lock(session: Session, day: date) -> None:
    """Hold the snapshots' lock until ``session``'s transaction ends (see the module's docstring).
    Take it before reading what to take: on MariaDB a transaction's reads see the database as of
    its first read."""
    instance.mark(session, LOCK, day.isoformat())  # (an upsert: the row stays locked until the end)


def _exact(value: int | Decimal) -> int | str:
    return value if isinstance(value, int) else str(value)


def take(session: Session, day: date, *, method: str = "scheduled") -> list[dict[str, Any]]:
    """Compute ``day``'s figures and replace its snapshot rows with them, in ``session``'s
    transaction; the rows written, as dictionaries."""
    if method not in METHODS:
        raise ValueError(f"calculation_method is one of {', '.join(METHODS)}, not {method!r}")
    lock(session, day)
    started = time.perf_counter()
    figures = metrics.day_figures(session, day)
    values = figures.values
    duration_ms = round((time.perf_counter() - started) * 1000)
    fresh, now = freshness(day), clock.now()
    rows = [
        {
            "id": new_id("snap"), "snapshot_date": day, "metric_type": v.metric_type, "metric_value": v.metric_value,
            "currency": v.currency, "breakdown": {"value": _exact(v.value), "unit": v.unit, **v.breakdown},
            "calculation_method": method, "calculation_duration_ms": duration_ms, "data_freshness": fresh,
            "created_at": now, "updated_at": now,
        }
        for v in values
        if v.value is not None
    ]
    session.execute(sa.delete(AnalyticsSnapshot).where(AnalyticsSnapshot.snapshot_date == day))
    session.execute(sa.delete(AnalyticsMrrMover).where(AnalyticsMrrMover.snapshot_date == day))
    if rows:
        session.execute(sa.insert(AnalyticsSnapshot), rows)
    movers = [
        {"snapshot_date": day, "currency": m.currency, "customer_id": m.customer_id, "before_cents": m.before_cents, "after_cents": m.after_cents}
        for m in figures.movers
    ]
    for i in range(0, len(movers), 5000):
        session.execute(sa.insert(AnalyticsMrrMover), movers[i:i + 5000])
    return rows


def series(
    session: Session, metric_type: str, first_day: date, last_day: date, *, currency: str | None = None
) -> list[AnalyticsSnapshot]:
    """The stored rows of ``metric_type`` from ``first_day`` to ``last_day`` (both included), by
    day then currency; one currency's with ``currency``."""
    statement = sa.select(AnalyticsSnapshot).where(
        AnalyticsSnapshot.metric_type == metric_type,
        AnalyticsSnapshot.snapshot_date >= first_day,
        AnalyticsSnapshot.snapshot_date <= last_day,
    )
    if currency is not None:
        statement = statement.where(AnalyticsSnapshot.currency == currency)
    return list(session.scalars(statement.order_by(AnalyticsSnapshot.snapshot_date, AnalyticsSnapshot.currency)))


def days_taken(session: Session, first_day: date, last_day: date) -> set[date]:
    """The days from ``first_day`` to ``last_day`` that have snapshot rows."""
    return set(
        session.scalars(
            sa.select(AnalyticsSnapshot.snapshot_date)
            .where(AnalyticsSnapshot.snapshot_date >= first_day, AnalyticsSnapshot.snapshot_date <= last_day)
            .distinct()
        )
    )


def settled_days(session: Session, first_day: date, last_day: date) -> set[date]:
    """The days from ``first_day`` to ``last_day`` whose rows were taken after the day ended
    (``data_freshness`` other than ``real_time``): the ones the nightly sweep need not take again."""
    return set(
        session.scalars(
            sa.select(AnalyticsSnapshot.snapshot_date)
            .where(
                AnalyticsSnapshot.snapshot_date >= first_day, AnalyticsSnapshot.snapshot_date <= last_day,
                AnalyticsSnapshot.data_freshness != "real_time",
            )
            .distinct()
        )
    )


def last_settled(session: Session, before: date) -> date | None:
    """The latest day before ``before`` whose rows were taken after it ended, or None."""
    return session.scalar(
        sa.select(sa.func.max(AnalyticsSnapshot.snapshot_date)).where(
            AnalyticsSnapshot.snapshot_date < before, AnalyticsSnapshot.data_freshness != "real_time"
        )
    )
