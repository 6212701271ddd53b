"""Every analytics number, defined once (docs/analytics.md "## Metrics"), computed set-based in SQL
per currency, with a companion that lists the rows behind it. Instants are UTC; "on day D" means
at the end of D (the instant D+1 00:00:00). Date maths stays in Python bind parameters, so the same
SQL runs on SQLite, PostgreSQL and MariaDB.

MRR is read from what was billed: a subscription's MRR at instant T is the monthly rate of the
``item`` line of its paid invoice (paid by T) whose service period covers T, less that invoice's
discount, unless the subscription was cancelled or paused by T. A yearly line counts a twelfth,
rounded half up to the cent, per line. Trials have no paid line, so they count zero.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from billfold.kit import clock, money
from billfold.models import (
    Invoice,
    InvoiceLine,
    MembershipType,
    Payment,
    Product,
    Refund,
    Subscription,
    SubscriptionBilling,
    UserMembership,
)
from billfold.models.analytics import AnalyticsMrrMover, AnalyticsSnapshot
from billfold.models.webhooks import PaymentEvent
from billfold.subscriptions.proration import round_half_up as half_up

MOVEMENT_KINDS = ("new", "expansion", "contraction", "churned", "reactivation")


def end_of(day: date) -> datetime:
    """The instant a day's figures are taken at: the next midnight, UTC."""
    return datetime.combine(day + timedelta(days=1), time(), tzinfo=clock.UTC)


def start_of(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=clock.UTC)


def without_jit(session: Session) -> None:
    """Turn PostgreSQL's JIT off for the rest of the transaction. Over millions of rows these
    queries cost enough for the planner to compile them, and compiling took 2-8 s a statement at a
    million subscriptions, more than it saved (docs/performance.md, "Analytics")."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SET LOCAL jit = off"))


def ratio(numerator: int, denominator: int) -> Decimal | None:
    """A rate to four decimals (half up); None when there is nothing to divide by."""
    if denominator == 0:
        return None
    return (Decimal(numerator) / Decimal(denominator)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class MetricValue:
    """One figure, shaped for an ``analytics_snapshots`` row. ``unit`` is ``cents`` (an integer in
    the currency's minor unit), ``count`` or ``ratio`` (a Decimal, None when undefined)."""

    metric_type: str
    currency: str | None
    value: int | Decimal | None
    unit: str
    breakdown: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_value(self) -> Decimal | None:
        """The value as stored: major units for money (DECIMAL(20,2)), else the count or rate."""
        if self.value is None:
            return None
        if self.unit == "cents" and self.currency:
            return (Decimal(self.value) / (Decimal(10) ** money.exponent(self.currency))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        return Decimal(self.value)


# Revenue per day


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    return start_of(day), end_of(day)


@dataclass(frozen=True)
class _RevenuePage:
    currency: str | None
    after: tuple[str, str] | None
    limit: int | None

    def of(self, key: str, model: Any, query: sa.Select[Any], taken: int = 0) -> sa.Select[Any]:
        """``revenue_rows``' query of ``key``'s rows, cut to the currency and the page (``taken``
        rows are on it already)."""
        if self.currency:
            query = query.where(model.currency == self.currency)
        if self.after:
            keys = ["payments", "refunds", "failed"]
            if keys.index(key) < keys.index(self.after[0]):
                query = query.where(sa.false())
            elif key == self.after[0]:
                query = query.where(model.id > self.after[1])
        return query.limit(None if self.limit is None else max(self.limit - taken, 0))


def revenue_rows(
    session: Session, day: date, *, currency: str | None = None, after: tuple[str, str] | None = None, limit: int | None = None
) -> dict[str, list[tuple[str, str, int]]]:
    """The rows behind a day's revenue: (id, currency, amount) of payments completed, refunds
    succeeded, and payments failed that day. ``currency`` keeps one currency's; ``after`` (a key
    of the answer, an id) and ``limit`` read one page in the answer's order (payments, refunds,
    failed, each by id): the rows after that one, at most ``limit`` in all."""
    start, end = _day_bounds(day)
    page = _RevenuePage(currency, after, limit)
    paid = session.execute(page.of("payments", Payment,
        sa.select(Payment.id, Payment.currency, Payment.amount_cents)
        .where(Payment.completed_at >= start, Payment.completed_at < end, Payment.status.in_(("completed", "refunded")))
        .order_by(Payment.id)
    )).all()
    refunded = session.execute(page.of("refunds", Refund,
        sa.select(Refund.id, Refund.currency, Refund.amount_cents)
        .where(Refund.completed_at >= start, Refund.completed_at < end, Refund.status == "succeeded")
        .order_by(Refund.id), len(paid)
    )).all()
    failed = session.execute(page.of("failed", Payment,
        sa.select(Payment.id, Payment.currency, Payment.amount_cents)
        .where(Payment.created_at >= start, Payment.created_at < end, Payment.status == "failed")
        .order_by(Payment.id), len(paid) + len(refunded)
    )).all()
    return {"payments": [tuple(r) for r in paid], "refunds": [tuple(r) for r in refunded], "failed": [tuple(r) for r in failed]}


def revenue(session: Session, day: date) -> list[MetricValue]:
    """Gross (payments completed that day, including ones refunded since), refunds (refunds that
    succeeded that day), net = gross − refunds, and failed payments: count of payments created that
    day that failed, and their rate among that day's payments that reached an outcome."""
    start, end = _day_bounds(day)
    gross = dict(session.execute(
        sa.select(Payment.currency, sa.func.sum(Payment.amount_cents))
        .where(Payment.completed_at >= start, Payment.completed_at < end, Payment.status.in_(("completed", "refunded")))
        .group_by(Payment.currency)
    ).all())
    refunds = dict(session.execute(
        sa.select(Refund.currency, sa.func.sum(Refund.amount_cents))
        .where(Refund.completed_at >= start, Refund.completed_at < end, Refund.status == "succeeded")
        .group_by(Refund.currency)
    ).all())
    attempts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for currency, status, n in session.execute(
        sa.select(Payment.currency, Payment.status, sa.func.count())
        .where(Payment.created_at >= start, Payment.created_at < end, Payment.status.in_(("completed", "refunded", "failed")))
        .group_by(Payment.currency, Payment.status)
    ):
        attempts[currency][0] += n
        if status == "failed":
            attempts[currency][1] += n
    out: list[MetricValue] = []
    for currency in sorted(set(gross) | set(refunds) | set(attempts)):
        g, r = int(gross.get(currency) or 0), int(refunds.get(currency) or 0)
        total, failed = attempts[currency] if currency in attempts else (0, 0)
        out += [
            MetricValue("revenue_gross", currency, g, "cents"),
            MetricValue("revenue_refunds", currency, r, "cents"),
            MetricValue("revenue_net", currency, g - r, "cents"),
            MetricValue("payments_failed", currency, failed, "count", {"attempts": total}),
            MetricValue("payment_failure_rate", currency, ratio(failed, total), "ratio", {"failed": failed, "attempts": total}),
        ]
    return out


# Recurring revenue


def _customer() -> sa.ColumnElement[str]:
    return sa.func.coalesce(Subscription.user_id, Subscription.organization_id)


def _line_rate() -> sa.ColumnElement[int]:
    """A line's monthly rate in cents: its amount less its invoice's discount, a twelfth of it for a
    yearly plan (rounded half up: (a + 6) // 12 for a ≥ 0)."""
    amount = InvoiceLine.amount_cents - Invoice.discount_cents
    return sa.case((Product.billing_interval == "yearly", (amount + 6) // 12), else_=amount)


def _covering(at: datetime) -> list[sa.ColumnElement[bool]]:
    """The recurring lines in force at ``at``: paid by then, their period covering it, their
    subscription neither cancelled nor paused by then."""
    return [
        InvoiceLine.kind == "item",
        Invoice.subscription_id.is_not(None),
        InvoiceLine.period_start <= at,
        InvoiceLine.period_end > at,
        Invoice.status == "paid",
        Invoice.paid_date <= at,
        _not_cancelled(at),
        sa.or_(SubscriptionBilling.paused_at.is_(None), SubscriptionBilling.paused_at > at),
    ]


def _not_cancelled(at: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(SubscriptionBilling.cancelled_at.is_(None), SubscriptionBilling.cancelled_at > at)


def _past_due(at: datetime) -> sa.ColumnElement[bool]:
    """A recurring line past due at ``at``: its period covering it, its invoice issued by then and
    not yet paid, its subscription not cancelled by then."""
    return sa.and_(
        InvoiceLine.kind == "item", InvoiceLine.period_start <= at, InvoiceLine.period_end > at,
        Invoice.issue_date <= at, Invoice.status.in_(("open", "uncollectible", "paid")),
        sa.or_(Invoice.paid_date.is_(None), Invoice.paid_date > at), _not_cancelled(at),
    )


def _recurring_lines(*columns: Any, owners: bool = True) -> sa.Select[Any]:
    query = (
        sa.select(*columns)
        .select_from(InvoiceLine)
        .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
        .join(Product, Product.id == InvoiceLine.product_id)
        .outerjoin(SubscriptionBilling, SubscriptionBilling.subscription_id == Invoice.subscription_id)
    )
    return query.join(Subscription, Subscription.id == Invoice.subscription_id) if owners else query


@dataclass(frozen=True)
class MrrRow:
    subscription_id: str
    customer_id: str
    currency: str
    product_id: str
    invoice_line_id: str
    mrr_cents: int


def mrr_rows(
    session: Session, at: datetime, currency: str | None = None, *, after: tuple[str, str] | None = None, limit: int | None = None
) -> list[MrrRow]:
    """The lines that make up MRR at ``at``, one per subscription in force, by subscription and
    line id. ``after`` (a row's subscription and line ids) and ``limit`` read one page: the rows
    after that one, at most ``limit``."""
    query = _recurring_lines(
        Subscription.id, _customer(), Invoice.currency, InvoiceLine.product_id, InvoiceLine.id, _line_rate()
    ).where(*_covering(at))
    if currency:
        query = query.where(Invoice.currency == currency)
    if after:  # (the two >= bounds let the indexes start at the cursor; the OR alone reads from the first row)
        query = query.where(Subscription.id >= after[0], Invoice.subscription_id >= after[0],
                            sa.or_(Subscription.id > after[0], sa.and_(Subscription.id == after[0], InvoiceLine.id > after[1])))
    query = query.order_by(Subscription.id, InvoiceLine.id).limit(limit)
    return [MrrRow(r[0], r[1], r[2], r[3], r[4], int(r[5])) for r in session.execute(query)]


def mrr(session: Session, at: datetime) -> dict[str, tuple[int, dict[str, int]]]:
    """MRR per currency at ``at``: (total cents, cents by plan)."""
    return {cur: (total, by_plan) for cur, (total, by_plan, _) in _mrr_lines(session, at).items()}


def _mrr_lines(session: Session, at: datetime) -> dict[str, tuple[int, dict[str, int], dict[str, int]]]:
    """MRR per currency at ``at``: (total cents, cents by plan, lines in force by plan)."""
    out: dict[str, tuple[int, dict[str, int], dict[str, int]]] = {}
    for currency, product_id, cents, n in session.execute(
        _recurring_lines(Invoice.currency, InvoiceLine.product_id, sa.func.sum(_line_rate()), sa.func.count(), owners=False)
        .where(*_covering(at))
        .group_by(Invoice.currency, InvoiceLine.product_id)
    ):
        total, by_plan, lines = out.get(currency, (0, {}, {}))
        by_plan[product_id], lines[product_id] = int(cents), int(n)
        out[currency] = (total + int(cents), by_plan, lines)
    return out


@dataclass(frozen=True)
class Movement:
    """One customer's MRR change between two instants, in one currency."""

    customer_id: str
    currency: str
    kind: str
    before_cents: int
    after_cents: int
    subscription_ids: tuple[str, ...]

    @property
    def change_cents(self) -> int:
        return self.after_cents - self.before_cents


def movement_rows(
    session: Session, start: datetime, end: datetime, currency: str | None = None, *, with_subscriptions: bool = True
) -> list[Movement]:
    """Every customer whose MRR differs between ``start`` and ``end``, classified: **new** (0 before,
    never billed a recurring period before ``start``), **reactivation** (0 before, billed earlier),
    **churned** (0 after), **expansion** / **contraction** (up / down, both non-zero). Only customers
    whose MRR changed come back from the database; ``with_subscriptions`` adds the subscriptions in
    force at either end (the rows behind each movement)."""
    rows = _changed(session, start, end, [Invoice.currency == currency] if currency else [])
    return _classified(session, start, end, rows, with_subscriptions)


def _changed(session: Session, start: datetime, end: datetime, where: list[sa.ColumnElement[bool]]) -> list[Any]:
    """(user_id, organization_id, currency, before, after, billed earlier) of the owners whose MRR
    differs between ``start`` and ``end``, among the lines matching ``where``."""
    at_start, at_end = sa.and_(*_covering(start)), sa.and_(*_covering(end))
    rate = _line_rate()
    before = sa.func.sum(sa.case((at_start, rate), else_=0))
    after = sa.func.sum(sa.case((at_end, rate), else_=0))
    owner = (Subscription.user_id, Subscription.organization_id, Invoice.currency)
    changed = (
        _recurring_lines(*owner, before.label("before"), after.label("after"))
        .where(sa.or_(at_start, at_end), *where)
        .group_by(*owner)
        .having(before != after)
        .subquery()
    )
    earlier = _billed_before(start, changed)
    return list(session.execute(
        sa.select(changed.c.user_id, changed.c.organization_id, changed.c.currency, changed.c.before, changed.c.after,
                  sa.case((changed.c.before == 0, earlier), else_=sa.false()))
    ).all())


def _classified(session: Session, start: datetime, end: datetime, rows: list[Any], with_subscriptions: bool) -> list[Movement]:
    subs = _subscriptions_of(session, start, end, [(u, o) for u, o, *_ in rows]) if with_subscriptions else {}
    out = []
    for user_id, organization_id, cur, b, a, was_billed in rows:
        b, a = int(b), int(a)
        if b == 0:
            kind = "reactivation" if was_billed else "new"
        elif a == 0:
            kind = "churned"
        else:
            kind = "expansion" if a > b else "contraction"
        customer = user_id or organization_id
        out.append(Movement(customer, cur, kind, b, a, tuple(sorted(subs.get((customer, cur), ())))))
    return sorted(out, key=lambda m: (m.currency, m.kind, m.customer_id))


def _billed_before(at: datetime, changed: sa.Subquery) -> sa.Exists:
    """Whether the customer of a ``changed`` row had a paid recurring period starting before ``at``
    in that currency; evaluated only for customers at zero, by the owner's index."""
    line, invoice, sub = aliased(InvoiceLine), aliased(Invoice), aliased(Subscription)
    return (
        sa.exists()
        .where(
            sa.or_(sub.user_id == changed.c.user_id, sub.organization_id == changed.c.organization_id),
            invoice.subscription_id == sub.id, invoice.currency == changed.c.currency, invoice.status == "paid",
            invoice.paid_date <= at, line.invoice_id == invoice.id, line.kind == "item", line.period_start < at,
        )
    )


def _subscriptions_of(
    session: Session, start: datetime, end: datetime, owners: list[tuple[str | None, str | None]]
) -> dict[tuple[str, str], set[str]]:
    """The subscriptions in force at either end, per (customer, currency), for these owners."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for kind, column in ((0, Subscription.user_id), (1, Subscription.organization_id)):
        ids = sorted({owner[kind] for owner in owners if owner[kind]})
        for i in range(0, len(ids), 500):
            for c, cur, sub in session.execute(
                _recurring_lines(column, Invoice.currency, Subscription.id).distinct().where(
                    sa.or_(sa.and_(*_covering(start)), sa.and_(*_covering(end))), column.in_(ids[i:i + 500]),
                )
            ):
                found[c, cur].add(sub)
    return found


def movements(session: Session, start: datetime, end: datetime) -> dict[str, dict[str, int]]:
    """MRR movements per currency: cents per kind, and ``net_new`` (their sum, which is exactly
    MRR at ``end`` − MRR at ``start``)."""
    return _by_kind(movement_rows(session, start, end, with_subscriptions=False))


def _by_kind(moved: list[Movement]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for m in moved:
        kinds = out.setdefault(m.currency, {k: 0 for k in MOVEMENT_KINDS} | {"net_new": 0})
        kinds[m.kind] += m.change_cents
        kinds["net_new"] += m.change_cents
    return out


# Subscriptions


def subscription_counts(session: Session, at: datetime) -> dict[str, dict[str, int]]:
    """Per currency: **active** (a paid period in force, not paused or cancelled: the subscriptions
    in MRR), **trialing** (created, trial not yet ended, not cancelled), **past_due** (a period in
    force whose invoice was issued and not yet paid at ``at``, not cancelled)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"active": 0, "trialing": 0, "past_due": 0})
    for cur, n in session.execute(
        _recurring_lines(Invoice.currency, sa.func.count(sa.distinct(Invoice.subscription_id)), owners=False)
        .where(*_covering(at)).group_by(Invoice.currency)
    ):
        out[cur]["active"] = int(n)
    for cur, n in _trialing(session, at).items():
        out[cur]["trialing"] = n
    for cur, n in session.execute(
        _recurring_lines(Invoice.currency, sa.func.count(sa.distinct(Invoice.subscription_id)), owners=False)
        .where(_past_due(at))
        .group_by(Invoice.currency)
    ):
        out[cur]["past_due"] = int(n)
    return dict(out)


def _trialing(session: Session, at: datetime) -> dict[str, int]:
    return {cur: int(n) for cur, n in session.execute(
        sa.select(Subscription.currency, sa.func.count())
        .select_from(Subscription)
        .outerjoin(SubscriptionBilling, SubscriptionBilling.subscription_id == Subscription.id)
        .where(Subscription.trial_end.is_not(None), Subscription.created_at <= at, Subscription.trial_end > at, _not_cancelled(at))
        .group_by(Subscription.currency)
    )}


def trial_conversion(session: Session, start: datetime, end: datetime) -> dict[str, tuple[int, int, Decimal | None]]:
    """Per currency, trials that ended in [start, end): (ended, converted, rate). Converted: the
    subscription had a paid invoice by ``end``."""
    paid = sa.exists().where(Invoice.subscription_id == Subscription.id, Invoice.status == "paid", Invoice.paid_date <= end)
    out = {}
    for cur, ended, converted in session.execute(
        sa.select(Subscription.currency, sa.func.count(), sa.func.sum(sa.case((paid, 1), else_=0)))
        .where(Subscription.trial_end.is_not(None), Subscription.trial_end >= start, Subscription.trial_end < end)
        .group_by(Subscription.currency)
    ):
        out[cur] = (int(ended), int(converted or 0), ratio(int(converted or 0), int(ended)))
    return out


@dataclass(frozen=True)
class Retention:
    """The customers paying at ``start`` and what became of them by ``end``, in one currency, and
    who pays at ``end``."""

    currency: str
    customers_at_start: int
    customers_churned: int
    mrr_at_start: int
    churned_cents: int  # ≤ 0
    contraction_cents: int  # ≤ 0
    expansion_cents: int  # ≥ 0
    customers_at_end: int
    mrr_at_end: int

    @property
    def logo_churn_rate(self) -> Decimal | None:
        return ratio(self.customers_churned, self.customers_at_start)

    @property
    def revenue_churn_rate(self) -> Decimal | None:
        return ratio(-(self.churned_cents + self.contraction_cents), self.mrr_at_start)

    @property
    def net_revenue_retention(self) -> Decimal | None:
        return ratio(self.mrr_at_start + self.expansion_cents + self.contraction_cents + self.churned_cents, self.mrr_at_start)

    @property
    def arpu_cents(self) -> int | None:
        """MRR at ``end`` / customers paying at ``end``, half up; None with no customer."""
        return half_up(self.mrr_at_end, self.customers_at_end) if self.customers_at_end else None

    @property
    def ltv_estimate_cents(self) -> int | None:
        """ARPU / logo churn rate: an estimate, in the period's unit (a month's churn: months of
        ARPU). None when nobody churned (or nobody paid): it is never divided by zero."""
        if self.arpu_cents is None or not self.customers_churned:
            return None
        return half_up(self.arpu_cents * self.customers_at_start, self.customers_churned)


def retention(session: Session, start: datetime, end: datetime) -> dict[str, Retention]:
    """Churn and retention over [start, end] of the customers paying at ``start`` (new and
    reactivated customers are not in it), in one query over the periods in force at either end."""
    at_start, at_end = sa.and_(*_covering(start)), sa.and_(*_covering(end))
    rate = _line_rate()
    owner = (Subscription.user_id, Subscription.organization_id, Invoice.currency)
    per = (
        _recurring_lines(
            *owner,
            sa.func.sum(sa.case((at_start, rate), else_=0)).label("before"),
            sa.func.sum(sa.case((at_end, rate), else_=0)).label("after"),
        )
        .where(sa.or_(at_start, at_end))
        .group_by(*owner)
        .subquery()
    )
    x, y = per.c.before, per.c.after

    def total(condition: sa.ColumnElement[bool], value: Any) -> Any:
        return sa.func.sum(sa.case((condition, value), else_=0))

    out = {}
    for row in session.execute(
        sa.select(
            per.c.currency, total(x > 0, 1), total(sa.and_(x > 0, y == 0), 1), total(x > 0, x),
            total(sa.and_(x > 0, y == 0), -x), total(sa.and_(y > 0, y < x), y - x), total(sa.and_(x > 0, y > x), y - x),
            total(y > 0, 1), total(y > 0, y),
        ).group_by(per.c.currency)
    ):
        out[row[0]] = Retention(row[0], *(int(v or 0) for v in row[1:]))
    return dict(sorted(out.items()))


# Memberships


def memberships(session: Session, start: datetime, end: datetime) -> dict[str, dict[str, int]]:
    """Per membership type: **active** at ``end`` (started by then, not ended by then, not pending),
    **started** and **expired** (its end date passed) in [start, end)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"active": 0, "started": 0, "expired": 0})
    real = UserMembership.status != "pending"
    cases = {
        "active": sa.and_(UserMembership.start_date <= end, sa.or_(UserMembership.end_date.is_(None), UserMembership.end_date > end)),
        "started": sa.and_(UserMembership.start_date >= start, UserMembership.start_date < end),
        "expired": sa.and_(UserMembership.end_date >= start, UserMembership.end_date < end),
    }
    columns = [sa.func.sum(sa.case((condition, 1), else_=0)) for condition in cases.values()]
    for type_id, *counts in session.execute(
        sa.select(MembershipType.id, *columns)
        .join(UserMembership, UserMembership.membership_type_id == MembershipType.id)
        .where(real, UserMembership.start_date < end)
        .group_by(MembershipType.id)
    ):
        out[type_id] = {k: int(v or 0) for k, v in zip(cases, counts)}
    return dict(out)


# One day's full set


ERASING_EVENTS = ("subscription.unpaused", "invoice.void")
"""Changes that alter figures of instants already past (docs/analytics.md "Figures that change after
the fact"): unpausing clears ``paused_at``, so the pause vanishes from the history; voiding an open
invoice takes its periods out of past due at every earlier instant. After one (a void only if the
invoice was issued by the end of a stored day), the day is computed in full, and the churn window
too until its stored days were all taken after it."""
CHUNK = 1000


@dataclass
class CurrencyState:
    """One currency's figures at the end of a day, as a derived day needs them."""

    mrr: int = 0
    by_plan: dict[str, int] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # lines in force by plan
    customers: int = 0
    active: int = 0
    past_due: int = 0


@dataclass(frozen=True)
class DayFigures:
    """A day's figures, the day's MRR movements (the rows ``analytics_mrr_movers`` keeps) and whether
    the day was derived from the day before (``derived``) and its churn window from stored movers
    (``window_derived``)."""

    values: list[MetricValue]
    movers: list[Movement]
    derived: bool
    window_derived: bool


def _stored_states(session: Session, first: date, last: date) -> dict[date, tuple[dict[str, CurrencyState], datetime]] | None:
    """The stored states of the days ``first`` to ``last``, each with when it was taken (its rows'
    earliest ``created_at``); None unless every one of those days was taken after it ended, by this
    version (the MRR rows carry ``customers`` and ``lines_by_plan``: its movers were kept)."""
    rows = session.execute(
        sa.select(AnalyticsSnapshot.snapshot_date, AnalyticsSnapshot.metric_type, AnalyticsSnapshot.currency,
                  AnalyticsSnapshot.breakdown, AnalyticsSnapshot.data_freshness, AnalyticsSnapshot.created_at)
        .where(AnalyticsSnapshot.snapshot_date >= first, AnalyticsSnapshot.snapshot_date <= last,
               AnalyticsSnapshot.metric_type.in_(("mrr", "subscriptions_active", "subscriptions_past_due", "memberships_active")))
    ).all()
    out: dict[date, tuple[dict[str, CurrencyState], datetime]] = {}
    for day, metric, cur, breakdown, fresh, created in rows:
        if fresh == "real_time":
            return None
        states, taken = out.get(day, ({}, created))
        out[day] = (states, min(taken, created))
        if cur is None:
            continue
        breakdown = breakdown or {}
        state = states.setdefault(cur, CurrencyState())
        if metric == "mrr":
            if "customers" not in breakdown or "lines_by_plan" not in breakdown:
                return None
            state.mrr, state.by_plan = int(breakdown["value"]), {k: int(v) for k, v in breakdown["by_plan"].items()}
            state.lines, state.customers = {k: int(v) for k, v in breakdown["lines_by_plan"].items()}, int(breakdown["customers"])
        elif metric == "subscriptions_active":
            state.active = int(breakdown["value"])
        else:
            state.past_due = int(breakdown["value"])
    days = {r[0] for r in rows if r[1] == "memberships_active"}
    if len(days) != (last - first).days + 1:
        return None
    return out


def _erased_since(session: Session, since: datetime, until: datetime) -> bool:
    """Whether a change after the fact was recorded since ``since`` that alters a figure at an
    instant up to ``until``: an unpause, or the void of an invoice issued by ``until``."""
    unpaused = sa.select(sa.literal(1)).where(PaymentEvent.event_type == ERASING_EVENTS[0], PaymentEvent.created_at >= since)
    voided = sa.select(sa.literal(1)).select_from(PaymentEvent).join(Invoice, Invoice.id == PaymentEvent.entity_id).where(
        PaymentEvent.event_type == ERASING_EVENTS[1], PaymentEvent.created_at >= since, Invoice.issue_date <= until)
    return any(session.scalar(q.limit(1)) is not None for q in (unpaused, voided))


def _boundary_subscriptions(session: Session, start: datetime, end: datetime) -> list[str]:
    """The subscriptions with a timestamp in (start, end] that a figure at an instant depends on:
    only their MRR, active and past-due state can differ between ``start`` and ``end``."""
    def within(*columns: Any) -> sa.ColumnElement[bool]:  # (one OR: a renewal ends a line and starts one)
        return sa.or_(*(sa.and_(column > start, column <= end) for column in columns))

    found: set[str] = set(session.scalars(
        sa.select(Invoice.subscription_id).select_from(InvoiceLine).join(Invoice, Invoice.id == InvoiceLine.invoice_id)
        .where(within(InvoiceLine.period_start, InvoiceLine.period_end), InvoiceLine.kind == "item", Invoice.subscription_id.is_not(None))
    ))
    found.update(session.scalars(
        sa.select(Invoice.subscription_id).where(within(Invoice.paid_date, Invoice.issue_date), Invoice.subscription_id.is_not(None))
    ))
    found.update(session.scalars(
        sa.select(SubscriptionBilling.subscription_id).where(within(SubscriptionBilling.cancelled_at, SubscriptionBilling.paused_at))
    ))
    return sorted(found)


def _line_states(session: Session, ids: list[str], start: datetime, end: datetime) -> list[Any]:
    """The item lines of these subscriptions overlapping (start, end]: (subscription, user,
    organization, currency, plan, rate, in MRR at start, at end, past due at start, at end)."""
    flags = [sa.case((condition, 1), else_=0) for condition in (
        sa.and_(*_covering(start)), sa.and_(*_covering(end)), _past_due(start), _past_due(end))]
    rows: list[Any] = []
    for i in range(0, len(ids), CHUNK):
        rows += session.execute(
            _recurring_lines(Invoice.subscription_id, Subscription.user_id, Subscription.organization_id, Invoice.currency,
                             InvoiceLine.product_id, _line_rate(), *flags)
            # (the subscriptions restricted by id too: else PostgreSQL hash-joins all of them per chunk)
            .where(Invoice.subscription_id.in_(ids[i:i + CHUNK]), Subscription.id.in_(ids[i:i + CHUNK]), InvoiceLine.kind == "item",
                   InvoiceLine.period_start <= end, InvoiceLine.period_end > start)
        ).all()
    return rows


def _derived_day(
    session: Session, start: datetime, end: datetime, base: dict[str, CurrencyState]
) -> tuple[dict[str, CurrencyState], list[Movement]]:
    """The state at ``end`` from the state at ``start`` (``base``) and the subscriptions with a
    boundary in between; and the movements between them, from those subscriptions' customers only."""
    states = {cur: CurrencyState(s.mrr, dict(s.by_plan), dict(s.lines), s.customers, s.active, s.past_due) for cur, s in base.items()}
    owners: dict[tuple[str | None, str | None, str], int] = defaultdict(int)
    flags: dict[str, tuple[str, list[int]]] = {}
    boundary = _boundary_subscriptions(session, start, end)
    lines = _line_states(session, boundary, start, end)
    for sub_id, user_id, org_id, cur, plan, rate, in_start, in_end, due_start, due_end in lines:
        state = states.setdefault(cur, CurrencyState())
        rate, change = int(rate), int(in_end) - int(in_start)
        state.mrr += rate * change
        state.by_plan[plan] = state.by_plan.get(plan, 0) + rate * change
        state.lines[plan] = state.lines.get(plan, 0) + change
        owners[user_id, org_id, cur] += rate * change
        _, f = flags.setdefault(sub_id, (cur, [0, 0, 0, 0]))
        for k, v in enumerate((in_start, in_end, due_start, due_end)):
            f[k] |= int(v)
    for cur, f in flags.values():
        state = states[cur]
        state.active += f[1] - f[0]
        state.past_due += f[3] - f[2]
    for state in states.values():
        for plan in [p for p, n in state.lines.items() if n == 0]:
            del state.lines[plan], state.by_plan[plan]
    moved = _owner_movements(session, start, end, {(u, o) for (u, o, _), change in owners.items() if change}, set(boundary), lines)
    for m in moved:
        states[m.currency].customers += (m.after_cents > 0) - (m.before_cents > 0)
    return states, moved


def _owner_movements(
    session: Session, start: datetime, end: datetime, owners: set[tuple[str | None, str | None]], known: set[str], known_lines: list[Any]
) -> list[Movement]:
    """``movement_rows`` restricted to these owners, in steps that keep to the owner and
    subscription indexes: their subscriptions, those subscriptions' lines (``known_lines`` already
    has those of the ``known`` subscriptions), their earlier billing."""
    subs: dict[str, tuple[str | None, str | None]] = {}
    for column, index in ((Subscription.user_id, 0), (Subscription.organization_id, 1)):
        ids = sorted({owner[index] for owner in owners if owner[index]})
        for i in range(0, len(ids), CHUNK):
            for sub_id, user_id, org_id in session.execute(
                sa.select(Subscription.id, Subscription.user_id, Subscription.organization_id).where(column.in_(ids[i:i + CHUNK]))
            ):
                subs[sub_id] = (user_id, org_id)
    totals: dict[tuple[str | None, str | None, str], list[int]] = defaultdict(lambda: [0, 0])
    others = _line_states(session, sorted(set(subs) - known), start, end)
    for sub_id, user_id, org_id, cur, _, rate, in_start, in_end, _, _ in [r for r in known_lines if r[0] in subs] + others:
        totals[user_id, org_id, cur][0] += int(rate) * int(in_start)
        totals[user_id, org_id, cur][1] += int(rate) * int(in_end)
    at_zero = {k[:2] for k, v in totals.items() if v[0] == 0 and v[0] != v[1]}
    zero = sorted(sub_id for sub_id, owner in subs.items() if owner in at_zero)
    billed: set[tuple[str | None, str]] = set()
    for i in range(0, len(zero), CHUNK):
        for user_id, org_id, cur in session.execute(
            sa.select(Subscription.user_id, Subscription.organization_id, Invoice.currency).distinct()
            .select_from(InvoiceLine).join(Invoice, Invoice.id == InvoiceLine.invoice_id)
            .join(Subscription, Subscription.id == Invoice.subscription_id)
            .where(Invoice.subscription_id.in_(zero[i:i + CHUNK]), Subscription.id.in_(zero[i:i + CHUNK]), Invoice.status == "paid", Invoice.paid_date <= start,
                   InvoiceLine.kind == "item", InvoiceLine.period_start < start)
        ):
            billed.update({(user_id, cur), (org_id, cur)})
    rows = [
        (u, o, cur, b, a, b == 0 and ((u is not None and (u, cur) in billed) or (o is not None and (o, cur) in billed)))
        for (u, o, cur), (b, a) in totals.items() if b != a
    ]
    return _classified(session, start, end, rows, False)


def _derived_retention(
    session: Session, day: date, churn_days: int, today: list[Movement], end: dict[str, CurrencyState]
) -> dict[str, Retention] | None:
    """Retention over the ``churn_days`` ending with ``day`` from the stored movers of those days and
    the stored state at the window's start: a customer's MRR differs between the window's ends only
    if it moved on a day inside it. None when a day of the window was not kept (or was kept before a
    change after the fact)."""
    opening = day - timedelta(days=churn_days)
    stored = _stored_states(session, opening, day - timedelta(days=1))
    if stored is None or _erased_since(session, min(taken for _, taken in stored.values()), start_of(day)):
        return None
    first_last: dict[tuple[str, str], list[int]] = {}
    for customer, cur, before, after in session.execute(
        sa.select(AnalyticsMrrMover.customer_id, AnalyticsMrrMover.currency, AnalyticsMrrMover.before_cents, AnalyticsMrrMover.after_cents)
        .where(AnalyticsMrrMover.snapshot_date > opening, AnalyticsMrrMover.snapshot_date < day)
        .order_by(AnalyticsMrrMover.snapshot_date)
    ).all() + [(m.customer_id, m.currency, m.before_cents, m.after_cents) for m in today]:
        pair = first_last.setdefault((customer, cur), [int(before), int(after)])
        pair[1] = int(after)
    start_states = stored[opening][0]
    out = {}
    for cur in sorted(set(start_states) | set(end)):
        s, e = start_states.get(cur, CurrencyState()), end.get(cur, CurrencyState())
        if not sum(s.lines.values()) and not sum(e.lines.values()):
            continue
        churned = contraction = expansion = lost = 0
        for (_, c), (x, y) in first_last.items():
            if c != cur:
                continue
            if x > 0 and y == 0:
                lost, churned = lost + 1, churned - x
            elif y > 0 and y < x:
                contraction += y - x
            elif x > 0 and y > x:
                expansion += y - x
        out[cur] = Retention(cur, s.customers, lost, s.mrr, churned, contraction, expansion, e.customers, e.mrr)
    return out


def day_metrics(session: Session, day: date, churn_days: int = 30) -> list[MetricValue]:
    """Every figure for ``day`` (see ``day_figures``)."""
    return day_figures(session, day, churn_days).values


def day_figures(session: Session, day: date, churn_days: int = 30, *, derive: bool = True) -> DayFigures:
    """Every figure for ``day``: revenue that day, MRR and ARR at its end (by plan), the day's MRR
    movements, subscription counts, churn, retention, ARPU and LTV over the ``churn_days`` ending
    with it, trial conversion over the same window, and memberships.

    With ``derive`` and the day before stored (docs/analytics.md "## Snapshots"), MRR, the active
    and past-due counts and the movements come from that day's figures and the subscriptions with a
    boundary in the day, and churn from the stored movers of the window's days; otherwise, or when
    a change after the fact was recorded since, from the whole billing history. Both give the same
    figures (tests/test_analytics_metrics.py)."""
    at, previous = end_of(day), start_of(day)
    window = at - timedelta(days=churn_days)
    without_jit(session)
    out = revenue(session, day)
    base = None
    if derive:
        stored = _stored_states(session, day - timedelta(days=1), day - timedelta(days=1))
        if stored is not None and not _erased_since(session, stored[day - timedelta(days=1)][1], previous):
            base = stored[day - timedelta(days=1)][0]
    churn: dict[str, Retention] | None = None
    if base is not None:
        states, movers = _derived_day(session, previous, at, base)
        trialing = _trialing(session, at)
        counts = {cur: {"active": states.get(cur, CurrencyState()).active, "trialing": trialing.get(cur, 0),
                        "past_due": states.get(cur, CurrencyState()).past_due} for cur in set(states) | set(trialing)}
        counts = {cur: c for cur, c in counts.items() if any(c.values())}
        states = {cur: s for cur, s in states.items() if sum(s.lines.values()) or s.active or s.past_due or s.customers}
        churn = _derived_retention(session, day, churn_days, movers, states)
    else:
        states = {cur: CurrencyState(total, by_plan, lines) for cur, (total, by_plan, lines) in _mrr_lines(session, at).items()}
        movers = movement_rows(session, previous, at, with_subscriptions=False)
        counts = subscription_counts(session, at)
    window_derived = churn is not None
    if churn is None:
        churn = retention(session, window, at)
    if base is None:
        for cur, r in churn.items():
            states.setdefault(cur, CurrencyState()).customers = r.customers_at_end
    moved = _by_kind(movers)
    totals = {cur: s for cur, s in states.items() if sum(s.lines.values())}
    trials = trial_conversion(session, window, at)
    for cur in sorted(set(totals) | set(moved) | set(counts) | set(churn) | set(trials)):
        s = totals.get(cur, CurrencyState())
        cents, by_plan = s.mrr, s.by_plan
        out += [
            MetricValue("mrr", cur, cents, "cents", {"by_plan": by_plan, "lines_by_plan": s.lines, "customers": s.customers}),
            MetricValue("arr", cur, 12 * cents, "cents", {"by_plan": {k: 12 * v for k, v in by_plan.items()}}),
            MetricValue("mrr_net_new", cur, moved.get(cur, {}).get("net_new", 0), "cents", {"movements": moved.get(cur, {})}),
        ]
        out += [MetricValue(f"subscriptions_{k}", cur, n, "count") for k, n in counts.get(cur, {"active": 0, "trialing": 0, "past_due": 0}).items()]
        r = churn.get(cur)
        if r:
            basis = {"days": churn_days, "customers_at_start": r.customers_at_start, "customers_churned": r.customers_churned, "mrr_at_start": r.mrr_at_start}
            out += [
                MetricValue("logo_churn_rate", cur, r.logo_churn_rate, "ratio", basis),
                MetricValue("revenue_churn_rate", cur, r.revenue_churn_rate, "ratio", basis),
                MetricValue("net_revenue_retention", cur, r.net_revenue_retention, "ratio", basis),
            ]
            out += [
                MetricValue("arpu", cur, r.arpu_cents, "cents", {"customers": r.customers_at_end}),
                MetricValue("ltv_estimate", cur, r.ltv_estimate_cents, "cents", {"estimate": True, **basis}),
            ]
        if cur in trials:
            ended, converted, rate = trials[cur]
            out.append(MetricValue("trial_conversion_rate", cur, rate, "ratio", {"ended": ended, "converted": converted}))
    types = memberships(session, previous, at)
    for kind in ("active", "started", "expired"):
        out.append(MetricValue(f"memberships_{kind}", None, sum(t[kind] for t in types.values()), "count", {"by_type": {k: t[kind] for k, t in types.items()}}))
    return DayFigures(out, movers, base is not None, window_derived)
