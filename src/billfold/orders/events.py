"""What other packages do when an order is paid (issue its invoice, grant a membership), in the
same transaction that marks it paid, so either all of it happens or none of it does.

    from billfold.orders.events import on_paid

    @on_paid
    def issue_invoice(session: Session, order: Order) -> None: ...

Reactions must be idempotent (rule 5): they return early when their row exists already.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from billfold.models import Order

Reaction = Callable[[Session, Order], None]
_PAID: list[Reaction] = []


def on_paid(reaction: Reaction) -> Reaction:
    if reaction not in _PAID:
        _PAID.append(reaction)
    return reaction


def order_paid(session: Session, order: Order) -> None:
    for reaction in list(_PAID):
        reaction(session, order)
