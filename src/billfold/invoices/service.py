"""Invoices: issued with their lines, numbered gaplessly (``INV-2026-000001``), moved through their
statuses by one state machine (reference/providers.md §3.2):

    draft → open;  open → paid | void | uncollectible;  uncollectible → paid | void

``paid`` and ``void`` are terminal. An invoice is issued straight to ``open`` (both moves are
recorded in ``payment_events``) with its number, taken last so the series' row lock is held for
as short a time as possible. Services never commit: the caller's transaction does, and a
transaction that rolls back gives its number back.

Amounts: ``amount_cents`` is the sum of the lines (credits and proration refunds are negative
lines); ``total_cents = amount_cents − discount_cents + tax_cents``. An invoice whose amount after
discount would be negative is refused.

Every paid order gets its invoice: :func:`issue_for_paid_order` reacts to paid orders
(``billfold.orders.events``), attached by the composition root ``billfold.wiring.wire()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.access import readable
from billfold.accounts.organizations.service import actor_id
from billfold.accounts.security import Principal
from billfold.kit import clock
from billfold.kit.db import hold, insert_rows
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import InvalidAmount, InvalidInput, NotFound
from billfold.kit.ids import has_prefix
from billfold.kit.ids import new_id
from billfold.kit.money import normalize_currency
from billfold.states import machine
from billfold.models import Invoice, InvoiceLine, Order, Payment
from billfold.models.billing import INVOICE_LINE_KINDS
from billfold import numbering
from billfold.orders import events as order_events
from billfold.orders import lines as order_lines

INVOICE = machine(
    "invoice",
    {
        None: {"draft"},
        "draft": {"open"},
        "open": {"paid", "void", "uncollectible"},
        "uncollectible": {"paid", "void"},
        "paid": set(),
        "void": set(),
    },
)

MAX_LINES = 1000
MAX_DESCRIPTION = 500
DEFAULT_PREFIX = "INV"


@dataclass(frozen=True)
class LineIn:
    description: str
    amount_cents: int  # quantity * unit_amount_cents; negative for a credit or a proration refund line
    quantity: int = 1
    unit_amount_cents: int | None = None  # default amount_cents // quantity
    kind: str = "item"  # item | proration | credit | shipping
    product_id: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None


@dataclass(frozen=True)
class Totals:
    amount_cents: int
    discount_cents: int
    tax_cents: int
    total_cents: int


def totals(lines: Sequence[LineIn], *, tax_cents: int = 0, discount_cents: int = 0) -> Totals:
    """The invoice's amounts from its lines; refuses what would make a negative invoice."""
    for n, line in enumerate(lines):
        _check_line(n, line)
    if tax_cents < 0:
        raise InvalidAmount("tax cannot be negative", errors=[{"field": "tax_cents", "message": "must be ≥ 0"}])
    if discount_cents < 0:
        raise InvalidAmount(
            "a discount cannot be negative", errors=[{"field": "discount_cents", "message": "must be ≥ 0"}]
        )
    amount = sum(line.amount_cents for line in lines)
    if amount - discount_cents < 0:
        raise InvalidAmount(
            f"the lines add up to {amount} and the discount is {discount_cents}: an invoice cannot be negative "
            "(give the customer a credit instead)",
            errors=[{"field": "lines", "message": "amount after discount is negative"}],
        )
    return Totals(amount, discount_cents, tax_cents, amount - discount_cents + tax_cents)


def _check_line(n: int, line: LineIn) -> None:
    field = f"lines.{n}"
    if not isinstance(line.quantity, int) or line.quantity < 1:
        raise InvalidInput(f"line {n}: quantity must be at least 1", errors=[{"field": f"{field}.quantity", "message": "≥ 1"}])
    if line.kind not in INVOICE_LINE_KINDS:
        raise InvalidInput(
            f"line {n}: kind must be one of {', '.join(INVOICE_LINE_KINDS)}",
            errors=[{"field": f"{field}.kind", "message": "unknown kind"}],
        )
    if not line.description or not line.description.strip() or len(line.description) > MAX_DESCRIPTION:
        raise InvalidInput(
            f"line {n}: a description of 1 to {MAX_DESCRIPTION} characters is needed",
            errors=[{"field": f"{field}.description", "message": "required"}],
        )
    if line.unit_amount_cents is not None and line.unit_amount_cents * line.quantity != line.amount_cents:
        raise InvalidAmount(
            f"line {n}: {line.quantity} × {line.unit_amount_cents} is not {line.amount_cents}",
            errors=[{"field": f"{field}.amount_cents", "message": "quantity × unit amount"}],
        )
    if line.period_start and line.period_end and line.period_end < line.period_start:
        raise InvalidInput(
            f"line {n}: the period ends before it starts", errors=[{"field": f"{field}.period_end", "message": "before start"}]
        )


def _prefix() -> str:
    from billfold.config import get_settings

    try:
        return get_settings().invoice_number_prefix
    except Exception:  # settings that cannot load (a test without environment) still number invoices
        return DEFAULT_PREFIX


def invoice_number(session: Session, year: int, prefix: str | None = None) -> str:
    """The next invoice number of the year, e.g. ``INV-2026-000042``: gapless per year."""
    return f"{prefix or _prefix()}-{year}-{numbering.take(session, f'invoice-{year}'):06d}"


@dataclass(frozen=True)
class InvoiceIn:
    """One invoice to issue: its lines and whom it is for (see :func:`issue_invoice`)."""

    currency: str
    lines: list[LineIn]
    user_id: str | None = None
    organization_id: str | None = None
    subscription_id: str | None = None
    order_id: str | None = None
    billing_address_id: str | None = None
    tax_cents: int = 0
    discount_cents: int = 0
    due_in: timedelta = timedelta(0)
    provider_id: str | None = None


def issue_invoice(
    session: Session,
    *,
    currency: str,
    lines: list[LineIn],
    user_id: str | None = None,
    organization_id: str | None = None,
    subscription_id: str | None = None,
    order_id: str | None = None,
    billing_address_id: str | None = None,
    tax_cents: int = 0,
    discount_cents: int = 0,
    due_in: timedelta = timedelta(0),
    provider_id: str | None = None,
    by: str | None = None,
) -> Invoice:
    """A new invoice, numbered, ``open`` (draft → open recorded), issued now and due ``due_in`` later."""
    wanted = InvoiceIn(
        currency=currency, lines=lines, user_id=user_id, organization_id=organization_id,
        subscription_id=subscription_id, order_id=order_id, billing_address_id=billing_address_id,
        tax_cents=tax_cents, discount_cents=discount_cents, due_in=due_in, provider_id=provider_id,
    )
    [invoice] = draft_invoices(  # numbered and opened before its INSERT: no UPDATE after it
        session, [wanted], by=by, before_writing=lambda drafts: open_invoices(session, drafts, by=by)
    )
    session.flush()
    return invoice


def draft_invoices(
    session: Session, wanted: Sequence[InvoiceIn], *, by: str | None = None,
    before_writing: Callable[[list[Invoice]], None] | None = None,
) -> list[Invoice]:
    """New ``draft`` invoices with their lines, issued now, written in a few statements for all of
    them. Each carries its id as a provisional number until :func:`open_invoices` numbers it,
    which the caller does as the last thing before its commit (the series' lock is held from then).
    ``before_writing(invoices)`` runs on the drafts before they are written: an invoice numbered
    and opened (and paid) there is written so, with no UPDATE after its INSERT."""
    now = clock.now()
    invoices: list[Invoice] = []
    for one in wanted:
        currency = normalize_currency(one.currency)
        if not 1 <= len(one.lines) <= MAX_LINES:
            raise InvalidInput(
                f"an invoice has 1 to {MAX_LINES} lines", errors=[{"field": "lines", "message": f"1 to {MAX_LINES} lines"}]
            )
        if one.due_in < timedelta(0):
            raise InvalidInput("an invoice cannot be due before it is issued", errors=[{"field": "due_in", "message": "≥ 0"}])
        sums = totals(one.lines, tax_cents=one.tax_cents, discount_cents=one.discount_cents)
        invoice_id = new_id("inv")
        invoice = Invoice(
            id=invoice_id,
            invoice_number=invoice_id,  # provisional: unique, and replaced before the commit
            order_id=one.order_id,
            subscription_id=one.subscription_id,
            user_id=one.user_id,
            organization_id=one.organization_id,
            status="draft",
            amount_cents=sums.amount_cents,
            tax_cents=sums.tax_cents,
            discount_cents=sums.discount_cents,
            total_cents=sums.total_cents,
            currency=currency,
            issue_date=now,
            due_date=now + one.due_in,
            billing_address_id=one.billing_address_id,
            provider_id=one.provider_id,
        )
        invoices.append(invoice)
    for invoice, one in zip(invoices, wanted, strict=True):
        INVOICE.start(session, invoice, "draft", by=by, order_id=one.order_id, subscription_id=one.subscription_id)
    if before_writing is not None:
        before_writing(invoices)
    insert_rows(session, invoices)  # the invoices before their lines (foreign key)
    insert_rows(session, [
        InvoiceLine(
            id=new_id("inl"),
            invoice_id=invoice.id,
            position=position,
            kind=line.kind,
            description=line.description,
            product_id=line.product_id,
            quantity=line.quantity,
            unit_amount_cents=(
                line.unit_amount_cents if line.unit_amount_cents is not None else line.amount_cents // line.quantity
            ),
            amount_cents=line.amount_cents,
            period_start=line.period_start,
            period_end=line.period_end,
        )
        for invoice, one in zip(invoices, wanted, strict=True)
        for position, line in enumerate(one.lines, start=1)
    ])
    return invoices


def open_invoices(session: Session, invoices: Sequence[Invoice], *, by: str | None = None) -> None:
    """Number draft invoices, gapless and in the order given (one statement per year of issue for
    all of them), and open them (draft → open recorded). The numbers stay locked by this
    transaction until it ends, so call this last."""
    prefix = _prefix()
    for year in sorted({invoice.issue_date.year for invoice in invoices}):
        of_year = [invoice for invoice in invoices if invoice.issue_date.year == year]
        numbers = numbering.take_many(session, f"invoice-{year}", len(of_year))
        for invoice, number in zip(of_year, numbers, strict=True):
            invoice.invoice_number = f"{prefix}-{year}-{number:06d}"
            INVOICE.move(session, invoice, "open", by=by, invoice_number=invoice.invoice_number, total_cents=invoice.total_cents)


def mark_paid(session: Session, invoice: Invoice, *, by: str | None = None) -> bool:
    """open | uncollectible → paid; False when it is paid already."""
    if not INVOICE.move(session, invoice, "paid", by=by):
        return False
    invoice.paid_date = clock.now()
    return True


def mark_uncollectible(session: Session, invoice: Invoice, *, by: str | None = None) -> bool:
    """open → uncollectible; False when it is uncollectible already."""
    return INVOICE.move(session, invoice, "uncollectible", by=by)


def void(session: Session, invoice: Invoice, *, by: str | None = None) -> bool:
    """open | uncollectible → void; False when it is void already."""
    return INVOICE.move(session, invoice, "void", by=by)


def lines_of(session: Session, invoice_id: str) -> list[InvoiceLine]:
    return list(
        session.scalars(
            sa.select(InvoiceLine).where(InvoiceLine.invoice_id == invoice_id).order_by(InvoiceLine.position)
        ).all()
    )


def lines_of_many(session: Session, invoice_ids: list[str]) -> dict[str, list[InvoiceLine]]:
    grouped: dict[str, list[InvoiceLine]] = {invoice_id: [] for invoice_id in invoice_ids}
    if invoice_ids:
        rows = session.scalars(
            sa.select(InvoiceLine)
            .where(InvoiceLine.invoice_id.in_(invoice_ids))
            .order_by(InvoiceLine.invoice_id, InvoiceLine.position)
        ).all()
        for row in rows:
            grouped[row.invoice_id].append(row)
    return grouped


def _order_lines(session: Session, order: Order) -> list[LineIn]:
    lines = order_lines.lines_of(session, order.id)  # an item keeps its name since issue 10; an older one, its product's
    return [
        LineIn(
            description=((item.metadata_ or {}).get("name") or product.name or item.product_id)[:MAX_DESCRIPTION],
            amount_cents=item.total_cents,
            quantity=item.quantity,
            unit_amount_cents=item.unit_price_cents if item.unit_price_cents * item.quantity == item.total_cents else None,
            kind="item",
            product_id=item.product_id,
        )
        for item, product in lines
    ]


_ORDER_INVOICES = "billfold_order_invoices"  # session.info: order id → its invoice's id, once known
_ORDER_INVOICE = (
    sa.select(Invoice).where(Invoice.order_id == sa.bindparam("order_id")).order_by(Invoice.created_at, Invoice.id).limit(1)
)
_PAID_THROUGH = (  # the provider of the order's latest payment that moved money
    sa.select(Payment.provider_id)
    .where(Payment.order_id == sa.bindparam("order_id"), Payment.status.in_(("completed", "refunded")))
    .order_by(Payment.completed_at.desc(), Payment.id.desc())
    .limit(1)
)


def invoice_for_order(session: Session, order: Order) -> Invoice:
    """The order's invoice; made if missing (open, then paid when the order is paid or refunded).
    Idempotent: an order has at most one invoice. Asked twice in one session (the paid order's
    invoice, then its receipt), the second answer comes from the session."""
    known = session.info.setdefault(_ORDER_INVOICES, {})
    existing = session.get(Invoice, known[order.id]) if order.id in known else None
    if existing is None:
        existing = session.scalars(_ORDER_INVOICE, {"order_id": order.id}).first()
    if existing is not None:
        known[order.id] = existing.id
        return existing
    paying = order_events.paid_with(session, order.id)  # the payment paying it now is the latest
    provider_id = paying.provider_id if paying is not None else session.scalar(_PAID_THROUGH, {"order_id": order.id})
    wanted = InvoiceIn(
        currency=order.currency, lines=_order_lines(session, order), user_id=order.user_id,
        organization_id=order.organization_id, order_id=order.id, billing_address_id=order.billing_address_id,
        tax_cents=order.tax_cents, discount_cents=order.discount_cents, due_in=timedelta(0), provider_id=provider_id,
    )

    def numbered(drafts: list[Invoice]) -> None:  # written numbered (and paid): no UPDATE after the INSERT
        open_invoices(session, drafts, by="system")
        if order.status in ("paid", "refunded"):
            mark_paid(session, drafts[0], by="system")

    [invoice] = draft_invoices(session, [wanted], by="system", before_writing=numbered)
    session.flush()
    known[order.id] = invoice.id
    hold(session, invoice)
    return invoice


# Who sees which invoices (docs/permissions.md, "See its invoices"): ``accounts.access.readable``


def get_invoice(session: Session, principal: Principal, invoice_id: str, *, lock: bool = False, change: bool = False) -> Invoice:
    """An invoice the principal may see; NotFound otherwise, the same answer as for no such invoice."""
    if not has_prefix(invoice_id, "inv"):
        raise NotFound(f"no invoice {invoice_id}")
    statement = readable(principal, Invoice, change=change).where(Invoice.id == invoice_id)
    invoice = session.scalars(for_update(statement, session) if lock else statement).one_or_none()
    if invoice is None:
        raise NotFound(f"no invoice {invoice_id}")
    return invoice


def change_status(session: Session, principal: Principal, invoice_id: str, to: str) -> Invoice:
    """The shop's admins (and write API keys) void an invoice or mark it uncollectible."""
    principal.require_admin()
    invoice = get_invoice(session, principal, invoice_id, lock=True, change=True)
    {"void": void, "uncollectible": mark_uncollectible}[to](session, invoice, by=actor_id(principal))
    return invoice


def issue_for_paid_order(session: Session, order: Order) -> None:
    """Every paid order gets its invoice, paid, in the transaction that marks the order paid."""
    invoice = invoice_for_order(session, order)
    if invoice.status in ("open", "uncollectible"):
        mark_paid(session, invoice, by="system")
