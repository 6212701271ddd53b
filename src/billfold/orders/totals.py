"""An order's totals: per item ``quantity × unit price``, then the subtotal, a discount and tax from
pluggable calculators, and ``total = subtotal − discount + tax``. Integer minor units throughout.
The tax calculator (a table of rates by country) is in ``billfold.tax``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from billfold.kit.errors import InvalidAmount
from billfold.tax import TaxCalculator
MAX_TOTAL = 10**15  # far beyond any real order; keeps every sum inside BIGINT


@dataclass(frozen=True)
class Line:
    product_id: str
    quantity: int
    unit_price_cents: int

    @property
    def total_cents(self) -> int:
        return self.quantity * self.unit_price_cents


@dataclass(frozen=True)
class Totals:
    subtotal_cents: int
    discount_cents: int
    tax_cents: int
    total_cents: int


class DiscountCalculator(Protocol):
    def discount(self, lines: Sequence[Line], subtotal_cents: int, currency: str) -> int: ...


class NoDiscount:
    def discount(self, lines: Sequence[Line], subtotal_cents: int, currency: str) -> int:
        return 0


def compute(
    lines: Sequence[Line],
    currency: str,
    country: str | None,
    *,
    tax: TaxCalculator,
    discount: DiscountCalculator = NoDiscount(),
) -> Totals:
    subtotal = sum(line.total_cents for line in lines)
    off = discount.discount(lines, subtotal, currency)
    if not 0 <= off <= subtotal:
        raise InvalidAmount(f"a discount of {off} does not fit a subtotal of {subtotal}")
    taxed = tax.tax(subtotal - off, currency, country)
    if taxed < 0:
        raise InvalidAmount(f"tax came out negative ({taxed})")
    total = subtotal - off + taxed
    if total > MAX_TOTAL:
        raise InvalidAmount(f"the order's total ({total}) is larger than Billfold accepts", field="items")
    return Totals(subtotal, off, taxed, total)
