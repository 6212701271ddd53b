"""The invoices HTTP routes under /v1 (tag ``invoices``): list and read the invoices one may see,
download their PDF, and (the shop's admins) void them or mark them uncollectible; the same for
the credit notes that refunds issue (``/v1/credit-notes``, seen by whoever sees their invoice)."""

from __future__ import annotations

from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from billfold.accounts.access import readable
from billfold.accounts.auth import Authenticated
from billfold.invoices import credit_notes, pdf, service
from billfold.invoices.schemas import CreditNoteOut, InvoiceOut, InvoiceStatus
from billfold.kit.http import DbSession, Page, Paging, paginate, problems
from billfold.models import CreditNote, Invoice

router = APIRouter(prefix="/v1", responses=problems(400, 401, 403, 404, 422))
invoices = APIRouter(prefix="/invoices", tags=["invoices"])
notes = APIRouter(prefix="/credit-notes", tags=["invoices"])

IdQuery = Query(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$")


def invoices_out(session: Session, rows: list[Invoice]) -> list[InvoiceOut]:
    lines = service.lines_of_many(session, [row.id for row in rows])
    credits = credit_notes.credits_of(session, [row.id for row in rows])
    return [InvoiceOut.of(row, lines[row.id], credits[row.id]) for row in rows]


@invoices.get("", response_model=Page[InvoiceOut])
def list_invoices(
    principal: Authenticated,
    session: DbSession,
    paging: Paging,
    status: Annotated[InvoiceStatus | None, Query(description="Only invoices in this status.")] = None,
    order_id: Annotated[str | None, IdQuery] = None,
    subscription_id: Annotated[str | None, IdQuery] = None,
) -> Page[InvoiceOut]:
    """Your invoices and your organizations' (every member sees them); everyone's for the shop's
    admins and read API keys. Oldest first."""
    statement = readable(principal, Invoice)
    if status is not None:
        statement = statement.where(Invoice.status == status)
    if order_id is not None:
        statement = statement.where(Invoice.order_id == order_id)
    if subscription_id is not None:
        statement = statement.where(Invoice.subscription_id == subscription_id)
    page = paginate(session, statement, Invoice.id, paging, lambda row: row)
    return Page[InvoiceOut](data=invoices_out(session, list(page.data)), has_more=page.has_more)


@invoices.get("/{invoice_id}", response_model=InvoiceOut)
def get_invoice(invoice_id: str, principal: Authenticated, session: DbSession) -> InvoiceOut:
    """One invoice with its lines."""
    return invoices_out(session, [service.get_invoice(session, principal, invoice_id)])[0]


@invoices.get(
    "/{invoice_id}/pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}, "description": "The invoice as a PDF document."}},
)
def invoice_pdf(invoice_id: str, request: Request, principal: Authenticated, session: DbSession) -> Response:
    """The invoice as a PDF document (an attachment named after its number)."""
    invoice = service.get_invoice(session, principal, invoice_id)
    document = pdf.document(session, request.app.state.security.settings, invoice)
    return Response(
        document,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{invoice.invoice_number}.pdf"'},
    )


def _move(invoice_id: str, principal: Authenticated, session: Session, to: Literal["void", "uncollectible"]) -> InvoiceOut:
    invoice = service.change_status(session, principal, invoice_id, to)
    return invoices_out(session, [invoice])[0]


@invoices.post("/{invoice_id}/void", response_model=InvoiceOut, responses=problems(409))
def void_invoice(invoice_id: str, principal: Authenticated, session: DbSession) -> InvoiceOut:
    """Void an open or uncollectible invoice (the shop's admins). A paid invoice cannot be voided
    (409 `illegal_transition`): refund its payment instead. Voiding a void invoice changes nothing."""
    return _move(invoice_id, principal, session, "void")


@invoices.post("/{invoice_id}/mark-uncollectible", response_model=InvoiceOut, responses=problems(409))
def mark_uncollectible(invoice_id: str, principal: Authenticated, session: DbSession) -> InvoiceOut:
    """Mark an open invoice uncollectible (the shop's admins); it can still be paid or voided later."""
    return _move(invoice_id, principal, session, "uncollectible")


def notes_out(session: Session, rows: list[CreditNote]) -> list[CreditNoteOut]:
    credited = {i.id: i for i in session.scalars(
        sa.select(Invoice).where(Invoice.id.in_({row.invoice_id for row in rows}))
    )} if rows else {}
    return [CreditNoteOut.of(row, credited[row.invoice_id]) for row in rows]


@notes.get("", response_model=Page[CreditNoteOut])
def list_credit_notes(
    principal: Authenticated,
    session: DbSession,
    paging: Paging,
    invoice_id: Annotated[str | None, IdQuery] = None,
) -> Page[CreditNoteOut]:
    """The credit notes of the invoices you may see (yours and your organizations'; everyone's for
    the shop's admins and read API keys). Oldest first; `invoice_id` keeps one invoice's."""
    statement = credit_notes.visible_credit_notes(session, principal)
    if invoice_id is not None:
        statement = statement.where(CreditNote.invoice_id == invoice_id)
    page = paginate(session, statement, CreditNote.id, paging, lambda row: row)
    return Page[CreditNoteOut](data=notes_out(session, list(page.data)), has_more=page.has_more)


@notes.get("/{credit_note_id}", response_model=CreditNoteOut)
def get_credit_note(credit_note_id: str, principal: Authenticated, session: DbSession) -> CreditNoteOut:
    """One credit note: what a refund gave back, and the invoice it credits."""
    return notes_out(session, [credit_notes.get_credit_note(session, principal, credit_note_id)])[0]


@notes.get(
    "/{credit_note_id}/pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}, "description": "The credit note as a PDF document."}},
)
def credit_note_pdf(credit_note_id: str, request: Request, principal: Authenticated, session: DbSession) -> Response:
    """The credit note as a PDF document (an attachment named after its number)."""
    note = credit_notes.get_credit_note(session, principal, credit_note_id)
    document = pdf.credit_note_document(session, request.app.state.security.settings, note)
    return Response(
        document,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{note.credit_note_number}.pdf"'},
    )


router.include_router(invoices)
router.include_router(notes)
