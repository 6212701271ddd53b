"""Proration to the second (reference/providers.md §5). When a plan or quantity changes at ``at``
inside a period, the unused time of the old plan is a credit line and the remaining time of the
new plan a charge line, each rounded on its own to the minor unit (half away from zero), with
integers only::

    amount = round_half_up(unit_amount × quantity × (period_end − at) / (period_end − period_start))
    credit = −amount(old),  charge = +amount(new),  net = charge + credit

A positive net is invoiced and charged at once; a negative net becomes credit on the
subscription, taken off its next invoices, never refunded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from billfold.kit.errors import InvalidInput


def round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to the nearest integer, ties away from zero."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    sign = -1 if numerator < 0 else 1
    whole, rest = divmod(abs(numerator), denominator)
    return sign * (whole + (1 if 2 * rest >= denominator else 0))


def seconds(start: datetime, end: datetime) -> int:
    delta = end - start
    return delta.days * 86400 + delta.seconds  # whole seconds; microseconds are dropped


def prorated(unit_amount: int, quantity: int, remaining_seconds: int, period_seconds: int) -> int:
    return round_half_up(unit_amount * quantity * remaining_seconds, period_seconds)


@dataclass(frozen=True)
class Proration:
    credit_cents: int  # ≤ 0: the unused time of the old plan
    charge_cents: int  # ≥ 0: the remaining time of the new plan
    remaining_seconds: int
    period_seconds: int

    @property
    def net_cents(self) -> int:
        return self.charge_cents + self.credit_cents


def prorate(
    *,
    period_start: datetime,
    period_end: datetime,
    at: datetime,
    old_unit_cents: int,
    old_quantity: int,
    new_unit_cents: int,
    new_quantity: int,
) -> Proration:
    """The two lines of a change at ``at`` (clamped into the period)."""
    total = seconds(period_start, period_end)
    if total <= 0:
        raise InvalidInput("the subscription's current period is empty; nothing to prorate")
    at = min(max(at, period_start), period_end)
    remaining = seconds(at, period_end)
    return Proration(
        credit_cents=-prorated(old_unit_cents, old_quantity, remaining, total),
        charge_cents=prorated(new_unit_cents, new_quantity, remaining, total),
        remaining_seconds=remaining,
        period_seconds=total,
    )
