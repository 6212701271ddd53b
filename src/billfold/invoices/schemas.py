"""What the invoices API gives."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from billfold.invoices.credit_notes import Credits
from billfold.models import CreditNote, Invoice, InvoiceLine

InvoiceStatus = Literal["draft", "open", "paid", "void", "uncollectible"]
LineKind = Literal["item", "proration", "credit", "shipping"]
CreditStatus = Literal["none", "partially_credited", "credited"]
CreditNoteStatus = Literal["issued", "void"]


class CreditNoteOut(BaseModel):
    id: str
    credit_note_number: str = Field(description="CN-YEAR-000001: its own gapless series.")
    invoice_id: str = Field(description="The invoice it credits.")
    invoice_number: str
    user_id: str | None = Field(description="Whom it is for: the invoice's customer.")
    organization_id: str | None
    refund_id: str = Field(description="The refund it records.")
    amount_cents: int = Field(description="What was given back, positive.")
    currency: str
    reason: str | None
    issue_date: datetime
    pdf_url: str = Field(description="Where the credit note's PDF document is.")
    created_at: datetime
    status: CreditNoteStatus = Field(
        "issued",
        description="issued; void once its refund failed after succeeding (nothing was given back). "
        "A void note keeps its number and stays listed; it credits nothing.",
    )
    voided_at: datetime | None = Field(None, description="When it was voided; null while it stands.")
    void_reason: str | None = Field(None, description="Why it was voided (the provider's word on the refund).")

    @classmethod
    def of(cls, note: CreditNote, invoice: Invoice) -> CreditNoteOut:
        return cls(
            id=note.id, credit_note_number=note.credit_note_number, invoice_id=note.invoice_id,
            invoice_number=invoice.invoice_number, user_id=invoice.user_id, organization_id=invoice.organization_id,
            refund_id=note.refund_id, amount_cents=note.amount_cents, currency=note.currency, reason=note.reason,
            issue_date=note.issue_date, pdf_url=f"/v1/credit-notes/{note.id}/pdf", created_at=note.created_at,
            status="void" if note.voided_at is not None else "issued", voided_at=note.voided_at,
            void_reason=note.void_reason,
        )


class InvoiceLineOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

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
    credited_cents: int = Field(description="What its credit notes gave back (refunds), in all; void notes count nothing.")
    credit_status: CreditStatus = Field(
        description="none; partially_credited; credited (in full). The status stays paid: credit notes never change an invoice."
    )
    credit_notes: list[CreditNoteOut] = Field(description="All its credit notes, void ones too (status void).")
    pdf_url: str = Field(description="Where the invoice's PDF document is.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, invoice: Invoice, lines: list[InvoiceLine], credits: Credits | None = None) -> InvoiceOut:
        credits = credits or Credits()
        return cls(
            id=invoice.id, invoice_number=invoice.invoice_number, status=invoice.status,  # type: ignore[arg-type]
            order_id=invoice.order_id, subscription_id=invoice.subscription_id, user_id=invoice.user_id,
            organization_id=invoice.organization_id, currency=invoice.currency, amount_cents=invoice.amount_cents,
            discount_cents=invoice.discount_cents, tax_cents=invoice.tax_cents, total_cents=invoice.total_cents,
            issue_date=invoice.issue_date, due_date=invoice.due_date, paid_date=invoice.paid_date,
            billing_address_id=invoice.billing_address_id, provider_id=invoice.provider_id,
            provider_invoice_id=invoice.provider_invoice_id,
            lines=[InvoiceLineOut.model_validate(line) for line in lines],
            credited_cents=credits.credited_cents, credit_status=credits.status(invoice),  # type: ignore[arg-type]
            credit_notes=[CreditNoteOut.of(note, invoice) for note in credits.notes],
            pdf_url=f"/v1/invoices/{invoice.id}/pdf", created_at=invoice.created_at, updated_at=invoice.updated_at,
        )
