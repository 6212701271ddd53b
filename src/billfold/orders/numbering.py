"""Human-readable numbers, unique and gapless per series: ``ORD-2026-000001``.

The next number comes from the series' row in ``number_series``, updated inside the transaction
that uses it. The update holds the row's lock until that transaction ends, so two orders never
get the same number, and a transaction that rolls back gives its number back (no gaps). The cost:
orders of one series are numbered one transaction at a time, which is why numbering is the last
thing an order's transaction does before it commits.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.kit.db.dialects import insert_ignore
from billfold.models import NumberSeries


def take(session: Session, series: str) -> int:
    """The next number of ``series`` (1, 2, 3, ...), held by this transaction."""
    table = NumberSeries.__table__
    bump = sa.update(table).where(table.c.series == series).values(last_value=table.c.last_value + 1)
    if session.execute(bump).rowcount == 0:
        insert_ignore(session, table, [{"series": series, "last_value": 0}], key=["series"])
        session.execute(bump)
    return int(session.scalar(sa.select(table.c.last_value).where(table.c.series == series)))


def order_number(session: Session, year: int, prefix: str = "ORD") -> str:
    """The next order number of the year, e.g. ``ORD-2026-000042``."""
    return f"{prefix}-{year}-{take(session, f'order-{year}'):06d}"
