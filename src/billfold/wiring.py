"""The composition root: what happens when money moves, attached in one place.

``wire()`` attaches the reactions to paid and refunded orders and to refunds
(``billfold.orders.events``): a paid order gets its invoice (paid), its memberships and its
receipt, in that order, in the transaction that marks it paid; a refund gets its credit note (voided
if the refund fails after succeeding); an order refunded in full ends its memberships. Every
entry point calls it: ``create_app`` (the API), ``worker.make_context`` (the worker, embedded or
not, and Dramatiq consumers), the command line and the demo loader. It is idempotent, so calling
it again (tests, an app made twice) changes nothing.

Nothing is attached by importing a module: a process that pays an order before ``wire()`` gets
``orders.events.NotWired`` (and its transaction rolls back) instead of an order paid without its
invoice.
"""

from __future__ import annotations

from billfold.invoices import credit_notes, receipts
from billfold.invoices import service as invoices
from billfold.memberships import service as memberships
from billfold.orders import events


def wire() -> None:
    """Attach every reaction (idempotent)."""
    events.attach(
        paid=(invoices.issue_for_paid_order, receipts.order_receipt, memberships.grant_for_order),
        refunded=(memberships.end_for_refunded_order,),
        refund=(credit_notes.credit_refunds,),
        refund_reversed=(credit_notes.void_for_failed_refund,),
    )
