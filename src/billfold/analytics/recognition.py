"""Revenue recognition (docs/analytics.md "## Metrics"): what each paid invoice earns month by month.

A line with a service period earns its amount evenly over the period's seconds; what has been
earned by an instant T is ``round_half_up(amount × elapsed / length)``, so the months of a line add
up to the line exactly. A line without a period (a credit, a one-time item) is earned when the
invoice is paid. Nothing is earned before the invoice is paid: an invoice paid late catches up in
the month it is paid. A credit note (a refund) takes its amount, net of tax in the invoice's
proportion, first from what the invoice has not earned yet (it stops earning that part) and the
rest back from what it has earned, in the month the credit note is issued. A credit note voided
later (its refund failed after succeeding) counts until it is voided; from then on the invoice
earns as if it had never been issued, so the month of the void gets back what the note took.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.kit import clock
from billfold.models import CreditNote, Invoice, InvoiceLine
from billfold.subscriptions.proration import round_half_up as half_up, seconds


def month_start(year: int, month: int) -> datetime:
    return datetime.combine(date(year, month, 1), time(), tzinfo=clock.UTC)


def next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


@dataclass
class _Invoice:
    id: str
    currency: str
    paid: datetime
    net_share: tuple[int, int]  # revenue / total: the part of a credit note that is not tax
    lines: list[tuple[str, int, datetime | None, datetime | None]] = field(default_factory=list)
    credits: list[tuple[datetime, int, datetime | None]] = field(default_factory=list)  # issued, cents, voided

    def standing(self, at: datetime) -> list[tuple[datetime, int]]:
        """The credit notes issued before ``at`` and not voided by then, oldest first."""
        return sorted((issued, cents) for issued, cents, voided in self.credits
                      if issued < at and (voided is None or voided >= at))

    def line_earned(self, line: tuple[str, int, datetime | None, datetime | None], at: datetime) -> int:
        _, amount, start, end = line
        if at <= self.paid:
            return 0
        if start is None or end is None or end <= start:
            return amount
        elapsed = min(max(seconds(start, at), 0), seconds(start, end))
        return half_up(amount * elapsed, seconds(start, end))

    def earned(self, at: datetime) -> int:
        """What the invoice has earned before ``at``, after its credit notes issued before then."""
        if at <= self.paid:
            return 0
        total = sum(amount for _, amount, _, _ in self.lines)
        cap, taken_back = total, 0
        for issued, cents in self.standing(at):
            base = min(sum(self.line_earned(line, issued) for line in self.lines), cap) - taken_back
            net = half_up(cents * self.net_share[0], self.net_share[1]) if self.net_share[1] else cents
            unearned = max(cap - taken_back - base, 0)
            from_unearned = min(net, unearned)
            cap -= from_unearned
            taken_back += net - from_unearned
        return min(sum(self.line_earned(line, at) for line in self.lines), cap) - taken_back

    def due(self, at: datetime) -> int:
        """What the invoice will still earn from ``at`` on (deferred revenue)."""
        if at <= self.paid:
            return 0
        total = sum(amount for _, amount, _, _ in self.lines)
        given_back = sum(
            half_up(c * self.net_share[0], self.net_share[1]) if self.net_share[1] else c
            for _, c in self.standing(at)
        )
        return total - given_back - self.earned(at)


@dataclass(frozen=True)
class RecognisedMonth:
    currency: str
    recognised_cents: int
    deferred_cents: int  # at the month's end
    by_invoice: dict[str, tuple[int, int]]  # invoice id: (recognised, deferred): the rows behind it


def _invoices(session: Session, start: datetime, end: datetime) -> list[_Invoice]:
    """Paid invoices that earn, are paid, or are credited in [start, end), or still owe revenue."""
    touching = sa.or_(
        Invoice.paid_date >= start,
        sa.exists().where(InvoiceLine.invoice_id == Invoice.id, InvoiceLine.period_end > start),
        sa.exists().where(CreditNote.invoice_id == Invoice.id, CreditNote.issue_date >= start, CreditNote.issue_date < end),
        sa.exists().where(CreditNote.invoice_id == Invoice.id, CreditNote.voided_at >= start, CreditNote.voided_at < end),
    )
    found: dict[str, _Invoice] = {}
    for row in session.execute(
        sa.select(Invoice.id, Invoice.currency, Invoice.paid_date, Invoice.amount_cents - Invoice.discount_cents, Invoice.total_cents)
        .where(Invoice.status == "paid", Invoice.paid_date < end, touching)
    ):
        found[row[0]] = _Invoice(row[0], row[1], row[2], (int(row[3]), int(row[4])))
    ids = sorted(found)
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        for invoice_id, line_id, amount, p_start, p_end in session.execute(
            sa.select(InvoiceLine.invoice_id, InvoiceLine.id, InvoiceLine.amount_cents, InvoiceLine.period_start, InvoiceLine.period_end)
            .where(InvoiceLine.invoice_id.in_(chunk)).order_by(InvoiceLine.invoice_id, InvoiceLine.position)
        ):
            found[invoice_id].lines.append((line_id, int(amount), p_start, p_end))
        for invoice_id, issued, cents, voided in session.execute(
            sa.select(CreditNote.invoice_id, CreditNote.issue_date, CreditNote.amount_cents, CreditNote.voided_at)
            .where(CreditNote.invoice_id.in_(chunk))
        ):
            found[invoice_id].credits.append((issued, int(cents), voided))
    for invoice in found.values():  # a discount is earned when paid, like a line without a period
        discount = sum(a for _, a, _, _ in invoice.lines) - invoice.net_share[0]
        if discount:
            invoice.lines.append(("discount", -discount, None, None))
    return list(found.values())


def recognised(session: Session, year: int, month: int) -> dict[str, RecognisedMonth]:
    """Revenue recognised in a calendar month (UTC) and deferred at its end, per currency."""
    start, end = month_start(year, month), month_start(*next_month(year, month))
    per: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for invoice in _invoices(session, start, end):
        earned = invoice.earned(end) - invoice.earned(start)
        owed = invoice.due(end)
        if earned or owed:
            per[invoice.currency][invoice.id] = (earned, owed)
    return {
        cur: RecognisedMonth(cur, sum(e for e, _ in rows.values()), sum(d for _, d in rows.values()), rows)
        for cur, rows in sorted(per.items())
    }

