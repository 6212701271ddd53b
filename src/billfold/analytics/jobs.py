"""Snapshots at work (docs/analytics.md "## Snapshots"): the worker's nightly sweep, backfill, the
demo's history of nightly runs, and the months the terminal report prints.

Each day is taken in a transaction of its own (``snapshots.take`` locks, deletes the day's rows
and writes them anew), so an interrupted backfill keeps the days it finished and can simply be
run again, and a day is never half written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from billfold.analytics import cohorts, metrics, snapshots
from billfold.analytics.cohorts import add_months, month_of
from billfold.kit import clock
from billfold.kit.db import transaction
from billfold.kit.sweeps import Context, sweep

NIGHTLY = "analytics.snapshots"
CATCH_UP_DAYS = 31
"""How far back the nightly sweep looks: a worker down for a week catches the week up; days missed
longer ago than this are left to ``backfill`` (a moved sandbox clock or a long outage would
otherwise have every run compute months of days)."""
NIGHTLY_DELAY = timedelta(minutes=5)
"""When, after a day's end, the demo's history says the nightly sweep took it."""
DAY = timedelta(days=1)


def yesterday(now: datetime | None = None) -> date:
    """The last day that is over, by the clock (UTC)."""
    return (now or clock.now()).astimezone(clock.UTC).date() - DAY


def due_days(session: Session, today: date) -> list[date]:
    """The days the nightly sweep should take on ``today``, oldest first: the days after the last
    one taken after it ended, up to yesterday but no more than ``CATCH_UP_DAYS`` back, that have
    no such rows (a day only taken on demand while it ran is taken again); just yesterday when no
    day was ever taken (``backfill`` fills earlier history)."""
    last_day = today - DAY
    oldest = last_day - (CATCH_UP_DAYS - 1) * DAY
    last = snapshots.last_settled(session, today)
    first = last_day if last is None else max(last + DAY, oldest)
    if first > last_day:
        return []
    settled = snapshots.settled_days(session, first, last_day)
    return [day for day in days_between(first, last_day) if day not in settled]


def take_if_unsettled(session: Session, day: date, method: str) -> bool:
    """Take ``day`` unless another taker did it after the day ended; whether it was taken. The lock
    comes first, so a second worker waits for the first and then finds the day done."""
    snapshots.lock(session, day)
    if snapshots.settled_days(session, day, day):
        return False
    snapshots.take(session, day, method=method)
    return True


@sweep(NIGHTLY, every=timedelta(minutes=10))
def take_nightly(context: Context) -> int:
    """Yesterday's snapshot, and any day missed since the last one (a worker down for three nights
    takes the three), ``scheduled``; how many days were taken. Then the retention matrix's settled
    months not stored yet (``cohorts.take_due``). Cheap when there is nothing to do:
    one query finds yesterday done, two that no month is due. Nothing when ``Settings.analytics_nightly`` is off."""
    if not context.settings.analytics_nightly:
        return 0
    with transaction(context.sessions) as session:
        days = due_days(session, clock.now().astimezone(clock.UTC).date())
    done = 0
    for day in days:
        with transaction(context.sessions) as session:
            done += take_if_unsettled(session, day, "scheduled")
    with transaction(context.sessions) as session:
        months = cohorts.due_months(session)
    if months:  # the retention matrix's months, each once settled (not counted in the days)
        with transaction(context.sessions) as session:
            cohorts.take_due(session)
    return done


def days_between(first: date, last: date) -> list[date]:
    return [first + i * DAY for i in range((last - first).days + 1)]


def backfill(
    sessions: sessionmaker[Session],
    first: date,
    last: date,
    *,
    method: str = "on_demand",
    on_day: Callable[[int, int, date], None] | None = None,
) -> int:
    """Take every day from ``first`` to ``last`` (both included, oldest first), one transaction per
    day; how many. Running it again replaces the same days."""
    if first > last:
        raise ValueError("the first day comes after the last")
    days = days_between(first, last)
    for number, day in enumerate(days, 1):
        with transaction(sessions) as session:
            snapshots.take(session, day, method=method)
        if on_day:
            on_day(number, len(days), day)
    return len(days)


def fill_history(
    sessions: sessionmaker[Session], first: date, last: date, *, on_day: Callable[[int, int, date], None] | None = None
) -> int:
    """Take every day from ``first`` to ``last`` as the nightly sweep would have, each under a clock
    stopped ``NIGHTLY_DELAY`` after the day ended (so ``created_at`` and ``data_freshness`` are what
    a nightly run writes), ``scheduled``; for a history made after the fact (the demo). A day's
    figures are the state at its end, which the rows' timestamps keep, so they equal the nightly
    ones."""
    days = days_between(first, last) if first <= last else []
    for number, day in enumerate(days, 1):
        with clock.using(clock.FrozenClock(metrics.end_of(day) + NIGHTLY_DELAY)), transaction(sessions) as session:
            snapshots.take(session, day, method="scheduled")
        if on_day:
            on_day(number, len(days), day)
    return len(days)


# --- the report's months ---------------------------------------------------------------------------

REPORT_METRICS = ("mrr", "mrr_net_new", "subscriptions_active", "revenue_gross", "revenue_refunds", "revenue_net",
                  "logo_churn_rate", "revenue_churn_rate")


@dataclass
class Month:
    """One currency's month in the report. Money in minor units; rates as stored (four places)."""

    month: date
    last_day: date
    currency: str
    mrr: int = 0
    movements: dict[str, int] = field(default_factory=lambda: {k: 0 for k in (*metrics.MOVEMENT_KINDS, "net_new")})
    active: int = 0
    gross: int = 0
    refunds: int = 0
    net: int = 0
    logo_churn: Decimal | None = None
    revenue_churn: Decimal | None = None
    computed_days: int = 0


def _day_figures(session: Session, day: date, stored: dict[date, list[Any]], full: bool) -> tuple[dict[tuple[str, str | None], Any], bool]:
    """A day's figures by (metric, currency): the ``breakdown`` of its snapshot rows (``value`` is
    the exact figure), or computed when the day has none (``full``: every metric; else revenue and
    movements only). Whether it was computed."""
    rows = stored.get(day)
    if rows:
        return {(r.metric_type, r.currency): r.breakdown for r in rows}, False
    if full:
        values = metrics.day_metrics(session, day)
    else:
        moved = metrics.movements(session, metrics.start_of(day), metrics.end_of(day))
        values = metrics.revenue(session, day) + [
            metrics.MetricValue("mrr_net_new", cur, kinds["net_new"], "cents", {"movements": kinds}) for cur, kinds in moved.items()
        ]
    return {(v.metric_type, v.currency): {"value": v.value, **v.breakdown} for v in values if v.value is not None}, True


def report_months(session: Session, months: int, *, last_day: date, currency: str | None = None) -> list[Month]:
    """The ``months`` calendar months ending with ``last_day``'s, per currency (oldest first): MRR,
    active subscriptions and churn (the 30 days ending then) at each month's last day (``last_day``
    for its own month); MRR movements and revenue summed over the month's days. Read from the
    snapshot rows where a day has them, computed for the days that have none (counted in
    ``computed_days``): both are the same figures (tests/test_analytics_snapshots.py)."""
    first_month = add_months(month_of(last_day), -(months - 1))
    stored: dict[date, list[Any]] = defaultdict(list)
    for metric_type in REPORT_METRICS:
        for row in snapshots.series(session, metric_type, first_month, last_day, currency=currency):
            stored[row.snapshot_date].append(row)
    out: dict[tuple[date, str], Month] = {}
    for index in range(months):
        month = add_months(first_month, index)
        end = min(add_months(month, 1) - DAY, last_day)
        for day in days_between(month, end):
            figures, computed = _day_figures(session, day, stored, full=day == end)
            currencies = {cur for (_, cur) in figures if cur and (currency is None or cur == currency)}
            for cur in currencies:
                m = out.setdefault((month, cur), Month(month, end, cur))
                m.computed_days += computed
                for metric_type, attribute in (("revenue_gross", "gross"), ("revenue_refunds", "refunds"), ("revenue_net", "net")):
                    if (metric_type, cur) in figures:
                        setattr(m, attribute, getattr(m, attribute) + int(figures[metric_type, cur]["value"]))
                for kind, cents in figures.get(("mrr_net_new", cur), {}).get("movements", {}).items():
                    m.movements[kind] += int(cents)
                if day == end:
                    m.mrr = int(figures.get(("mrr", cur), {}).get("value", 0))
                    m.active = int(figures.get(("subscriptions_active", cur), {}).get("value", 0))
                    for metric_type, attribute in (("logo_churn_rate", "logo_churn"), ("revenue_churn_rate", "revenue_churn")):
                        value = figures.get((metric_type, cur), {}).get("value")
                        setattr(m, attribute, None if value is None else Decimal(str(value)))
    return sorted(out.values(), key=lambda m: (m.currency, m.month))
