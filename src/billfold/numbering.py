"""Human-readable numbers, unique and gapless per series and year: orders (``ORD-2026-000001``),
invoices (``INV-2026-000001``, invoices/service.py) and credit notes (``CN-2026-000001``,
invoices/credit_notes.py) each have their series.

The next number comes from the series' row in ``number_series``, updated inside the transaction
that uses it. The update holds the row's lock until that transaction ends, so two orders never
get the same number, and a transaction that rolls back gives its number back (no gaps). The cost:
orders of one series are numbered one transaction at a time, which is why numbering is the last
thing an order's transaction does before it commits.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from billfold.kit.db.dialects import increment
from billfold.models import NumberSeries


def take(session: Session, series: str) -> int:
    """The next number of ``series`` (1, 2, 3, ...), held by this transaction."""
    return increment(session, NumberSeries.__table__, {"series": series}, "last_value")


def take_many(session: Session, series: str, count: int) -> range:
    """The next ``count`` numbers of ``series``, in one statement, held by this transaction."""
    last = increment(session, NumberSeries.__table__, {"series": series}, "last_value", by=count)
    return range(last - count + 1, last + 1)


def order_number(session: Session, year: int, prefix: str = "ORD") -> str:
    """The next order number of the year, e.g. ``ORD-2026-000042``."""
    return f"{prefix}-{year}-{take(session, f'order-{year}'):06d}"
