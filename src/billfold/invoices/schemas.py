"""What the invoices API gives."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from billfold.models import Invoice, InvoiceLine

InvoiceStatus = Literal["draft", "open", "paid", "void", "uncollectible"]
LineKind = Literal["item", "proration", "credit", "shipping"]


class InvoiceLineOut(BaseModel):
    id: str
    position: int
    kind: LineKind
    description: str
    product_id: str | None
    quantity: int
    unit_amount_cents: int = Field(description="Negative for a credit or a proration refund.")
    amount_cents: int = Field(description="quantity × unit amount; negative for a credit or a proration refund.")
    period_start: datetime | None
    period_end: datetime | None

    @classmethod
    def of(cls, line: InvoiceLine) -> InvoiceLineOut:
        return cls(
            id=line.id, position=line.position, kind=line.kind,  # type: ignore[arg-type]
            description=line.description, product_id=line.product_id, quantity=line.quantity,
            unit_amount_cents=line.unit_amount_cents, amount_cents=line.amount_cents,
            period_start=line.period_start, period_end=line.period_end,
        )


class InvoiceOut(BaseModel):
    id: str
    invoice_number: str
    status: InvoiceStatus
    order_id: str | None
    subscription_id: str | None
    user_id: str | None
    organization_id: str | None
    currency: str
    amount_cents: int = Field(description="The sum of the lines.")
    discount_cents: int
    tax_cents: int
    total_cents: int = Field(description="amount − discount + tax.")
    issue_date: datetime
    due_date: datetime
    paid_date: datetime | None
    billing_address_id: str | None
    provider_id: str | None
    provider_invoice_id: str | None
    lines: list[InvoiceLineOut]
    pdf_url: str = Field(description="Where the invoice's PDF document is.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, invoice: Invoice, lines: list[InvoiceLine]) -> InvoiceOut:
        return cls(
            id=invoice.id, invoice_number=invoice.invoice_number, status=invoice.status,  # type: ignore[arg-type]
            order_id=invoice.order_id, subscription_id=invoice.subscription_id, user_id=invoice.user_id,
            organization_id=invoice.organization_id, currency=invoice.currency, amount_cents=invoice.amount_cents,
            discount_cents=invoice.discount_cents, tax_cents=invoice.tax_cents, total_cents=invoice.total_cents,
            issue_date=invoice.issue_date, due_date=invoice.due_date, paid_date=invoice.paid_date,
            billing_address_id=invoice.billing_address_id, provider_id=invoice.provider_id,
            provider_invoice_id=invoice.provider_invoice_id, lines=[InvoiceLineOut.of(line) for line in lines],
            pdf_url=f"/v1/invoices/{invoice.id}/pdf", created_at=invoice.created_at, updated_at=invoice.updated_at,
        )
