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
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from billfold.kit import clock
from billfold.kit.db.dialects import insert_ignore
from billfold.kit.errors import InvalidInput
from billfold.kit.ids import new_id
from billfold.models import Payment, Refund, Subscription, UserCohort

FIRST_PURCHASE = "first_purchase"
FIRST_SUBSCRIPTION = "first_subscription"
COHORT_TYPES = (FIRST_PURCHASE, FIRST_SUBSCRIPTION)

PAID = ("completed", "refunded")
"""A payment that was completed (a refunded one was too; its refunds count on their own dates)."""

MAX_MONTHS = 240

_NOTED = "billfold_cohorts_noted"


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
    transaction = _root(session)
    memo = session.info.get(_NOTED)
    if memo is None or memo[0] is not transaction:
        memo = (transaction, {})
        session.info[_NOTED] = memo
    memo[1].setdefault((user_id, cohort_type), month_of(clock.now()))


def _root(session: Session) -> Any:
    transaction = session.get_transaction()
    while transaction is not None and transaction.parent is not None:
        transaction = transaction.parent
    return transaction


@event.listens_for(Session, "before_commit")
def _write_noted(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint's commit: the transaction goes on
        return
    memo = session.info.pop(_NOTED, None)
    if memo is None or memo[0] is not _root(session):
        return
    noted: dict[tuple[str, str], date] = memo[1]
    # Nearly every user noted has their rows already (a renewal, a second purchase): one read leaves
    # them out, so the insert-ignore (on MariaDB a savepoint per row once one key is taken) is rare.
    users = sorted({user_id for user_id, _ in noted})
    for chunk in range(0, len(users), 500):
        known = session.execute(
            sa.select(UserCohort.user_id, UserCohort.cohort_type).where(UserCohort.user_id.in_(users[chunk:chunk + 500]))
        )
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


def _cohort(cohort_type: str, first: date, last: date) -> Any:
    return sa.and_(UserCohort.cohort_type == cohort_type, UserCohort.cohort_month >= first, UserCohort.cohort_month <= last)


def _share(part: int, whole: int) -> Decimal | None:
    return (Decimal(part) / Decimal(whole)).quantize(Decimal("0.0001")) if whole > 0 else None


def retention(
    session: Session, first_month: date, last_month: date, currency: str, cohort_type: str = FIRST_PURCHASE
) -> list[Cell]:
    """The retention matrix of the cohorts of ``first_month`` to ``last_month`` in ``currency``:
    one cell per cohort month and month since (0 up to ``last_month``). A cohort in a currency is
    its users who made a completed payment in that currency before ``last_month`` ended."""
    _check_type(cohort_type)
    months = _months(first_month, last_month)
    from billfold.analytics.metrics import without_jit  # (metrics imports the audit hook, which imports this module)

    without_jit(session)
    low, high = _start(months[0]), _start(add_months(months[-1], 1))
    in_cohort = _cohort(cohort_type, months[0], months[-1])
    paid_here = sa.and_(Payment.currency == currency, Payment.status.in_(PAID), Payment.completed_at < high)

    sizes = dict(session.execute(
        sa.select(UserCohort.cohort_month, sa.func.count())
        .where(in_cohort, sa.exists().where(Payment.user_id == UserCohort.user_id, paid_here))
        .group_by(UserCohort.cohort_month)
    ).all())

    # The month is worked out in a subquery and grouped on outside it (PostgreSQL would not see a
    # CASE written twice, its bind parameters numbered twice, as the same expression); each user's
    # month is summed first, so the customers are a COUNT(*), not a COUNT(DISTINCT). (Summing the
    # payments per user before the join instead measured slower on PostgreSQL.)
    payments = (
        sa.select(UserCohort.cohort_month, _bucket(Payment.completed_at, months, sa.Integer()).label("month"),
                  Payment.user_id, Payment.amount_cents.label("cents"))
        .join(Payment, Payment.user_id == UserCohort.user_id)
        .where(in_cohort, paid_here, Payment.completed_at >= low)
        .subquery()
    )
    per_user = (
        sa.select(payments.c.cohort_month, payments.c.month, sa.func.sum(payments.c.cents).label("cents"))
        .group_by(payments.c.cohort_month, payments.c.month, payments.c.user_id)
        .subquery()
    )
    paid = session.execute(
        sa.select(per_user.c.cohort_month, per_user.c.month, sa.func.count(), sa.func.sum(per_user.c.cents))
        .group_by(per_user.c.cohort_month, per_user.c.month)
    ).all()
    refunds = (
        sa.select(UserCohort.cohort_month, _bucket(Refund.completed_at, months, sa.Integer()).label("month"),
                  Refund.amount_cents.label("cents"))
        .join(Payment, Payment.user_id == UserCohort.user_id)
        .join(Refund, Refund.payment_id == Payment.id)
        .where(in_cohort, Refund.currency == currency, Refund.status == "succeeded",
               Refund.completed_at >= low, Refund.completed_at < high)
        .subquery()
    )
    refunded = session.execute(
        sa.select(refunds.c.cohort_month, refunds.c.month, sa.func.sum(refunds.c.cents))
        .group_by(refunds.c.cohort_month, refunds.c.month)
    ).all()

    customers: dict[tuple[date, int], int] = {}
    revenue: dict[tuple[date, int], int] = {}
    for cohort_month, month, count, total in paid:
        customers[(cohort_month, month)] = int(count)
        revenue[(cohort_month, month)] = int(total)
    for cohort_month, month, total in refunded:
        revenue[(cohort_month, month)] = revenue.get((cohort_month, month), 0) - int(total)

    cells = []
    for position, cohort_month in enumerate(months):
        size = int(sizes.get(cohort_month, 0))
        if not size:
            continue
        start = revenue.get((cohort_month, position), 0)
        for index in range(len(months) - position):
            key = (cohort_month, position + index)
            cells.append(Cell(
                cohort_month, index, months[position + index], size, customers.get(key, 0), revenue.get(key, 0),
                _share(customers.get(key, 0), size), _share(revenue.get(key, 0), start),
            ))
    return cells


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
