"""The analytics API under ``/v1/analytics`` (docs/analytics.md "## API"): series of the daily
figures from ``analytics_snapshots`` (a missing day computed on demand when few are missing),
MRR movements, the cohort retention matrix, revenue recognition, and the rows behind each figure.
For the shop's admins and API keys with ``read``; every list answers CSV with ``?format=csv``."""

from __future__ import annotations

import bisect
import csv
import io
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, BeforeValidator
from sqlalchemy.orm import Session

from billfold.accounts.auth import Admin
from billfold.analytics import cohorts, metrics, recognition
from billfold.analytics.schemas import (
    CellRowOut,
    CohortCellOut,
    InvoiceLineOut,
    Listing,
    MovementRowOut,
    MovementsOut,
    MrrRowOut,
    RecognitionMonthOut,
    RecognitionOut,
    RecognitionRowOut,
    RevenueRowOut,
    SeriesOut,
    SeriesPoint,
)
from billfold.kit import clock, money
from billfold.kit.errors import Conflict, InvalidInput
from billfold.kit.db import reading
from billfold.kit.http import DbSession, Page, Paging, PageQuery, problems, require
from billfold.kit.inputs import QueryDigits
from billfold.models import AnalyticsSnapshot, Invoice, InvoiceLine, Payment, Refund

router = APIRouter(prefix="/v1/analytics", tags=["analytics"], responses=problems(400, 401, 403, 422))

EARLIEST = date(1970, 1, 1)
MAX_DAYS = 3660
"""The longest range a series or a movement covers (about ten years)."""
ON_DEMAND_DAYS = 31
"""At most this many days of a series without a snapshot are computed for the answer; more is a
409 that says to backfill."""


@dataclass(frozen=True)
class Definition:
    kind: str  # stock, flow or rate
    unit: str  # cents, count or ratio
    aggregation: str
    per_currency: bool = True
    missing_is_zero: bool = True  # a taken day without a row for a currency: 0 (else null: undefined)


_LAST = "the value at the period's last day"
_SUM = "the sum over the period's days"
_RATE = f"{_LAST} (each day's rate is over the 30 days ending with it)"
METRICS: dict[str, Definition] = {
    "revenue_gross": Definition("flow", "cents", _SUM),
    "revenue_refunds": Definition("flow", "cents", _SUM),
    "revenue_net": Definition("flow", "cents", _SUM),
    "payments_failed": Definition("flow", "count", _SUM),
    "payment_failure_rate": Definition("rate", "ratio", "failed / attempts summed over the period's days", missing_is_zero=False),
    "mrr": Definition("stock", "cents", _LAST),
    "arr": Definition("stock", "cents", _LAST),
    "mrr_net_new": Definition("flow", "cents", _SUM),
    "subscriptions_active": Definition("stock", "count", _LAST),
    "subscriptions_trialing": Definition("stock", "count", _LAST),
    "subscriptions_past_due": Definition("stock", "count", _LAST),
    "logo_churn_rate": Definition("rate", "ratio", _RATE, missing_is_zero=False),
    "revenue_churn_rate": Definition("rate", "ratio", _RATE, missing_is_zero=False),
    "net_revenue_retention": Definition("rate", "ratio", _RATE, missing_is_zero=False),
    "trial_conversion_rate": Definition("rate", "ratio", _RATE, missing_is_zero=False),
    "arpu": Definition("stock", "cents", _LAST + " (null with no paying customer)", missing_is_zero=False),
    "ltv_estimate": Definition("stock", "cents", _LAST + " (null when nobody churned)", missing_is_zero=False),
    "memberships_active": Definition("stock", "count", _LAST, per_currency=False),
    "memberships_started": Definition("flow", "count", _SUM, per_currency=False),
    "memberships_expired": Definition("flow", "count", _SUM, per_currency=False),
}
TAKEN_MARK = "memberships_active"
"""Written for every day taken (a count, never undefined): its row says the day was taken."""

CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
CSV_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV with `?format=csv`."}
}


# Query parameters


def _a_day(value: object) -> object:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise ValueError("a date is written YYYY-MM-DD, such as 2026-03-31")
    return value


Day = Annotated[date, BeforeValidator(_a_day)]
Month = Annotated[str, Query(description="YYYY-MM", pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")]
Currency = Annotated[str | None, Query(pattern=r"^[A-Z]{3}$", description="An ISO 4217 code; all currencies if left out.")]
RequiredCurrency = Annotated[str, Query(pattern=r"^[A-Z]{3}$", description="An ISO 4217 code.")]
Format = Annotated[Literal["json", "csv"], Query(description="`csv` answers text/csv with a header row.")]
CohortType = Annotated[Literal["first_purchase", "first_subscription"], Query()]


def _currency(currency: str | None, field: str = "currency") -> str | None:
    if currency is not None and not money.is_currency(currency):
        raise InvalidInput(f"{currency!r} is not an ISO 4217 currency", errors=[{"field": field, "message": "unknown currency"}])
    return currency


def _day_in_range(day: date, field: str) -> date:
    today = clock.now().date()
    if day < EARLIEST or day > today:
        raise InvalidInput(f"{field} must be from {EARLIEST} to today ({today}), not {day}", errors=[{"field": field, "message": "out of range"}])
    return day


def _range(first: date, last: date) -> tuple[date, date]:
    _day_in_range(first, "from")
    _day_in_range(last, "to")
    if first > last:
        raise InvalidInput(f"from ({first}) is after to ({last})", errors=[{"field": "from", "message": "after to"}])
    if (last - first).days + 1 > MAX_DAYS:
        raise InvalidInput(f"at most {MAX_DAYS} days at once, not {(last - first).days + 1}", errors=[{"field": "to", "message": "range too long"}])
    return first, last


def _month_in_range(text: str | date, field: str) -> date:
    this_month = cohorts.month_of(clock.now().date())
    month = text if isinstance(text, date) else date(int(text[:4]) or 1, int(text[5:7]), 1)
    if month < EARLIEST or month > this_month:
        raise InvalidInput(f"{field} must be from 1970-01 to this month, not {month:%Y-%m}", errors=[{"field": field, "message": "out of range"}])
    return month


# CSV


def _cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs as a formula: text starting with = + - @ (or a tab or
    carriage return) is prefixed with a quote. Numbers are written as numbers."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}.csv"'}


def _csv_text(columns: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if columns is not None:
        writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


def csv_answer(name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Response:
    return Response(_csv_text(columns, rows), media_type=CSV_MEDIA_TYPE, headers=_attachment(name))


def csv_stream(name: str, columns: Sequence[str], pages: Iterable[Iterable[Sequence[Any]]]) -> StreamingResponse:
    """CSV written a page at a time as it is sent: the header row, then each page's rows (the same
    cells as ``csv_answer``), so that only one page is ever held."""

    def body() -> Iterator[bytes]:
        yield _csv_text(columns, []).encode()
        for page in pages:
            yield _csv_text(None, page).encode()

    return StreamingResponse(body(), media_type=CSV_MEDIA_TYPE, headers=_attachment(name))


def _listing(format: str, name: str, items: list[BaseModel], model: type[BaseModel]) -> Any:
    """The items as a ``Listing`` or as CSV, one column per field of ``model``."""
    if format == "csv":
        columns = list(model.model_fields)
        return csv_answer(name, columns, ([getattr(item, c) for c in columns] for item in items))
    return {"data": items}


def _rate(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


# Pages of rows


CSV_PAGE = 5000
"""Rows read per query while a CSV of rows streams (docs/analytics.md "Pages of rows": at 139,321
MRR rows, pages of 5,000 took 1.3 times the whole list's time, pages of 1,000 four times)."""

Rows = Callable[[Session, Any, int], list[Any]]
"""Reads a page of an endpoint's rows: (session, the key of the row before the page or None,
limit) → at most ``limit`` rows (``*RowOut``), in the rows' order."""


def _paged(request: Request, session: Session, paging: PageQuery, format: str, name: str, model: type[BaseModel],
           rows: Rows, key: Callable[[Any], Any], after: Any) -> Any:
    """A page of rows as JSON (``Page``: ``data`` and ``has_more``; read with ``LIMIT limit + 1``),
    or every row after ``after`` as streamed CSV, read ``CSV_PAGE`` at a time through the same
    keyset query, each page in a short read-only transaction of its own (none is held while the
    client reads)."""
    if format != "csv":
        found = rows(session, after, paging.limit + 1)
        return {"data": found[:paging.limit], "has_more": len(found) > paging.limit}
    require("limit" not in request.query_params, "CSV answers every row: leave limit out (starting_after may say where to start)", "limit")
    sessions = request.app.state.sessions
    columns = list(model.model_fields)

    def pages() -> Iterator[list[list[Any]]]:
        cursor = after
        while True:
            with reading(sessions) as page_session:
                found = rows(page_session, cursor, CSV_PAGE)
            yield [[getattr(item, c) for c in columns] for item in found]
            if len(found) < CSV_PAGE:
                return
            cursor = key(found[-1])

    return csv_stream(name, columns, pages())


def _not_a_row(starting_after: str) -> InvalidInput:
    return InvalidInput(f"{starting_after!r} is not a row of this list: starting_after is the id of the last row of a page",
                        errors=[{"field": "starting_after", "message": "not a row of this list"}])


def _payment_or_refund(session: Session, starting_after: str | None) -> tuple[str, str] | None:
    """Where a cursor over payments and refunds stands: (``payment``, ``refund`` or ``failed``, id)."""
    if starting_after is None:
        return None
    if session.scalar(sa.select(Refund.id).where(Refund.id == starting_after)) is not None:
        return "refund", starting_after
    status = session.scalar(sa.select(Payment.status).where(Payment.id == starting_after))
    if status is None:
        raise _not_a_row(starting_after)
    return ("failed" if status == "failed" else "payment"), starting_after


# Series


def _stored(session: Session, metric: str, first: date, last: date, currency: str | None) -> tuple[set[date], list[Any]]:
    """One indexed query (date range and metric type): the days taken, and ``metric``'s rows."""
    wanted = [metric] if metric == TAKEN_MARK else [metric, TAKEN_MARK]
    statement = sa.select(
        AnalyticsSnapshot.snapshot_date, AnalyticsSnapshot.metric_type, AnalyticsSnapshot.currency, AnalyticsSnapshot.breakdown,
        AnalyticsSnapshot.metric_value,
    ).where(
        AnalyticsSnapshot.snapshot_date >= first, AnalyticsSnapshot.snapshot_date <= last, AnalyticsSnapshot.metric_type.in_(wanted),
    )
    if currency is not None:
        statement = statement.where(sa.or_(AnalyticsSnapshot.currency == currency, AnalyticsSnapshot.metric_type == TAKEN_MARK))
    taken: set[date] = set()
    rows = []
    for row in session.execute(statement):
        if row.metric_type == TAKEN_MARK:
            taken.add(row.snapshot_date)
        if row.metric_type == metric:
            rows.append(row)
    return taken, rows


def _from_column(stored: Decimal | None, unit: str, currency: str | None) -> int | str | None:
    if stored is None:
        return None
    if unit == "ratio":
        return _rate(Decimal(stored).quantize(Decimal("0.0001")))
    if unit == "cents" and currency and money.is_currency(currency):
        return int(Decimal(stored) * 10 ** money.exponent(currency))
    return int(stored)


def _periods(first: date, last: date, granularity: str) -> list[tuple[date, date]]:
    periods, start = [], first
    while start <= last:
        if granularity == "day":
            end = start
        elif granularity == "week":  # ISO weeks, Monday to Sunday
            end = start + timedelta(days=6 - start.weekday())
        else:
            end = cohorts.add_months(cohorts.month_of(start), 1) - timedelta(days=1)
        end = min(end, last)
        periods.append((start, end))
        start = end + timedelta(days=1)
    return periods


def _aggregate(definition: Definition, metric: str, days: list[dict[str, Any] | None]) -> int | str | None:
    """A period's value from its days' (value, breakdown) entries (None: no row that day)."""
    if metric == "payment_failure_rate":
        failed = sum(d["breakdown"].get("failed", 0) for d in days if d)
        attempts = sum(d["breakdown"].get("attempts", 0) for d in days if d)
        return _rate(metrics.ratio(failed, attempts))
    if definition.kind == "flow":
        return sum(int(d["value"]) for d in days if d)
    last = days[-1]
    if last is None:
        return 0 if definition.missing_is_zero else None
    return last["value"]


def series(session: Session, metric: str, first: date, last: date, granularity: str, currency: str | None) -> SeriesOut:
    definition = METRICS[metric]
    if currency is not None and not definition.per_currency:
        raise InvalidInput(f"{metric} is not per currency: leave currency out", errors=[{"field": "currency", "message": "not per currency"}])
    taken, rows = _stored(session, metric, first, last, currency)
    by_day: dict[date, dict[str | None, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        breakdown = dict(row.breakdown) if isinstance(row.breakdown, dict) else {}
        value = breakdown.pop("value", None)
        if value is None:  # a row written without its exact value (by hand): from the column
            value = _from_column(row.metric_value, definition.unit, row.currency)
        by_day[row.snapshot_date][row.currency] = {"value": value, "breakdown": breakdown}
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    missing = [day for day in days if day not in taken]
    if len(missing) > ON_DEMAND_DAYS:
        raise Conflict(
            f"{len(missing)} days from {missing[0]} to {missing[-1]} have no snapshot (at most {ON_DEMAND_DAYS} are computed "
            f"on demand): run `billfold analytics backfill --from {missing[0]}` first",
            missing_days=len(missing), first_missing=str(missing[0]), last_missing=str(missing[-1]),
        )
    for day in missing:  # computed for this answer, not stored
        for value in metrics.day_metrics(session, day):
            if value.metric_type == metric and (currency is None or value.currency == currency) and value.value is not None:
                exact = value.value if isinstance(value.value, int) else str(value.value)
                by_day[day][value.currency] = {"value": exact, "breakdown": value.breakdown}
    if definition.per_currency:
        currencies: list[str | None] = [currency] if currency else sorted({c for d in by_day.values() for c in d if c})
    else:
        currencies = [None]
    points = []
    for start, end in _periods(first, last, granularity):
        span = [start + timedelta(days=n) for n in range((end - start).days + 1)]
        for cur in currencies:
            points.append(SeriesPoint(
                period_start=start, period_end=end, currency=cur,
                value=_aggregate(definition, metric, [by_day.get(day, {}).get(cur) for day in span]),
            ))
    return SeriesOut(
        metric=metric, kind=definition.kind, unit=definition.unit, aggregation=definition.aggregation,  # type: ignore[arg-type]
        granularity=granularity, from_=first, to=last, computed_days=missing, data=points,  # type: ignore[arg-type]
    )


@router.get("/metrics", response_model=SeriesOut, responses={**CSV_ANSWER, **problems(409)})
def metric_series(
    principal: Admin,
    session: DbSession,
    metric: Annotated[Literal[tuple(METRICS)], Query(description="The figure (docs/analytics.md).")],  # type: ignore[valid-type]
    from_: Annotated[Day, Query(alias="from", description="The first day (YYYY-MM-DD, UTC).")],
    to: Annotated[Day, Query(description="The last day, included; today at the latest.")],
    granularity: Annotated[Literal["day", "week", "month"], Query()] = "day",
    currency: Currency = None,
    format: Format = "json",
) -> Any:
    """A figure's series from the daily snapshots. Per currency (never added across currencies);
    `kind` says how a week or month is made: a **stock** (MRR, ARR, subscriptions, ARPU) is its
    last day's value, a **flow** (revenue, failed payments, net new MRR, memberships started) the
    sum of its days, a **rate** its last day's (the failure rate: failed / attempts over the
    period). A day without a snapshot is computed for the answer when at most 31 are missing;
    otherwise 409, saying to run `billfold analytics backfill`."""
    first, last = _range(from_, to)
    answer = series(session, metric, first, last, granularity, _currency(currency))
    if format == "csv":
        return csv_answer(
            f"{metric}-{first}-{last}", ["period_start", "period_end", "metric", "currency", "value", "unit"],
            ([p.period_start, p.period_end, metric, p.currency, p.value, answer.unit] for p in answer.data),
        )
    return answer


# Movements


@router.get("/movements", response_model=Listing[MovementsOut], responses=CSV_ANSWER)
def mrr_movements(
    principal: Admin,
    session: DbSession,
    from_: Annotated[Day, Query(alias="from", description="Movements from the end of the day before this day...")],
    to: Annotated[Day, Query(description="...to the end of this day.")],
    currency: Currency = None,
    format: Format = "json",
) -> Any:
    """MRR movements over the range, per currency, computed live: new, expansion, contraction,
    churned, reactivation and their sum, net new, which is exactly MRR at the end minus MRR at the
    start."""
    first, last = _range(from_, to)
    currency = _currency(currency)
    start, end = metrics.start_of(first), metrics.end_of(last)
    moved = metrics.movements(session, start, end)
    before, after = metrics.mrr(session, start), metrics.mrr(session, end)
    out = []
    for cur in sorted(set(moved) | set(before) | set(after)):
        if currency and cur != currency:
            continue
        kinds = moved.get(cur, {})
        a, b = before.get(cur, (0, {}))[0], after.get(cur, (0, {}))[0]
        out.append(MovementsOut(
            currency=cur, mrr_at_start=a, mrr_at_end=b, net_new=kinds.get("net_new", 0), mrr_change=b - a,
            **{k: kinds.get(k, 0) for k in metrics.MOVEMENT_KINDS},
        ))
    return _listing(format, f"movements-{first}-{last}", out, MovementsOut)


@router.get("/movements/rows", response_model=Page[MovementRowOut], responses=CSV_ANSWER)
def movement_rows(
    request: Request,
    principal: Admin,
    session: DbSession,
    paging: Paging,
    from_: Annotated[Day, Query(alias="from")],
    to: Annotated[Day, Query()],
    currency: Currency = None,
    kind: Annotated[Literal[metrics.MOVEMENT_KINDS] | None, Query()] = None,  # type: ignore[valid-type]
    format: Format = "json",
) -> Any:
    """The customers behind the movements: each one's MRR before and after, and the subscriptions
    in force at either end. Their changes add up to the movement of their kind. By currency and
    customer; a page ends with a row whose `currency:customer_id` (`USD:usr_...`) is the next
    page's `starting_after`. (Computed whole and cut into pages for now.)"""
    first, last = _range(from_, to)
    currency = _currency(currency)
    after = paging.starting_after
    if after is not None and not re.fullmatch(r"[A-Z]{3}:.+", after):
        raise InvalidInput("starting_after is the last row's currency:customer_id, such as USD:usr_...",
                           errors=[{"field": "starting_after", "message": "not currency:customer_id"}])
    found = sorted(
        (m for m in metrics.movement_rows(session, metrics.start_of(first), metrics.end_of(last), currency)
         if kind is None or m.kind == kind),
        key=lambda m: (m.currency, m.customer_id),
    )
    out = [
        MovementRowOut(customer_id=m.customer_id, currency=m.currency, kind=m.kind, before_cents=m.before_cents,  # type: ignore[arg-type]
                       after_cents=m.after_cents, change_cents=m.change_cents, subscription_ids=list(m.subscription_ids))
        for m in found
    ]

    keys = [(r.currency, r.customer_id) for r in out]

    def rows(_: Session, cursor: tuple[str, str] | None, limit: int) -> list[Any]:
        start = 0 if cursor is None else bisect.bisect_right(keys, cursor)
        return out[start:start + limit]

    return _paged(request, session, paging, format, f"movement-rows-{first}-{last}", MovementRowOut, rows,
                  lambda r: (r.currency, r.customer_id), None if after is None else (after[:3], after[4:]))


# The rows behind MRR and revenue


@router.get("/mrr/rows", response_model=Page[MrrRowOut], responses=CSV_ANSWER)
def mrr_rows(
    request: Request,
    principal: Admin,
    session: DbSession,
    paging: Paging,
    at: Annotated[Day, Query(description="MRR at the end of this day.")],
    currency: Currency = None,
    format: Format = "json",
) -> Any:
    """The subscriptions that make up MRR at the end of a day: one invoice line each, with its
    monthly amount. They add up to the day's MRR. By subscription; a page's last
    `invoice_line_id` is the next page's `starting_after`."""
    moment, currency = metrics.end_of(_day_in_range(at, "at")), _currency(currency)
    after = paging.starting_after
    if after is not None:
        subscription_id = session.scalar(
            sa.select(Invoice.subscription_id).join(InvoiceLine, InvoiceLine.invoice_id == Invoice.id).where(InvoiceLine.id == after)
        )
        if subscription_id is None:
            raise _not_a_row(after)
        after = (subscription_id, after)

    def rows(session: Session, cursor: tuple[str, str] | None, limit: int) -> list[Any]:
        metrics.without_jit(session)
        return [MrrRowOut(subscription_id=r.subscription_id, customer_id=r.customer_id, currency=r.currency, product_id=r.product_id,
                          invoice_line_id=r.invoice_line_id, mrr_cents=r.mrr_cents)
                for r in metrics.mrr_rows(session, moment, currency, after=cursor, limit=limit)]

    return _paged(request, session, paging, format, f"mrr-rows-{at}", MrrRowOut, rows,
                  lambda r: (r.subscription_id, r.invoice_line_id), after)


REVENUE_KINDS = {"payment": "payments", "refund": "refunds", "failed": "failed"}
"""A revenue row's kind and its key in ``metrics.revenue_rows``' answer, in the rows' order."""


@router.get("/revenue/rows", response_model=Page[RevenueRowOut], responses=CSV_ANSWER)
def revenue_rows(
    request: Request,
    principal: Admin,
    session: DbSession,
    paging: Paging,
    date_: Annotated[Day, Query(alias="date", description="The day (UTC).")],
    currency: Currency = None,
    format: Format = "json",
) -> Any:
    """The payments (gross), refunds and failed payments behind a day's revenue: the payments
    first, then the refunds, then the failed payments, each by id; a page's last `id` is the next
    page's `starting_after`."""
    day, currency = _day_in_range(date_, "date"), _currency(currency)
    after = _payment_or_refund(session, paging.starting_after)

    def rows(session: Session, cursor: tuple[str, str] | None, limit: int) -> list[Any]:
        found = metrics.revenue_rows(session, day, currency=currency, limit=limit,
                                     after=None if cursor is None else (REVENUE_KINDS[cursor[0]], cursor[1]))
        return [RevenueRowOut(kind=kind, id=row_id, currency=cur, amount_cents=int(cents))  # type: ignore[arg-type]
                for kind, key in REVENUE_KINDS.items() for row_id, cur, cents in found[key]]

    return _paged(request, session, paging, format, f"revenue-rows-{date_}", RevenueRowOut, rows, lambda r: (r.kind, r.id), after)


# Cohorts


@router.get("/cohorts", response_model=Listing[CohortCellOut], responses=CSV_ANSWER)
def cohort_matrix(
    principal: Admin,
    session: DbSession,
    from_month: Month,
    to_month: Month,
    currency: RequiredCurrency,
    cohort_type: CohortType = "first_purchase",
    format: Format = "json",
) -> Any:
    """The retention matrix: for each cohort month and each month since, the cohort's customers
    still paying and its net revenue, with their shares of month 0."""
    first, last = _month_in_range(from_month, "from_month"), _month_in_range(to_month, "to_month")
    cells = cohorts.retention(session, first, last, _currency(currency) or currency, cohort_type)
    out = [
        CohortCellOut(cohort_month=f"{c.cohort_month:%Y-%m}", month_index=c.month_index, month=f"{c.month:%Y-%m}", currency=currency,
                      cohort_size=c.cohort_size, customers=c.customers, revenue_cents=c.revenue_cents,
                      customer_share=_rate(c.customer_share), revenue_share=_rate(c.revenue_share))
        for c in cells
    ]
    return _listing(format, f"cohorts-{first:%Y-%m}-{last:%Y-%m}", out, CohortCellOut)


@router.get("/cohorts/cell", response_model=Page[CellRowOut], responses=CSV_ANSWER)
def cohort_cell(
    request: Request,
    principal: Admin,
    session: DbSession,
    paging: Paging,
    cohort_month: Month,
    month_index: Annotated[int, Query(ge=0, le=cohorts.MAX_MONTHS), QueryDigits],
    currency: RequiredCurrency,
    cohort_type: CohortType = "first_purchase",
    format: Format = "json",
) -> Any:
    """The payments and refunds behind a cell of the matrix, with their amounts and users: the
    cell's customers are their distinct users, its revenue their payments less their refunds.
    The payments first, then the refunds, each by id; a page's last `id` is the next page's
    `starting_after`."""
    first = _month_in_range(cohort_month, "cohort_month")
    _month_in_range(cohorts.add_months(first, month_index), "month_index")
    currency = _currency(currency) or currency
    after = _payment_or_refund(session, paging.starting_after)
    if after is not None and after[0] == "failed":  # (no row of a cell; where it would sort)
        after = ("payment", after[1])

    def rows(session: Session, cursor: tuple[str, str] | None, limit: int) -> list[Any]:
        found = cohorts.retention_cell(session, first, month_index, currency, cohort_type, after=cursor, limit=limit)
        return _amounts(session, Payment, found.payment_ids, "payment") + _amounts(session, Refund, found.refund_ids, "refund")

    return _paged(request, session, paging, format, f"cohort-{cohort_month}-{month_index}", CellRowOut, rows,
                  lambda r: (r.kind, r.id), after)


def _amounts(session: Session, model: Any, ids: list[str], kind: str) -> list[CellRowOut]:
    rows: list[CellRowOut] = []
    user = Payment.user_id if model is Payment else sa.select(Payment.user_id).where(Payment.id == Refund.payment_id).scalar_subquery()
    for i in range(0, len(ids), 500):
        for row_id, user_id, cur, cents in session.execute(
            sa.select(model.id, user, model.currency, model.amount_cents).where(model.id.in_(ids[i:i + 500])).order_by(model.id)
        ):
            rows.append(CellRowOut(kind=kind, id=row_id, user_id=user_id, currency=cur, amount_cents=int(cents)))  # type: ignore[arg-type]
    return rows


# Revenue recognition


@router.get("/recognition", response_model=RecognitionMonthOut, responses=CSV_ANSWER)
def recognised(
    principal: Admin,
    session: DbSession,
    month: Month,
    currency: Currency = None,
    format: Format = "json",
) -> Any:
    """Revenue recognised in a month and deferred at its end, per currency, and the invoices behind
    it (what each recognised and still defers) with their lines. CSV: one row per invoice."""
    first = _month_in_range(month, "month")
    currency = _currency(currency)
    found = {c: m for c, m in recognition.recognised(session, first.year, first.month).items() if currency is None or c == currency}
    invoices = [(invoice_id, m.currency, r, d) for m in found.values() for invoice_id, (r, d) in sorted(m.by_invoice.items())]
    lines = _lines(session, [i[0] for i in invoices])
    rows = [RecognitionRowOut(invoice_id=i, currency=c, recognised_cents=r, deferred_cents=d, lines=lines.get(i, []))
            for i, c, r, d in invoices]
    if format == "csv":
        return csv_answer(
            f"recognition-{month}", ["month", "invoice_id", "currency", "recognised_cents", "deferred_cents", "invoice_line_ids"],
            ([month, r.invoice_id, r.currency, r.recognised_cents, r.deferred_cents, [x.id for x in r.lines]] for r in rows),
        )
    return RecognitionMonthOut(
        data=[RecognitionOut(month=month, currency=c, recognised_cents=m.recognised_cents, deferred_cents=m.deferred_cents)
              for c, m in found.items()],
        invoices=rows,
    )


def _lines(session: Session, invoice_ids: list[str]) -> dict[str, list[InvoiceLineOut]]:
    out: dict[str, list[InvoiceLineOut]] = defaultdict(list)
    for i in range(0, len(invoice_ids), 500):
        for invoice_id, line_id, cents, start, end in session.execute(
            sa.select(InvoiceLine.invoice_id, InvoiceLine.id, InvoiceLine.amount_cents, InvoiceLine.period_start, InvoiceLine.period_end)
            .where(InvoiceLine.invoice_id.in_(invoice_ids[i:i + 500])).order_by(InvoiceLine.invoice_id, InvoiceLine.position)
        ):
            out[invoice_id].append(InvoiceLineOut(id=line_id, amount_cents=int(cents), period_start=_iso(start), period_end=_iso(end)))
    return out


def _iso(moment: Any) -> str | None:
    return None if moment is None else clock.ensure_utc(moment).isoformat()
