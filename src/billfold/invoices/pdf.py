"""An invoice as a PDF document (fpdf2, pure Python): the seller (settings ``seller_name``,
``seller_address``, ``seller_tax_id``), the buyer (the billing address as it was when the order was
placed: ``orders.metadata.billing_address``; for other invoices the billing address row, else the
customer's name), the number, dates and status, the lines, and the totals formatted in the
invoice's currency (``kit.money.Money.format``).

Text is set in DejaVu Sans, a Unicode TrueType font, so names such as "Zoë" or "Łukasz" print as
written. When the font file is missing the document falls back to Helvetica, a core PDF font that
only holds Latin-1: other characters print as "?", and nothing fails. The document is
deterministic: the same invoice gives the same bytes (its creation date is the issue date).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from sqlalchemy.orm import Session

from billfold.invoices.credit_notes import Credits, credits_of
from billfold.kit.money import Money
from billfold.models import Address, CreditNote, Invoice, InvoiceLine, Order, Organization, User

FONT_DIRS = (
    os.environ.get("BILLFOLD_FONT_DIR", ""),
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/TTF",
    "/usr/local/share/fonts",
    "/Library/Fonts",
)
ADDRESS_ORDER = ("name", "line1", "line2", "city", "state", "postal_code", "country", "email", "phone")
KIND_LABELS = {"proration": "Proration", "credit": "Credit", "shipping": "Shipping"}


@dataclass(frozen=True)
class Party:
    """Who is named on the document: a name and the lines under it."""

    name: str
    lines: tuple[str, ...] = ()
    tax_id: str | None = None


def find_font(name: str = "DejaVuSans.ttf") -> Path | None:
    for folder in FONT_DIRS:
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def _address_lines(snapshot: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    name = str(snapshot.get("name") or "")
    city_line = " ".join(str(snapshot[k]) for k in ("postal_code", "city") if snapshot.get(k))
    lines = [str(snapshot[k]) for k in ("line1", "line2") if snapshot.get(k)]
    if city_line:
        lines.append(city_line)
    lines += [str(snapshot[k]) for k in ("state", "country", "email", "phone") if snapshot.get(k)]
    return name, tuple(lines)


def buyer_of(session: Session, invoice: Invoice) -> Party:
    """The buyer as the invoice should name them: the order's billing address snapshot, else the
    billing address row, else the customer's own name (an organization's, with its tax id)."""
    snapshot: dict[str, Any] | None = None
    if invoice.order_id:
        order = session.get(Order, invoice.order_id)
        if order is not None:
            snapshot = (order.metadata_ or {}).get("billing_address")
    if snapshot is None and invoice.billing_address_id:
        address = session.get(Address, invoice.billing_address_id)
        if address is not None:
            snapshot = {k: getattr(address, k) for k in ADDRESS_ORDER}
    name, lines = _address_lines(snapshot) if snapshot else ("", ())
    tax_id = None
    customer = ""
    if invoice.organization_id:
        organization = session.get(Organization, invoice.organization_id)
        if organization is not None:
            customer, tax_id = organization.name, organization.tax_id
    elif invoice.user_id:
        user = session.get(User, invoice.user_id)
        if user is not None:
            customer = f"{user.name} {user.last_name}".strip()
    if not name:
        name = customer or "Customer"
    elif customer and customer != name:
        lines = (customer, *lines)
    return Party(name, lines, tax_id)


def seller_of(settings: Any) -> Party:
    address = str(settings.seller_address).replace("\\n", "\n")
    return Party(settings.seller_name, tuple(line for line in address.splitlines() if line.strip()), settings.seller_tax_id or None)


def _date(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d") if value is not None else "-"


class _Document(FPDF):
    def __init__(self) -> None:
        super().__init__(format="A4")
        regular, bold = find_font("DejaVuSans.ttf"), find_font("DejaVuSans-Bold.ttf")
        self.unicode = False
        if regular is not None:
            try:
                self.add_font("Body", "", str(regular))
                self.add_font("Body", "B", str(bold or regular))
                self.unicode = True
            except Exception:  # a damaged font file: fall back rather than fail
                self.unicode = False
        self.family = "Body" if self.unicode else "Helvetica"
        self.set_auto_page_break(auto=True, margin=18)
        self.set_margins(18, 18, 18)

    def text_of(self, value: object) -> str:
        text = str(value)
        if self.unicode:
            return text
        return text.encode("latin-1", "replace").decode("latin-1")

    def font(self, size: float, bold: bool = False) -> None:
        self.set_font(self.family, "B" if bold else "", size)

    def line_of(self, text: object, size: float = 9, bold: bool = False, align: str = "L", width: float = 0) -> None:
        self.font(size, bold)
        self.cell(width, size * 0.5, self.text_of(text), align=align, new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def block(self, title: str, party: Party, x: float, y: float, width: float) -> float:
        self.set_xy(x, y)
        self.font(8, True)
        self.cell(width, 5, self.text_of(title), new_x=XPos.LEFT, new_y=YPos.NEXT)
        self.font(10, True)
        self.multi_cell(width, 5, self.text_of(party.name), new_x=XPos.LEFT, new_y=YPos.NEXT)
        self.font(9)
        rows: list[str] = list(party.lines)
        if party.tax_id:
            rows.append(f"Tax ID: {party.tax_id}")
        for row in rows:
            self.multi_cell(width, 4.5, self.text_of(row), new_x=XPos.LEFT, new_y=YPos.NEXT)
        return self.get_y()


CREDIT_STATUS = {"credited": "CREDITED IN FULL", "partially_credited": "PARTLY CREDITED"}


def render(
    invoice: Invoice, lines: Sequence[InvoiceLine], seller: Party, buyer: Party, credits: Credits | None = None
) -> bytes:
    """The PDF bytes of ``invoice``, with what its credit notes gave back."""
    credits = credits or Credits()
    credit_status = credits.status(invoice)
    pdf = _Document()
    pdf.set_title(pdf.text_of(f"Invoice {invoice.invoice_number}"))
    pdf.set_author(pdf.text_of(seller.name))
    pdf.set_creator("Billfold")
    pdf.set_producer("Billfold")
    pdf.set_creation_date(invoice.issue_date)
    pdf.add_page()

    def money(cents: int) -> str:
        return Money(int(cents), invoice.currency).format()

    pdf.font(20, True)
    pdf.cell(0, 10, "INVOICE", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.line_of(f"Invoice number: {invoice.invoice_number}", 10, True)
    status = invoice.status.upper() + (f", {CREDIT_STATUS[credit_status]}" if credit_status in CREDIT_STATUS else "")
    pdf.line_of(f"Status: {status}", 9)
    pdf.line_of(f"Issue date: {_date(invoice.issue_date)}", 9)
    pdf.line_of(f"Due date: {_date(invoice.due_date)}", 9)
    if invoice.paid_date is not None:
        pdf.line_of(f"Paid on: {_date(invoice.paid_date)}", 9)
    top = pdf.get_y() + 6
    half = (pdf.w - pdf.l_margin - pdf.r_margin) / 2
    bottom = max(
        pdf.block("FROM", seller, pdf.l_margin, top, half - 4),
        pdf.block("BILL TO", buyer, pdf.l_margin + half + 4, top, half - 4),
    )
    pdf.set_xy(pdf.l_margin, bottom + 8)

    pdf.font(9)
    with pdf.table(
        col_widths=(52, 9, 19, 20),
        text_align=("LEFT", "RIGHT", "RIGHT", "RIGHT"),
        line_height=5,
        first_row_as_headings=True,
    ) as table:
        table.row(["Description", "Qty", "Unit price", "Amount"])
        for line in lines:
            description = line.description
            if line.kind in KIND_LABELS:
                description = f"{KIND_LABELS[line.kind]}: {description}"
            if line.period_start and line.period_end:
                description += f" ({_date(line.period_start)} to {_date(line.period_end)})"
            table.row(
                [pdf.text_of(description), str(line.quantity), pdf.text_of(money(line.unit_amount_cents)), pdf.text_of(money(line.amount_cents))]
            )

    pdf.ln(4)
    rows: list[tuple[str, int, bool]] = [("Subtotal", invoice.amount_cents, False)]
    if invoice.discount_cents:
        rows.append(("Discount", -invoice.discount_cents, False))
    rows.append(("Tax", invoice.tax_cents, False))
    rows.append((f"Total ({invoice.currency})", invoice.total_cents, True))
    if invoice.status == "paid":
        rows.append(("Amount due", 0, False))
        standing = [note for note in credits.notes if note.voided_at is None]
        for note in standing:
            rows.append((f"Credited: {note.credit_note_number} ({_date(note.issue_date)})", -note.amount_cents, False))
        if standing:
            rows.append(("Paid less credited", invoice.total_cents - credits.credited_cents, True))
    elif invoice.status == "open":
        rows.append(("Amount due", invoice.total_cents, True))
    label_width, value_width = 70.0, 35.0
    for label, cents, bold in rows:
        pdf.set_x(pdf.w - pdf.r_margin - label_width - value_width)
        pdf.font(10 if bold else 9, bold)
        pdf.cell(label_width, 6, pdf.text_of(label), align="R")
        pdf.cell(value_width, 6, pdf.text_of(money(cents)), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    voided = [note for note in credits.notes if note.voided_at is not None]
    if voided:
        pdf.ln(2)
    for note in voided:
        assert note.voided_at is not None
        pdf.line_of(f"VOID: credit note {note.credit_note_number} of {_date(note.issue_date)} ({money(note.amount_cents)}), "
                    f"voided {_date(note.voided_at)}; nothing credited", 9)
    if invoice.status == "void":
        pdf.ln(4)
        pdf.line_of("This invoice has been voided and is not payable.", 9, True)
    elif invoice.status == "uncollectible":
        pdf.ln(4)
        pdf.line_of("This invoice has been marked uncollectible.", 9, True)
    return bytes(pdf.output())


def document(session: Session, settings: Any, invoice: Invoice, lines: Iterable[InvoiceLine] | None = None) -> bytes:
    from billfold.invoices.service import lines_of

    rows = list(lines) if lines is not None else lines_of(session, invoice.id)
    credits = credits_of(session, [invoice.id])[invoice.id]
    return render(invoice, rows, seller_of(settings), buyer_of(session, invoice), credits)


def render_credit_note(note: CreditNote, invoice: Invoice, seller: Party, buyer: Party) -> bytes:
    """The PDF bytes of a credit note: its number and date, the invoice it credits, and the amount."""
    pdf = _Document()
    pdf.set_title(pdf.text_of(f"Credit note {note.credit_note_number}"))
    pdf.set_author(pdf.text_of(seller.name))
    pdf.set_creator("Billfold")
    pdf.set_producer("Billfold")
    pdf.set_creation_date(note.issue_date)
    pdf.add_page()

    def money(cents: int) -> str:
        return Money(int(cents), note.currency).format()

    pdf.font(20, True)
    pdf.cell(0, 10, "CREDIT NOTE" + (" - VOID" if note.voided_at is not None else ""), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.line_of(f"Credit note number: {note.credit_note_number}", 10, True)
    pdf.line_of(f"Issue date: {_date(note.issue_date)}", 9)
    if note.voided_at is not None:
        pdf.line_of(f"VOID since {_date(note.voided_at)}", 10, True)
    pdf.line_of(f"Credits invoice: {invoice.invoice_number} of {_date(invoice.issue_date)}", 9, True)
    top = pdf.get_y() + 6
    half = (pdf.w - pdf.l_margin - pdf.r_margin) / 2
    bottom = max(
        pdf.block("FROM", seller, pdf.l_margin, top, half - 4),
        pdf.block("TO", buyer, pdf.l_margin + half + 4, top, half - 4),
    )
    pdf.set_xy(pdf.l_margin, bottom + 8)
    pdf.font(9)
    with pdf.table(col_widths=(72, 28), text_align=("LEFT", "RIGHT"), line_height=5, first_row_as_headings=True) as table:
        table.row(["Description", "Amount"])
        description = f"Refund on invoice {invoice.invoice_number}" + (f": {note.reason}" if note.reason else "")
        table.row([pdf.text_of(description), pdf.text_of(money(-note.amount_cents))])
    pdf.ln(4)
    pdf.set_x(pdf.w - pdf.r_margin - 80)
    pdf.font(10, True)
    pdf.cell(45, 6, pdf.text_of(f"Total credited ({note.currency})"), align="R")
    pdf.cell(35, 6, pdf.text_of(money(note.amount_cents)), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)
    if note.voided_at is None:
        pdf.line_of("The amount has been refunded to the original payment method.", 9)
    else:
        pdf.line_of("This credit note is void: its refund failed after succeeding; nothing was credited.", 9, True)
        if note.void_reason:
            pdf.line_of(f"Reason: {note.void_reason}", 9)
    return bytes(pdf.output())


def credit_note_document(session: Session, settings: Any, note: CreditNote) -> bytes:
    invoice = session.get(Invoice, note.invoice_id)
    assert invoice is not None  # the foreign key holds
    return render_credit_note(note, invoice, seller_of(settings), buyer_of(session, invoice))
