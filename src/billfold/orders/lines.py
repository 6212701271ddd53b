"""An order's items with their products, read once per transaction.

A paid order's reactions each need its items: the invoice's lines, the receipt, the memberships
it grants, the routing rules' facts, the answer. An order's items never change once it is placed,
and within one transaction neither do its products as this transaction sees them, so the first
to ask reads them (one statement, joined to their products) and the others take that read. A new
transaction reads them again (a product's name or metadata may have changed in between).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.kit.db import for_transaction
from billfold.models import OrderItem, Product

_KEPT = "billfold_order_lines"  # session.info: (the transaction, {order id: lines})

Lines = list[tuple[OrderItem, Product]]
_LINES = (
    sa.select(OrderItem, Product).join(Product, Product.id == OrderItem.product_id)
    .where(OrderItem.order_id == sa.bindparam("order_id")).order_by(OrderItem.id)
)


def _kept(session: Session) -> dict[str, Lines]:
    return for_transaction(session, _KEPT, dict)


def lines_of(session: Session, order_id: str) -> Lines:
    """The order's items, each with its product, in the order they were placed."""
    kept = _kept(session)
    lines = kept.get(order_id)
    if lines is None:
        lines = kept[order_id] = [(item, product) for item, product in session.execute(_LINES, {"order_id": order_id})]
    return lines


def placed(session: Session, order_id: str, lines: Lines) -> None:
    """The lines of an order this transaction has just placed (flushed), so no one reads them again."""
    _kept(session)[order_id] = sorted(lines, key=lambda line: line[0].id)


def known(session: Session, order_id: str) -> Lines | None:
    """The order's lines if this transaction has them already, else None (nothing is read)."""
    return _kept(session).get(order_id)
