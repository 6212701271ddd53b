"""What other packages do when an order is paid (issue its invoice, grant a membership) or money
is given back (a credit note for each refund; a refunded order's memberships end), in the same
transaction that records it, so either all of it happens or none of it does.

    from billfold.orders.events import on_paid, on_refund, on_refunded

    @on_paid
    def issue_invoice(session: Session, order: Order) -> None: ...

    @on_refund          # a payment has refunds that succeeded (partial or in full)
    def credit(session: Session, payment: Payment) -> None: ...

    @on_refunded        # the order is refunded in full (every payment of it is)
    def end_memberships(session: Session, order: Order) -> None: ...

Reactions must be idempotent (rule 5): they return early when their row exists already.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from billfold.models import Order, Payment

Reaction = Callable[[Session, Order], Any]
PaymentReaction = Callable[[Session, Payment], Any]
_PAID: list[Reaction] = []
_REFUNDED: list[Reaction] = []
_REFUND: list[PaymentReaction] = []


def on_paid(reaction: Reaction) -> Reaction:
    if reaction not in _PAID:
        _PAID.append(reaction)
    return reaction


def on_refunded(reaction: Reaction) -> Reaction:
    if reaction not in _REFUNDED:
        _REFUNDED.append(reaction)
    return reaction


def on_refund(reaction: PaymentReaction) -> PaymentReaction:
    if reaction not in _REFUND:
        _REFUND.append(reaction)
    return reaction


def order_paid(session: Session, order: Order) -> None:
    for reaction in list(_PAID):
        reaction(session, order)


def order_refunded(session: Session, order: Order) -> None:
    for reaction in list(_REFUNDED):
        reaction(session, order)


def refund_succeeded(session: Session, payment: Payment) -> None:
    """After a refund of ``payment`` succeeded (its row moved, flushed): order payments and
    subscription payments alike."""
    for reaction in list(_REFUND):
        reaction(session, payment)
