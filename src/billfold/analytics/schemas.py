"""What the analytics API answers (``billfold.analytics.api``; docs/analytics.md "## API").

Money is integer minor units beside its currency; a rate is a string with four decimals, or null
when it is undefined (nothing to divide by); a count is an integer."""

from __future__ import annotations

from datetime import date
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, Field

Kind = Literal["stock", "flow", "rate"]
Unit = Literal["cents", "count", "ratio"]
T = TypeVar("T")


class SeriesPoint(BaseModel):
    period_start: date
    period_end: date = Field(description="The period's last day (included).")
    currency: str | None = Field(description="Null for figures that are not money per currency (memberships).")
    value: int | str | None = Field(
        description="Minor units (cents), a count, or a rate to four places as a string; null when undefined."
    )


class SeriesOut(BaseModel):
    metric: str
    kind: Kind = Field(
        description="stock: the value at the period's last day; flow: the sum over the period; rate: see `aggregation`."
    )
    unit: Unit
    aggregation: str = Field(description="How a week's or month's value is made from its days.")
    granularity: Literal["day", "week", "month"]
    from_: date = Field(alias="from")
    to: date
    computed_days: list[date] = Field(description="Days with no snapshot, computed for this answer (not stored).")
    data: list[SeriesPoint]

    model_config = {"populate_by_name": True}


class MovementsOut(BaseModel):
    currency: str
    mrr_at_start: int = Field(description="MRR at the end of the day before `from`, minor units.")
    mrr_at_end: int = Field(description="MRR at the end of `to`.")
    new: int
    expansion: int
    contraction: int
    churned: int
    reactivation: int
    net_new: int = Field(description="The sum of the movements: equals mrr_change.")
    mrr_change: int


class MovementRowOut(BaseModel):
    customer_id: str
    currency: str
    kind: Literal["new", "expansion", "contraction", "churned", "reactivation"]
    before_cents: int
    after_cents: int
    change_cents: int
    subscription_ids: list[str]


class MrrRowOut(BaseModel):
    subscription_id: str
    customer_id: str
    currency: str
    product_id: str
    invoice_line_id: str
    mrr_cents: int


class RevenueRowOut(BaseModel):
    kind: Literal["payment", "refund", "failed"] = Field(
        description="payment: counted in gross; refund: in refunds; failed: a failed payment (not money taken)."
    )
    id: str
    currency: str
    amount_cents: int


class CohortCellOut(BaseModel):
    cohort_month: str = Field(description="YYYY-MM")
    month_index: int
    month: str = Field(description="YYYY-MM")
    currency: str
    cohort_size: int
    customers: int
    revenue_cents: int
    customer_share: str | None
    revenue_share: str | None


class CellRowOut(BaseModel):
    kind: Literal["payment", "refund"]
    id: str
    user_id: str | None
    currency: str
    amount_cents: int


class InvoiceLineOut(BaseModel):
    id: str
    amount_cents: int
    period_start: str | None
    period_end: str | None


class RecognitionRowOut(BaseModel):
    invoice_id: str
    currency: str
    recognised_cents: int
    deferred_cents: int
    lines: list[InvoiceLineOut]


class RecognitionOut(BaseModel):
    month: str
    currency: str
    recognised_cents: int
    deferred_cents: int


class Listing(BaseModel, Generic[T]):
    """A whole list (a figure per currency or per cell, answered at once; CSV with ``?format=csv``).
    The rows behind a figure are pages instead (``kit.http.Page``)."""

    data: list[T]


class RecognitionMonthOut(BaseModel):
    data: list[RecognitionOut] = Field(description="Per currency.")
    invoices: list[RecognitionRowOut] = Field(description="The invoices behind the figures, with their lines.")
