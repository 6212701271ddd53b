"""``user_cohorts`` and the retention matrix. See docs/analytics.md, "Events and cohorts".

A user's cohorts: ``first_purchase``, the month of their first completed payment, and
``first_subscription``, the month their first subscription was created (a trial included). The
analytics events that define them (``billfold.analytics.events``) note them here; just before the
transaction commits, one read finds which of the noted users have their rows already, and the
others are written by one insert-ignore (``kit.db.dialects.insert_ignore``): the unique (user,
type) key decides, so a user's row is never changed once written, and two first purchases
committing side by side both succeed.

``rebuild`` derives the table from the payments and subscriptions, for history from before this
feature. ``retention`` and ``retention_cell`` read the matrix and the rows behind any cell.

All date maths is done here in Python: month boundaries go to the database as bind parameters and a
timestamp's month is a CASE over them, so the same SQL runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, aliased

from billfold import instance
from billfold.kit import clock
from billfold.kit.db import for_transaction, of_transaction
from billfold.kit.db.dialects import insert_ignore
from billfold.kit.errors import InvalidInput
from billfold.kit.ids import new_id
from billfold.models import AnalyticsCohortMonth, Payment, Refund, Subscription, UserCohort

FIRST_PURCHASE = "first_purchase"
FIRST_SUBSCRIPTION = "first_subscription"
COHORT_TYPES = (FIRST_PURCHASE, FIRST_SUBSCRIPTION)

PAID = ("completed", "refunded")
"""A payment that was completed (a refunded one was too; its refunds count on their own dates)."""

MAX_MONTHS = 240

_NOTED = "billfold_cohorts_noted"
_CHANGED = "billfold_cohorts_changed"


# Months


def month_of(moment: date) -> date:
    return date(moment.year, moment.month, 1)


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def months_between(first: date, later: date) -> int:
    return (later.year - first.year) * 12 + later.month - first.month


def _start(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=clock.UTC)


def _bucket(column: Any, months: list[date], value_type: sa.types.TypeEngine[Any]) -> Any:
    """The month (of ``months``, consecutive) that ``column`` falls in, as ``value_type``: a CASE
    split in halves, so a row is compared about log2(len(months)) times. Rows outside the months
    are the caller's to leave out."""
    values = [sa.literal(m, value_type) if not isinstance(value_type, sa.Integer) else sa.literal(i, value_type)
              for i, m in enumerate(months)]

    def split(low: int, high: int) -> Any:
        if high - low == 1:
            return values[low]
        middle = (low + high) // 2
        return sa.case((column < _start(months[middle]), split(low, middle)), else_=split(middle, high))

    return split(0, len(months))


# Live: noted by the events, written before the commit


def note_first(session: Session, user_id: str, cohort_type: str) -> None:
    """``user_id`` did what defines ``cohort_type`` now; their row is written at the commit unless
    they have one."""
    noted: dict[tuple[str, str], date] = for_transaction(session, _NOTED, dict)
    noted.setdefault((user_id, cohort_type), month_of(clock.now()))


_KNOWN = sa.select(UserCohort.user_id, UserCohort.cohort_type).where(UserCohort.user_id.in_(sa.bindparam("ids", expanding=True)))


@event.listens_for(Session, "before_commit")
def _write_noted(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint's commit: the transaction goes on
        return
    changed = of_transaction(session, _CHANGED, pop=True)
    if changed is not None:
        forget(session, sorted(changed))
    noted: dict[tuple[str, str], date] | None = of_transaction(session, _NOTED, pop=True)
    if noted is None:
        return
    # Nearly every user noted has their rows already (a renewal, a second purchase): one read leaves
    # them out, so the insert-ignore (on MariaDB a savepoint per row once one key is taken) is rare.
    users = sorted({user_id for user_id, _ in noted})
    for chunk in range(0, len(users), 500):
        known = session.execute(_KNOWN, {"ids": users[chunk:chunk + 500]})
        for user_id, cohort_type in known:
            noted.pop((user_id, cohort_type), None)
    now = clock.now()
    rows = [
        {"id": new_id("coh"), "user_id": user_id, "cohort_type": cohort_type, "cohort_month": month, "created_at": now}
        for (user_id, cohort_type), month in sorted(noted.items())  # one order: no deadlock between two writers
    ]
    insert_ignore(session, UserCohort.__table__, rows, key=["user_id", "cohort_type"])


# Rebuild from history


def _firsts() -> dict[str, tuple[Any, sa.Select[Any]]]:
    """Each cohort type: the moment column and the query of each user's first such moment."""
    paid = (
        sa.select(Payment.user_id.label("user_id"), sa.func.min(Payment.completed_at).label("first"))
        .where(Payment.user_id.is_not(None), Payment.status.in_(PAID), Payment.completed_at.is_not(None))
        .group_by(Payment.user_id)
    )
    subscribed = (
        sa.select(Subscription.user_id.label("user_id"), sa.func.min(Subscription.created_at).label("first"))
        .where(Subscription.user_id.is_not(None))
        .group_by(Subscription.user_id)
    )
    return {FIRST_PURCHASE: (Payment.completed_at, paid), FIRST_SUBSCRIPTION: (Subscription.created_at, subscribed)}


def rebuild(session: Session) -> dict[str, int]:
    """Derive ``user_cohorts`` again from the payments and subscriptions (replacing what is there),
    in the caller's transaction, set-based: one INSERT ... SELECT per cohort type. Returns the rows
    written per type."""
    written: dict[str, int] = {}
    now = clock.now()
    forget(session)  # the stored months were made from the rows replaced
    for cohort_type, (moment, firsts) in _firsts().items():
        session.execute(sa.delete(UserCohort).where(UserCohort.cohort_type == cohort_type))
        first = firsts.subquery()
        # (MIN over the subquery's column keeps the table's type, so SQLite's text reads back a datetime.)
        lowest, highest = session.execute(sa.select(sa.func.min(first.c.first), sa.func.max(first.c.first))).one()
        if lowest is None:
            written[cohort_type] = 0
            continue
        months = [add_months(month_of(lowest), i) for i in range(months_between(month_of(lowest), month_of(highest)) + 1)]
        select = sa.select(
            (sa.literal("coh_" + cohort_type[6:9] + "_") + first.c.user_id).label("id"),
            first.c.user_id,
            _bucket(first.c.first, months, sa.Date()).label("cohort_month"),
            sa.literal(cohort_type).label("cohort_type"),
            sa.literal(now, moment.type).label("created_at"),
        )
        session.execute(sa.insert(UserCohort).from_select(["id", "user_id", "cohort_month", "cohort_type", "created_at"], select))
        # (Counted: an INSERT ... SELECT's rowcount is not reported by every driver.)
        written[cohort_type] = session.scalar(sa.select(sa.func.count()).where(UserCohort.cohort_type == cohort_type)) or 0
    return written


# The retention matrix


@dataclass(frozen=True)
class Cell:
    """Cohort ``cohort_month``'s customers in currency, ``month_index`` months after it."""

    cohort_month: date
    month_index: int
    month: date
    cohort_size: int
    customers: int
    """Of the cohort, those with a completed payment in the currency in this month."""
    revenue_cents: int
    """The cohort's net revenue in the month: payments completed minus refunds completed in it."""
    customer_share: Decimal | None
    revenue_share: Decimal | None
    """``revenue_cents`` over month 0's (None when month 0's is not positive)."""


@dataclass(frozen=True)
class CellRows:
    user_ids: list[str]
    payment_ids: list[str]
    refund_ids: list[str]


def _months(first_month: date, last_month: date) -> list[date]:
    first, last = month_of(first_month), month_of(last_month)
    if last < first:
        raise InvalidInput("last_month is before first_month", errors=[{"field": "last_month", "message": "before first_month"}])
    count = months_between(first, last) + 1
    if count > MAX_MONTHS:
        raise InvalidInput(f"at most {MAX_MONTHS} months at once, not {count}", errors=[{"field": "last_month", "message": "too far"}])
    return [add_months(first, i) for i in range(count)]


def _check_type(cohort_type: str) -> None:
    if cohort_type not in COHORT_TYPES:
        raise InvalidInput(f"cohort_type is one of {', '.join(COHORT_TYPES)}", errors=[{"field": "cohort_type", "message": "unknown"}])


def _share(part: int, whole: int) -> Decimal | None:
    return (Decimal(part) / Decimal(whole)).quantize(Decimal("0.0001")) if whole > 0 else None


def retention(
    session: Session, first_month: date, last_month: date, currency: str, cohort_type: str = FIRST_PURCHASE
) -> list[Cell]:
    """The retention matrix of the cohorts of ``first_month`` to ``last_month`` in ``currency``:
    one cell per cohort month and month since (0 up to ``last_month``). A cohort in a currency is
    its users who made a completed payment in that currency before ``last_month`` ended.

    Each month's column is read from ``analytics_cohort_months`` when the month was taken
    (``take_due``), else computed here from that month's payments and refunds (``_columns``): the
    same figures either way."""
    _check_type(cohort_type)
    months = _months(first_month, last_month)
    from billfold.analytics.metrics import without_jit  # (metrics imports the audit hook, which imports this module)

    without_jit(session)
    span = (months[0], months[-1])
    taken, partial = _marks(session, *span)
    columns = _stored(session, span, cohort_type, currency)
    for month, through in partial.items():
        if month not in taken:
            _add_since(session, columns, month, through, cohort_type, currency, span)
    for run in _runs([m for m in months if m not in taken and m not in partial]):
        columns.update(_columns(session, run, cohort_type=cohort_type, currency=currency, cohorts=span))

    # A cohort's size: its users who had paid in the currency by the end of last_month, each counted
    # in the month they first had (``joined``).
    sizes: dict[date, int] = {}
    for (_, _, cohort_month, _), figures in columns.items():
        sizes[cohort_month] = sizes.get(cohort_month, 0) + figures[0]
    cells = []
    for position, cohort_month in enumerate(months):
        size = sizes.get(cohort_month, 0)
        if not size:
            continue
        start = columns.get((cohort_type, currency, cohort_month, cohort_month), _NOTHING)[2]
        for index in range(len(months) - position):
            month = months[position + index]
            _, customers, revenue = columns.get((cohort_type, currency, cohort_month, month), _NOTHING)
            cells.append(Cell(
                cohort_month, index, month, size, customers, revenue, _share(customers, size), _share(revenue, start),
            ))
    return cells


# A month's column, computed or stored

_NOTHING = (0, 0, 0)
Key = tuple[str, str, date, date]
"""(cohort type, currency, cohort month, month)."""


def _runs(months: list[date]) -> list[list[date]]:
    """``months`` (ascending) split into runs of consecutive months."""
    runs: list[list[date]] = []
    for month in months:
        if runs and add_months(runs[-1][-1], 1) == month:
            runs[-1].append(month)
        else:
            runs.append([month])
    return runs


def _columns(
    session: Session, months: list[date], *, cohort_type: str | None = None, currency: str | None = None,
    cohorts: tuple[date, date] | None = None, until: datetime | None = None,
) -> dict[Key, tuple[int, int, int]]:
    """The columns of ``months`` (consecutive), computed from their payments and refunds: for each
    cohort type, currency, cohort month M and month m of ``months`` with M <= m, (joined,
    customers, revenue_cents):
    - joined: the cohort's users who had paid in the currency by the end of m and not by the end of
      m - 1, or, for m = M, ever before (so a cohort's size is the sum of its joined up to the last month);
    - customers: its users with a completed payment in the currency in m;
    - revenue_cents: their payments completed in m minus the refunds completed in m.
    Only the cohort type, currency and cohort months (first, last) given, when given; only what
    happened before ``until`` (within the last month), when given."""
    low, high = _start(months[0]), until or _start(add_months(months[-1], 1))
    member = [UserCohort.cohort_month <= months[-1]]
    if cohort_type is not None:
        member.append(UserCohort.cohort_type == cohort_type)
    if cohorts is not None:
        member += [UserCohort.cohort_month >= cohorts[0], UserCohort.cohort_month <= cohorts[1]]
    paid = [Payment.status.in_(PAID)] + ([Payment.currency == currency] if currency is not None else [])
    cohort = (UserCohort.cohort_type, UserCohort.cohort_month)
    out: dict[Key, list[int]] = {}

    def add(key: Key, position: int, value: int) -> None:
        out.setdefault(key, [0, 0, 0])[position] += value

    # Joined, in two parts that never share a user. (a) Those who first paid in the currency within
    # the months: each user's first payment in them, when they have none before (a look-up on
    # idx_payments_user_id_currency); counted in its month, or the cohort's month if later.
    earlier = aliased(Payment)
    firsts = (
        sa.select(*cohort, Payment.currency, sa.func.min(Payment.completed_at).label("first"))
        .join(Payment, Payment.user_id == UserCohort.user_id)
        .where(*member, *paid, Payment.completed_at >= low, Payment.completed_at < high,
               ~sa.exists().where(earlier.user_id == Payment.user_id, earlier.currency == Payment.currency,
                                  earlier.status.in_(PAID), earlier.completed_at < low))
        .group_by(*cohort, Payment.currency, Payment.user_id)
        .subquery()
    )
    bucketed = sa.select(firsts.c.cohort_type, firsts.c.cohort_month, firsts.c.currency,
                         _bucket(firsts.c.first, months, sa.Integer()).label("month")).subquery()
    for kind, cohort_month, money, index, count in session.execute(
        sa.select(*bucketed.c, sa.func.count()).group_by(*bucketed.c)
    ):
        add((kind, money, cohort_month, max(cohort_month, months[index])), 0, int(count))
    # (b) The users of a cohort of these months who had paid in the currency before them: in the
    # cohort's month. (Only a first_subscription cohort has them: a first purchase's month is the
    # month of the user's first payment.)
    for kind, cohort_month, money, count in session.execute(
        sa.select(*cohort, Payment.currency, sa.func.count(sa.distinct(Payment.user_id)))
        .join(Payment, Payment.user_id == UserCohort.user_id)
        .where(*member, UserCohort.cohort_type != FIRST_PURCHASE, UserCohort.cohort_month >= months[0], *paid,
               Payment.completed_at < low)
        .group_by(*cohort, Payment.currency)
    ) if cohort_type != FIRST_PURCHASE else ():
        add((kind, money, cohort_month, cohort_month), 0, int(count))

    # Customers and revenue. The month is worked out in a subquery and grouped on outside it
    # (PostgreSQL would not see a CASE written twice, its bind parameters numbered twice, as the
    # same expression); each user's month is summed first, so the customers are a COUNT(*), not a
    # COUNT(DISTINCT).
    payments = (
        sa.select(*cohort, Payment.currency, _bucket(Payment.completed_at, months, sa.Integer()).label("month"),
                  Payment.user_id, Payment.amount_cents.label("cents"))
        .join(Payment, Payment.user_id == UserCohort.user_id)
        .where(*member, *paid, Payment.completed_at >= low, Payment.completed_at < high)
        .subquery()
    )
    keys = (payments.c.cohort_type, payments.c.cohort_month, payments.c.currency, payments.c.month)
    per_user = sa.select(*keys, sa.func.sum(payments.c.cents).label("cents")).group_by(*keys, payments.c.user_id).subquery()
    for kind, cohort_month, money, index, count, total in session.execute(
        sa.select(*per_user.c[:4], sa.func.count(), sa.func.sum(per_user.c.cents)).group_by(*per_user.c[:4])
    ):
        if months[index] >= cohort_month:
            add((kind, money, cohort_month, months[index]), 1, int(count))
            add((kind, money, cohort_month, months[index]), 2, int(total))
    refunds = (
        sa.select(*cohort, Refund.currency, _bucket(Refund.completed_at, months, sa.Integer()).label("month"),
                  Refund.amount_cents.label("cents"))
        .join(Payment, Payment.user_id == UserCohort.user_id)
        .join(Refund, Refund.payment_id == Payment.id)
        .where(*member, Refund.status == "succeeded", Refund.completed_at >= low, Refund.completed_at < high,
               *([Refund.currency == currency] if currency is not None else []))
        .subquery()
    )
    keys = tuple(refunds.c[:4])
    for kind, cohort_month, money, index, total in session.execute(
        sa.select(*keys, sa.func.sum(refunds.c.cents)).group_by(*keys)
    ):
        if months[index] >= cohort_month:
            add((kind, money, cohort_month, months[index]), 2, -int(total))
    return {key: (joined, customers, revenue) for key, (joined, customers, revenue) in out.items()}


def _add_since(
    session: Session, columns: dict[Key, tuple[int, int, int]], month: date, since: datetime, cohort_type: str,
    currency: str, span: tuple[date, date],
) -> None:
    """Bring ``month``'s column, stored as it was at ``since``, up to now in ``columns``: add what its
    payments and refunds from ``since`` on change. A user paying since then is a new customer of the
    month unless they paid in it before ``since``, and joins unless they paid at all before it.
    That needs the cohorts' users to be those of ``since``: true of the cohorts before the month (a
    cohort's rows are written in its own month) and of the month's own ``first_purchase`` cohort
    (a user joins it with a payment, since then); the month's own ``first_subscription`` cohort
    (a user subscribing since then may have paid before) is computed whole instead."""
    low, high = _start(month), _start(add_months(month, 1))
    since = max(since, low)
    own = cohort_type == FIRST_PURCHASE and span[0] <= month <= span[1]
    member = [UserCohort.cohort_type == cohort_type, UserCohort.cohort_month >= span[0],
              (UserCohort.cohort_month <= month) if own else (UserCohort.cohort_month < month)]
    paid = [Payment.status.in_(PAID), Payment.currency == currency]
    earlier = aliased(Payment)

    def paid_before(start: datetime | None) -> Any:
        window = [earlier.completed_at < since] + ([earlier.completed_at >= start] if start is not None else [])
        seen = sa.exists().where(earlier.user_id == Payment.user_id, earlier.currency == currency,
                                 earlier.status.in_(PAID), *window)
        return sa.case((seen, 1), else_=0)

    totals: dict[date, list[int]] = {}
    for cohort_month, cents, in_month, ever in session.execute(
        sa.select(UserCohort.cohort_month, sa.func.sum(Payment.amount_cents), paid_before(low), paid_before(None))
        .join(Payment, Payment.user_id == UserCohort.user_id)
        .where(*member, *paid, Payment.completed_at >= since, Payment.completed_at < high)
        .group_by(UserCohort.cohort_month, Payment.user_id)
    ):
        figures = totals.setdefault(cohort_month, [0, 0, 0])
        figures[0] += not ever
        figures[1] += not in_month
        figures[2] += int(cents)
    for cohort_month, cents in session.execute(
        sa.select(UserCohort.cohort_month, sa.func.sum(Refund.amount_cents))
        .join(Payment, Payment.user_id == UserCohort.user_id)
        .join(Refund, Refund.payment_id == Payment.id)
        .where(*member, Refund.currency == currency, Refund.status == "succeeded",
               Refund.completed_at >= since, Refund.completed_at < high)
        .group_by(UserCohort.cohort_month)
    ):
        totals.setdefault(cohort_month, [0, 0, 0])[2] -= int(cents)
    for cohort_month, (joined, customers, revenue) in totals.items():
        key = (cohort_type, currency, cohort_month, month)
        stored = columns.get(key, _NOTHING)
        columns[key] = (stored[0] + joined, stored[1] + customers, stored[2] + revenue)
    if span[0] <= month <= span[1] and not own:
        columns.pop((cohort_type, currency, month, month), None)
        columns.update(_columns(session, [month], cohort_type=cohort_type, currency=currency, cohorts=(month, month)))


def _stored(session: Session, span: tuple[date, date], cohort_type: str, currency: str) -> dict[Key, tuple[int, int, int]]:
    """The stored cells of ``cohort_type`` in ``currency`` of the months and cohort months in ``span``."""
    rows = session.execute(
        sa.select(AnalyticsCohortMonth.cohort_month, AnalyticsCohortMonth.month, AnalyticsCohortMonth.joined,
                  AnalyticsCohortMonth.customers, AnalyticsCohortMonth.revenue_cents)
        .where(AnalyticsCohortMonth.month >= span[0], AnalyticsCohortMonth.month <= span[1],
               AnalyticsCohortMonth.cohort_type == cohort_type, AnalyticsCohortMonth.currency == currency,
               AnalyticsCohortMonth.cohort_month >= span[0])
    )
    return {(cohort_type, currency, c, m): (int(j), int(n), int(r)) for c, m, j, n, r in rows}


# Stored months: taken once settled, forgotten when what they were made from changes

MONTH_TAKEN = "month_taken"
"""The ``cohort_type`` of a month's mark: the row that says the month was taken."""
SETTLED_AFTER = timedelta(days=1)
"""A month is taken once it ended this long ago: a payment or refund committing just after midnight
with a time before it is in by then."""
LOCK = "analytics.cohort_months"
"""The ``instance_marks`` row a take locks; its value is the last month the last take stored (none when nothing was due)."""


def months_taken(session: Session, first: date, last: date) -> set[date]:
    """The months from ``first`` to ``last`` that are stored whole."""
    return _marks(session, first, last)[0]


def _marks(session: Session, first: date, last: date) -> tuple[set[date], dict[date, datetime]]:
    """The months from ``first`` to ``last`` stored whole, and those stored as they were at a
    moment (not over then), with that moment: one read of the months' marks."""
    whole: set[date] = set()
    partial: dict[date, datetime] = {}
    for month, through in session.execute(
        sa.select(AnalyticsCohortMonth.month, AnalyticsCohortMonth.through)
        .where(AnalyticsCohortMonth.cohort_type == MONTH_TAKEN, AnalyticsCohortMonth.month >= first,
               AnalyticsCohortMonth.month <= last)
    ):
        if through is None:
            whole.add(month)
        else:
            partial[month] = through
    return whole, partial


def settled_until(now: datetime | None = None) -> datetime:
    """What a take stores of a month not settled: what happened before the start of the day
    ``SETTLED_AFTER`` ago (so a payment committing just after midnight is in)."""
    moment = (now or clock.now()).astimezone(clock.UTC) - SETTLED_AFTER
    return datetime(moment.year, moment.month, moment.day, tzinfo=clock.UTC)


def last_settled(now: datetime | None = None) -> date:
    """The last month that ended ``SETTLED_AFTER`` ago or more."""
    return add_months(month_of((now or clock.now()) - SETTLED_AFTER), -1)


def due_months(session: Session) -> list[date]:
    """The months a take would store, from the month of the first completed payment on: the
    settled months not stored, and the months not settled (the current one, and on its first day
    the one before) unless stored up to ``settled_until`` already."""
    first = session.scalar(sa.select(sa.func.min(Payment.completed_at)).where(Payment.status.in_(PAID)))
    if first is None:
        return []
    until, last, settled = settled_until(), month_of(clock.now()), last_settled()
    if month_of(first) > last:
        return []
    months = [add_months(month_of(first), i) for i in range(months_between(month_of(first), last) + 1)]
    taken, partial = _marks(session, months[0], months[-1])
    return [m for m in months if m not in taken and (m <= settled or partial.get(m) != max(until, _start(m)))]


def take_due(session: Session) -> list[date]:
    """Store the columns of ``due_months`` (every cohort type and currency), in ``session``'s
    transaction; the months stored: a settled month whole, one not settled as it was at
    ``settled_until()`` (``through``). One computation per run of settled months, so the first
    take of a long history reads its payments once. Two takes at once are serialised by a lock
    (an ``instance_marks`` row, as ``snapshots.lock``): the second finds the months stored."""
    instance.mark(session, LOCK, None)  # (an upsert: the row stays locked until the end)
    due = due_months(session)
    written, settled, until = clock.now(), last_settled(), settled_until()
    whole = [m for m in due if m <= settled]
    pieces = [run[i:i + MAX_MONTHS] for run in _runs(whole) for i in range(0, len(run), MAX_MONTHS)]
    for months in pieces + [[m] for m in due if m > settled]:
        through = None if months[-1] <= settled else max(until, _start(months[0]))
        columns = _columns(session, months, until=through)
        rows = [
            {"id": new_id("cohm"), "month": month, "cohort_type": kind, "currency": money, "cohort_month": cohort_month,
             "joined": joined, "customers": customers, "revenue_cents": revenue, "through": through, "created_at": written}
            for (kind, money, cohort_month, month), (joined, customers, revenue) in sorted(columns.items())
            if joined or customers or revenue
        ] + [
            {"id": new_id("cohm"), "month": month, "cohort_type": MONTH_TAKEN, "currency": "", "cohort_month": month,
             "joined": 0, "customers": 0, "revenue_cents": 0, "through": through, "created_at": written}
            for month in months
        ]
        session.execute(sa.delete(AnalyticsCohortMonth).where(AnalyticsCohortMonth.month >= months[0],
                                                              AnalyticsCohortMonth.month <= months[-1]))
        for chunk in range(0, len(rows), 1000):
            session.execute(sa.insert(AnalyticsCohortMonth), rows[chunk:chunk + 1000])
    if due:
        instance.mark(session, LOCK, due[-1].isoformat())
    return due


def forget(session: Session, months: list[date] | None = None) -> None:
    """Delete the stored columns of ``months`` (every month by default), in ``session``'s
    transaction: they are computed live until taken again (the nightly sweep takes them)."""
    statement = sa.delete(AnalyticsCohortMonth)
    if months is not None:
        statement = statement.where(AnalyticsCohortMonth.month.in_(sorted(set(months))))
    session.execute(statement)


def note_changed(session: Session, moment: datetime | None) -> None:
    """A row counted in ``moment``'s month changed after the fact (a succeeded refund failed): the
    month's stored column is forgotten when the transaction commits."""
    if moment is None:
        return
    for_transaction(session, _CHANGED, set).add(month_of(moment))


def retention_cell(
    session: Session, cohort_month: date, month_index: int, currency: str, cohort_type: str = FIRST_PURCHASE,
    *, after: tuple[str, str] | None = None, limit: int | None = None,
) -> CellRows:
    """The rows behind one cell of ``retention``: the users still paying, their payments and the
    refunds counted in the month (ids in order). ``after`` (``"payment"`` or ``"refund"``, an id)
    and ``limit`` read one page: the rows after that one, payments first, at most ``limit`` in
    all (``user_ids`` are then the page's payments' users)."""
    _check_type(cohort_type)
    if month_index < 0:
        raise InvalidInput("month_index is 0 or more", errors=[{"field": "month_index", "message": "negative"}])
    cohort_month = month_of(cohort_month)
    month = add_months(cohort_month, month_index)
    low, high = _start(month), _start(add_months(month, 1))
    in_cohort = sa.and_(UserCohort.cohort_type == cohort_type, UserCohort.cohort_month == cohort_month)
    payments = session.execute(
        sa.select(Payment.id, Payment.user_id)
        .join(UserCohort, UserCohort.user_id == Payment.user_id)
        .where(in_cohort, Payment.currency == currency, Payment.status.in_(PAID),
               Payment.completed_at >= low, Payment.completed_at < high)
        .where(*_after(Payment.id, "payment", after))
        .order_by(Payment.id).limit(limit)
    ).all()
    refunds = session.scalars(
        sa.select(Refund.id)
        .join(Payment, Payment.id == Refund.payment_id)
        .join(UserCohort, UserCohort.user_id == Payment.user_id)
        .where(in_cohort, Refund.currency == currency, Refund.status == "succeeded",
               Refund.completed_at >= low, Refund.completed_at < high)
        .where(*_after(Refund.id, "refund", after))
        .order_by(Refund.id).limit(None if limit is None else limit - len(payments))
    ).all()
    return CellRows(sorted({row.user_id for row in payments}), [row.id for row in payments], list(refunds))


def _after(column: Any, kind: str, after: tuple[str, str] | None) -> list[Any]:
    """The keyset condition of ``retention_cell``'s page on ``kind``'s rows (payments, then refunds)."""
    if after is None or (after[0] == "payment" and kind == "refund"):
        return []
    return [column > after[1]] if after[0] == kind else [sa.false()]
