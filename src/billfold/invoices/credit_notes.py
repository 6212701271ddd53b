"""Credit notes: every refund that succeeds issues one, linked to the invoice the refunded payment
paid, numbered in its own gapless series (``CN-2026-000001``, one ``credit-note-<year>`` row of
``number_series``, taken inside the refund's transaction like invoice numbers).

The reaction :func:`credit_refunds` (attached to refunds by ``billfold.wiring.wire()``) runs in
the transaction that records the refund as succeeded: the refund and its credit note are written together or not at
all. It is idempotent: a refund has at most one credit note (UNIQUE ``refund_id``), and a call
issues the missing ones of every succeeded refund of the payment.

A refund that fails after succeeding gave nothing back: :func:`void_for_failed_refund` (attached to
``orders.events.refund_reversed``) marks its note void (``voided_at``, ``void_reason``), in the
transaction that records the failure. A note is never deleted nor renumbered, so the series stays
gapless and the void is on the document itself; voiding is set once, never cleared.

An invoice is never changed by a credit note: it stays ``paid`` (its state machine has no move
out of ``paid``), and what was credited is read beside it (:func:`credits_of`): the amount (of
the notes that stand), the notes (voided ones too, marked), and ``credit_status`` ``none`` |
``partially_credited`` | ``credited`` (in full).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold import numbering
from billfold.accounts.access import readable
from billfold.accounts.security import Principal
from billfold.audit import audit
from billfold.kit import clock
from billfold.kit.errors import NotFound
from billfold.kit.ids import has_prefix
from billfold.models import CreditNote, Invoice, Order, Payment, Refund
from billfold.payments.details import PaymentDetails

DEFAULT_PREFIX = "CN"


def _prefix() -> str:
    from billfold.config import get_settings

    try:
        return get_settings().credit_note_number_prefix
    except Exception:  # settings that cannot load (a test without environment) still number notes
        return DEFAULT_PREFIX


def credit_note_number(session: Session, year: int) -> str:
    """The next credit note number of the year, e.g. ``CN-2026-000007``: gapless per year."""
    return f"{_prefix()}-{year}-{numbering.take(session, f'credit-note-{year}'):06d}"


def invoice_paid_by(session: Session, payment: Payment) -> Invoice | None:
    """The invoice ``payment`` paid: a subscription payment names it (``metadata.invoice_id``); an
    order's payment paid the order's invoice (made now if an older order lacks one)."""
    invoice_id = PaymentDetails.of(payment).invoice_id
    if invoice_id is not None and has_prefix(invoice_id, "inv"):
        return session.get(Invoice, invoice_id)
    if payment.order_id is None:
        return None
    from billfold.invoices.service import invoice_for_order

    order = session.get(Order, payment.order_id)
    return invoice_for_order(session, order) if order is not None and order.status in ("paid", "refunded") else None


def credit_refunds(session: Session, payment: Payment) -> list[CreditNote]:
    """A credit note for each succeeded refund of ``payment`` that has none yet, oldest first."""
    missing = list(session.scalars(
        sa.select(Refund)
        .outerjoin(CreditNote, CreditNote.refund_id == Refund.id)
        .where(Refund.payment_id == payment.id, Refund.status == "succeeded", CreditNote.id.is_(None))
        .order_by(Refund.id)
    ))
    if not missing:
        return []
    invoice = invoice_paid_by(session, payment)
    if invoice is None:
        for refund in missing:
            audit(session, "refund", refund.id, "credit_note.not_issued", payment_id=payment.id, reason="no invoice")
        return []
    now = clock.now()
    notes = []
    for refund in missing:
        note = CreditNote(
            credit_note_number=credit_note_number(session, now.year), invoice_id=invoice.id, refund_id=refund.id,
            amount_cents=refund.amount_cents, currency=refund.currency, reason=refund.reason, issue_date=now,
        )
        session.add(note)
        session.flush()
        audit(session, "invoice", invoice.id, "invoice.credited", credit_note_id=note.id,
              credit_note_number=note.credit_note_number, refund_id=refund.id, amount_cents=refund.amount_cents)
        notes.append(note)
    return notes


def void_for_failed_refund(session: Session, payment: Payment, refund: Refund) -> CreditNote | None:
    """Void the credit note of ``refund``, which failed after succeeding (the provider kept the
    money, or it came back). Idempotent: a note voided already, or none (a refund that never
    succeeded, or paid no invoice), changes nothing. The caller holds the refund's row lock."""
    if refund.status != "failed":
        return None
    note = session.scalars(sa.select(CreditNote).where(CreditNote.refund_id == refund.id)).one_or_none()
    if note is None or note.voided_at is not None:
        return None
    note.voided_at = clock.now()
    note.void_reason = (refund.error_message or "the refund failed after succeeding")[:255]
    session.flush()
    audit(session, "invoice", note.invoice_id, "invoice.credit_voided", credit_note_id=note.id,
          credit_note_number=note.credit_note_number, refund_id=refund.id, payment_id=payment.id,
          amount_cents=note.amount_cents, reason=note.void_reason)
    return note


@dataclass
class Credits:
    """What was credited on one invoice: ``credited_cents`` by the notes that stand; ``notes``
    all of them, voided ones too."""

    credited_cents: int = 0
    notes: list[CreditNote] = field(default_factory=list)

    def status(self, invoice: Invoice) -> str:
        if not self.credited_cents:
            return "none"
        return "credited" if self.credited_cents >= invoice.total_cents else "partially_credited"


def credits_of(session: Session, invoice_ids: list[str]) -> dict[str, Credits]:
    found: dict[str, Credits] = {invoice_id: Credits() for invoice_id in invoice_ids}
    if invoice_ids:
        for note in session.scalars(
            sa.select(CreditNote).where(CreditNote.invoice_id.in_(invoice_ids)).order_by(CreditNote.invoice_id, CreditNote.id)
        ):
            credits = found[note.invoice_id]
            if note.voided_at is None:  # a void note credits nothing; it is listed, marked void
                credits.credited_cents += note.amount_cents
            credits.notes.append(note)
    return found


# Who sees which credit notes: whoever sees the invoice it credits (docs/permissions.md)


def visible_credit_notes(session: Session, principal: Principal) -> sa.Select[tuple[CreditNote]]:
    invoices = readable(principal, Invoice).with_only_columns(Invoice.id)
    return sa.select(CreditNote).where(CreditNote.invoice_id.in_(invoices))


def get_credit_note(session: Session, principal: Principal, credit_note_id: str) -> CreditNote:
    """A credit note the principal may see; NotFound otherwise, as for no such note."""
    found = None
    if has_prefix(credit_note_id, "cn"):
        found = session.scalars(
            visible_credit_notes(session, principal).where(CreditNote.id == credit_note_id)
        ).one_or_none()
    if found is None:
        raise NotFound(f"no credit note {credit_note_id}")
    return found
