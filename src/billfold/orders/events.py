"""What other packages do when an order is paid (issue its invoice, grant a membership, send the
receipt) or money is given back (a credit note for each refund; a refunded order's memberships
end) or a refund fails after succeeding (its credit note is voided), in the same transaction that records it, so either all of it happens or none of it does.

The reactions are attached in one place, the composition root ``billfold.wiring.wire()``, which
every entry point calls (``create_app``, the worker's ``make_context``, the command line, the demo
loader). Nothing is attached by importing a module. A process that records a paid or refunded
order, or a successful refund, before ``wire()`` ran gets ``NotWired`` and its transaction rolls
back: an order is never marked paid without its invoice.

Reactions must be idempotent (rule 5): they return early when their row exists already.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.orm import Session

from billfold.kit.db import for_transaction, of_transaction
from billfold.kit.errors import ConfigurationError
from billfold.models import Order, Payment, Refund

Reaction = Callable[[Session, Order], Any]
PaymentReaction = Callable[[Session, Payment], Any]
RefundReaction = Callable[[Session, Payment, Refund], Any]
_PAID: tuple[Reaction, ...] = ()
_REFUNDED: tuple[Reaction, ...] = ()
_REFUND: tuple[PaymentReaction, ...] = ()
_REFUND_REVERSED: tuple[RefundReaction, ...] = ()
_attached = False
_PAID_WITH = "billfold_order_paid_with"  # kit.db.for_transaction: order id → the payment that paid it


class NotWired(ConfigurationError):
    """An order was paid or refunded in a process whose reactions were never attached."""

    code = "not_wired"
    title = "Billfold is not wired"


def attach(
    *, paid: Iterable[Reaction], refunded: Iterable[Reaction], refund: Iterable[PaymentReaction],
    refund_reversed: Iterable[RefundReaction] = (),
) -> None:
    """Set the reactions, in the order they run: ``paid`` when an order is paid in full,
    ``refunded`` when it is refunded in full, ``refund`` after a refund of a payment (an order's or
    a subscription's) succeeded, ``refund_reversed`` after a succeeded refund failed (the money
    came back). Setting the same ones again changes nothing."""
    global _PAID, _REFUNDED, _REFUND, _REFUND_REVERSED, _attached
    _PAID, _REFUNDED, _REFUND = tuple(paid), tuple(refunded), tuple(refund)
    _REFUND_REVERSED = tuple(refund_reversed)
    _attached = True


def attached() -> bool:
    return _attached


def _require_attached(what: str) -> None:
    if not _attached:
        raise NotWired(
            f"{what}, but this process never called billfold.wiring.wire(): its invoice, memberships, "
            "receipt and credit notes would be left out. Entry points call wire(); a script that uses "
            "the services directly calls it once before."
        )


def order_paid(session: Session, order: Order, payment: Payment | None = None) -> None:
    """Run the reactions to ``order`` paid in full; ``payment``: the payment whose completion paid
    it, which a reaction may ask for (``paid_with``) rather than read the order's payments."""
    _require_attached(f"order {order.id} was paid")
    if payment is not None:
        for_transaction(session, _PAID_WITH, dict)[order.id] = payment
    for reaction in _PAID:
        reaction(session, order)


def paid_with(session: Session, order_id: str) -> Payment | None:
    """The payment that paid ``order_id`` in full in this transaction, if one did."""
    return (of_transaction(session, _PAID_WITH) or {}).get(order_id)


def order_refunded(session: Session, order: Order) -> None:
    _require_attached(f"order {order.id} was refunded")
    for reaction in _REFUNDED:
        reaction(session, order)


def refund_succeeded(session: Session, payment: Payment) -> None:
    """After a refund of ``payment`` succeeded (its row moved, flushed): order payments and
    subscription payments alike."""
    _require_attached(f"a refund of payment {payment.id} succeeded")
    for reaction in _REFUND:
        reaction(session, payment)


def refund_reversed(session: Session, payment: Payment, refund: Refund) -> None:
    """After ``refund`` of ``payment`` moved ``succeeded`` -> ``failed`` (its row moved, flushed):
    what hung on its success is undone (its credit note is voided)."""
    _require_attached(f"refund {refund.id} of payment {payment.id} failed after succeeding")
    for reaction in _REFUND_REVERSED:
        reaction(session, payment, refund)
