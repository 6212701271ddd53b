"""Tax: what an order or a subscription's invoice adds for the customer's country.

The calculator is a table of rates by the billing address's country, in basis points
(2000 = 20 %), applied to the taxable amount (the discounted subtotal) and rounded half up to the
currency's minor unit. It is deliberately simple: no tax-inclusive prices, no reverse charge for
businesses, no US sales tax by state. A shop that needs those plugs in its own ``TaxCalculator``.
The rates are ``BILLFOLD_TAX_RATES`` (JSON), or else ``DEFAULT_TAX_RATES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from billfold.config import Settings

# Standard VAT/GST rates, basis points. Configurable with BILLFOLD_TAX_RATES (JSON).
DEFAULT_TAX_RATES: dict[str, int] = {
    "AT": 2000, "BE": 2100, "DE": 1900, "DK": 2500, "ES": 2100, "FI": 2550, "FR": 2000, "GB": 2000,
    "IE": 2300, "IT": 2200, "NL": 2100, "NO": 2500, "PL": 2300, "PT": 2300, "SE": 2500,
    "AU": 1000, "CA": 500, "JP": 1000, "NZ": 1500,
}


class TaxCalculator(Protocol):
    def tax(self, taxable_cents: int, currency: str, country: str | None) -> int: ...


@dataclass(frozen=True)
class CountryTaxTable:
    rates: Mapping[str, int]  # country → basis points

    def tax(self, taxable_cents: int, currency: str, country: str | None) -> int:
        rate = self.rates.get((country or "").upper(), 0)
        return (taxable_cents * rate + 5000) // 10000  # half up; amounts are never negative


def calculator(settings: Settings) -> CountryTaxTable:
    """The installation's tax table: ``BILLFOLD_TAX_RATES``, else the standard rates."""
    return CountryTaxTable(settings.tax_rates if settings.tax_rates is not None else DEFAULT_TAX_RATES)
