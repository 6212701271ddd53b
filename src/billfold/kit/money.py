"""Money: an integer count of a currency's minor unit plus its ISO 4217 code.

Amounts are never floats: a float cannot hold 0.10 exactly, and a billing system that is off by
a cent is wrong. Anything that crosses a boundary (JSON, a form, a provider's API) comes in
through ``from_decimal`` or ``parse`` and goes out through ``to_decimal`` or ``format``, which
are exact in both directions and refuse rather than round.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, DecimalTuple

from babel import Locale, UnknownLocaleError
from babel.numbers import (
    NumberFormatError,
    format_currency,
    get_currency_symbol,
    get_decimal_symbol,
    get_group_symbol,
    get_minus_sign_symbol,
    parse_decimal,
)

from billfold.kit.errors import CurrencyMismatch, InvalidAmount, InvalidInput, UnknownCurrency

# ISO 4217 List One, edition published 2025-05-12: every active code with a numeric minor unit.
# Codes whose minor unit is "N.A." (XAU XAG XPT XPD XDR XSU XUA XBA-XBD XAD XTS XXX) are left
# out: they are not money a customer can be billed in. Withdrawn codes (HRK, SLL, CUC, ANG,
# ZWL, ...) are left out so that new data cannot be written in them.
_TWO = """
AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD
CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL
GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR
LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD
PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC
SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW
ZWG
"""
_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE = "BHD IQD JOD KWD LYD OMR TND"
_FOUR = "CLF UYW"

CURRENCIES: dict[str, int] = {
    code: digits
    for codes, digits in ((_TWO, 2), (_ZERO, 0), (_THREE, 3), (_FOUR, 4))
    for code in codes.split()
}

# A guard, not a business rule: a Decimal such as 1E+999999999 would otherwise make us build
# an integer with a billion digits. 38 digits is the widest common SQL NUMERIC.
MAX_DIGITS = 38

_PLAIN_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
_BIDI_MARKS = dict.fromkeys(map(ord, "\u200e\u200f\u061c"))
_MINUS_SIGNS = ("-", "\u2212")


def is_currency(code: object) -> bool:
    return isinstance(code, str) and code.strip().upper() in CURRENCIES


def normalize_currency(code: str) -> str:
    """The canonical (upper-case) code; input from people and providers comes in any case."""
    normalized = code.strip().upper() if isinstance(code, str) else None
    if normalized not in CURRENCIES:
        raise UnknownCurrency(f"{code!r} is not an ISO 4217 currency Billfold can bill in", currency=str(code))
    return normalized


def exponent(code: str) -> int:
    """Digits after the decimal point in the currency's major unit (ISO 4217, not CLDR)."""
    return CURRENCIES[normalize_currency(code)]


def _plain_int(value: object, what: str) -> int:
    # bool is an int subclass; True dollars is a bug, not an amount.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidAmount(f"{what} must be an integer, not {type(value).__name__} {value!r}")
    return value


@functools.total_ordering
@dataclass(frozen=True, slots=True, repr=False)
class Money:
    amount: int
    currency: str

    def __post_init__(self) -> None:
        _plain_int(self.amount, "an amount in minor units")
        object.__setattr__(self, "currency", normalize_currency(self.currency))

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    def _peer(self, other: object, verb: str) -> Money:
        if not isinstance(other, Money):
            raise InvalidAmount(f"cannot {verb} {type(other).__name__} and money")
        if self.currency != other.currency:
            raise CurrencyMismatch(
                f"cannot {verb} {self.currency} and {other.currency} amounts",
                currencies=[self.currency, other.currency],
            )
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.amount + self._peer(other, "add").amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.amount - self._peer(other, "subtract").amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __abs__(self) -> Money:
        return Money(abs(self.amount), self.currency)

    def __mul__(self, factor: object) -> Money:
        # A fractional factor would need a rounding rule; callers must choose one explicitly.
        return Money(self.amount * _plain_int(factor, "a multiplier"), self.currency)

    __rmul__ = __mul__

    def __lt__(self, other: Money) -> bool:
        # Ordering across currencies would need an exchange rate; refuse instead of guessing.
        return self.amount < self._peer(other, "compare").amount

    def __bool__(self) -> bool:
        return self.amount != 0

    def is_zero(self) -> bool:
        return self.amount == 0

    def is_positive(self) -> bool:
        return self.amount > 0

    def is_negative(self) -> bool:
        return self.amount < 0

    def allocate(self, ratios: Sequence[int]) -> list[Money]:
        """Parts proportional to ``ratios`` that add up to exactly this amount.

        Each part is its exact share rounded down; the minor units left over go one each to the
        parts with the largest remainders (ties: earliest first), so no part is off by more
        than one unit and a zero ratio always gets zero. Negative amounts mirror positive ones.
        """
        ratios = [_plain_int(r, "a ratio") for r in ratios]
        if not ratios or any(r < 0 for r in ratios) or sum(ratios) == 0:
            raise InvalidInput(f"cannot allocate by {ratios!r}: ratios must be non-negative, not all zero")
        total, whole = sum(ratios), abs(self.amount)
        shares = [divmod(whole * r, total) for r in ratios]
        parts = [q for q, _ in shares]
        leftover = whole - sum(parts)
        by_remainder = sorted(range(len(ratios)), key=lambda i: (-shares[i][1], i))
        for i in by_remainder[:leftover]:
            parts[i] += 1
        sign = -1 if self.amount < 0 else 1
        return [Money(sign * p, self.currency) for p in parts]

    def split(self, n: int) -> list[Money]:
        """``n`` parts as equal as minor units allow; the first ones carry the extra units."""
        if _plain_int(n, "a number of parts") < 1:
            raise InvalidInput(f"cannot split into {n} parts")
        return self.allocate([1] * n)

    @classmethod
    def from_decimal(cls, value: Decimal | str | int, currency: str) -> Money:
        """Major units (``"12.34"``) to minor units, refusing anything that would need rounding."""
        currency = normalize_currency(currency)
        if isinstance(value, str):
            if not _PLAIN_DECIMAL.fullmatch(value.strip()):
                raise InvalidAmount(f"{value!r} is not a decimal amount such as 12.34")
            value = Decimal(value.strip())
        elif isinstance(value, int) and not isinstance(value, bool):
            value = Decimal(value)
        elif not isinstance(value, Decimal):
            raise InvalidAmount(f"an amount must be a Decimal, str or int, not {type(value).__name__}")
        if not value.is_finite():
            raise InvalidAmount(f"{value} is not a finite amount")
        sign, digits, exp = value.as_tuple()
        coefficient = "".join(map(str, digits)).rstrip("0")
        if not coefficient:
            return cls(0, currency)
        exp += len(digits) - len(coefficient)  # dropped trailing zeros: 1.230 is 1.23
        shift = exp + CURRENCIES[currency]
        if shift < 0:
            raise InvalidAmount(
                f"{value} has more decimal places than {currency} allows ({CURRENCIES[currency]})",
                currency=currency,
            )
        if len(coefficient) + shift > MAX_DIGITS:
            raise InvalidAmount(f"{value} is too large an amount", currency=currency)
        amount = int(coefficient) * 10**shift
        return cls(-amount if sign else amount, currency)

    def to_decimal(self) -> Decimal:
        """The amount in major units with exactly the currency's exponent (built, not divided,
        so no decimal context can round it)."""
        t = Decimal(self.amount).as_tuple()
        return Decimal(DecimalTuple(t.sign, t.digits, -CURRENCIES[self.currency]))

    @classmethod
    def parse(cls, text: str, currency: str, locale: str = "en_US") -> Money:
        """Read an amount as a person in ``locale`` writes it: ``"1.234,56"`` in de_DE.

        Accepted: an optional minus sign, the locale's digit grouping (checked by Babel's strict
        mode) and decimal separator, and optionally *this* currency's symbol in that locale or
        its ISO code, before or after the number, so whatever ``format`` prints parses back.
        Refused: any other currency's symbol (it would silently change the currency), exponents,
        "+", parentheses, and more decimals than the currency has.
        """
        currency = normalize_currency(currency)
        loc = _locale(locale)
        if not isinstance(text, str):
            raise InvalidAmount(f"an amount to parse must be text, not {type(text).__name__}")
        s = text.translate(_BIDI_MARKS).strip()
        minus = _MINUS_SIGNS + (get_minus_sign_symbol(loc).translate(_BIDI_MARKS),)
        negative = s.startswith(minus)
        if negative:
            s = s[1:].lstrip()
        symbols = {currency, get_currency_symbol(currency, loc).translate(_BIDI_MARKS).strip()} - {""}
        for symbol in sorted(symbols, key=len, reverse=True):
            if s.startswith(symbol):
                s = s[len(symbol) :].strip()
                break
            if s.endswith(symbol):
                s = s[: -len(symbol)].strip()
                break
        if not negative and s.startswith(minus):
            negative, s = True, s[1:]
        group, point = get_group_symbol(loc), get_decimal_symbol(loc)
        if group.isspace():  # people type a plain space where CLDR has U+202F or U+00A0
            s = re.sub("[ \u00a0\u202f\u2009]", group, s)
        shape = f"[0-9](?:[0-9]|{re.escape(group)})*(?:{re.escape(point)}[0-9]+)?"
        if not re.fullmatch(shape, s):
            raise InvalidAmount(f"{text!r} is not a {currency} amount as written in {loc}")
        try:
            value = parse_decimal(s, locale=loc, strict=True)
        except NumberFormatError as exc:
            raise InvalidAmount(f"{text!r} is not a {currency} amount as written in {loc}: {exc}") from None
        return cls.from_decimal(-value if negative else value, currency)

    def format(self, locale: str = "en_US") -> str:
        """The amount for people in ``locale``, with exactly ISO 4217's number of decimals.

        Babel's own digit counts come from CLDR, which gives 0 decimals to HUF, IDR, COP, IRR,
        IQD, LAK, MGA, ... where ISO 4217 (and our minor units) have 2 or 3, and would round
        minor units away. We use the locale's pattern with its fraction precision forced to the
        ISO exponent and quantization off, so the digits shown are always exactly the amount.
        Babel strips ASCII apostrophes as pattern quotes, which mangles de_CH's ``1'234'567``
        grouping; for such locales we leave grouping out rather than print something odd.
        """
        loc = _locale(locale)
        return format_currency(
            self.to_decimal(),
            self.currency,
            format=_pattern(loc, CURRENCIES[self.currency]),
            locale=loc,
            currency_digits=False,
            decimal_quantization=False,
            group_separator="'" not in get_group_symbol(loc),
        )

    def __str__(self) -> str:
        return f"{self.to_decimal():f} {self.currency}"

    def __repr__(self) -> str:
        return f"Money({self.amount}, {self.currency!r})"


def sum_money(items: Iterable[Money], currency: str) -> Money:
    """Sum that knows its currency even when ``items`` is empty (``sum()`` would give 0)."""
    total = Money.zero(currency)
    for item in items:
        total = total + item
    return total


@functools.lru_cache(maxsize=256)
def _locale(name: str) -> Locale:
    try:
        return Locale.parse(name)
    except (UnknownLocaleError, ValueError, TypeError) as exc:
        raise InvalidInput(f"{name!r} is not a known locale") from exc


@functools.lru_cache(maxsize=256)
def _pattern(loc: Locale, digits: int):
    pattern = copy.copy(loc.currency_formats["standard"])
    pattern.frac_prec = (digits, digits)
    return pattern
