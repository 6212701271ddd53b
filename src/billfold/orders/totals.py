"""An order's totals: per item ``quantity × unit price``, then the subtotal, a discount and tax from
pluggable calculators, and ``total = subtotal − discount + tax``. Integer minor units throughout.

The default tax calculator is a table of rates by the billing address's country, in basis points
(2000 = 20 %), applied to the discounted subtotal and rounded half up to the currency's minor
unit. It is deliberately simple: no tax-inclusive prices, no reverse charge for businesses, no
US sales tax by state. A shop that needs those plugs in its own ``TaxCalculator``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from billfold.kit.errors import InvalidAmount

# Standard VAT/GST rates, basis points. Configurable with BILLFOLD_TAX_RATES (JSON).
DEFAULT_TAX_RATES: dict[str, int] = {
    "AT": 2000, "BE": 2100, "DE": 1900, "DK": 2500, "ES": 2100, "FI": 2550, "FR": 2000, "GB": 2000,
    "IE": 2300, "IT": 2200, "NL": 2100, "NO": 2500, "PL": 2300, "PT": 2300, "SE": 2500,
    "AU": 1000, "CA": 500, "JP": 1000, "NZ": 1500,
}
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


class TaxCalculator(Protocol):
    def tax(self, taxable_cents: int, currency: str, country: str | None) -> int: ...


class NoDiscount:
    def discount(self, lines: Sequence[Line], subtotal_cents: int, currency: str) -> int:
        return 0


@dataclass(frozen=True)
class CountryTaxTable:
    rates: Mapping[str, int]  # country → basis points

    def tax(self, taxable_cents: int, currency: str, country: str | None) -> int:
        rate = self.rates.get((country or "").upper(), 0)
        return (taxable_cents * rate + 5000) // 10000  # half up; amounts are never negative


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
