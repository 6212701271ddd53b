from __future__ import annotations

import re
from decimal import Decimal, DecimalTuple

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from billfold.kit.errors import CurrencyMismatch, InvalidAmount, InvalidInput, UnknownCurrency
from billfold.kit.money import CURRENCIES, Money, exponent, is_currency, normalize_currency, sum_money

codes = st.sampled_from(sorted(CURRENCIES))
amounts = st.integers(min_value=-(10**15), max_value=10**15)
money = st.builds(Money, amounts, codes)
# Exponents 0, 2, 3 and 4, including currencies where CLDR's digit count differs from ISO 4217.
FORMAT_CODES = ["JPY", "KRW", "ISK", "CLP", "USD", "EUR", "HUF", "IDR", "TWD", "KWD", "BHD", "IQD", "CLF"]
MAIN_LOCALES = ["en_US", "de_DE", "fr_FR", "ja_JP"]
LOCALES = ["en_US", "de_DE", "fr_FR", "ja_JP", "de_CH", "en_IN", "sv_SE", "ar_EG", "fa_IR", "nl_NL"]


def same_currency_pair():
    return codes.flatmap(lambda c: st.tuples(*[st.builds(Money, amounts, st.just(c))] * 2))


@given(same_currency_pair())
def test_addition_and_subtraction_undo_each_other(pair):
    a, b = pair
    assert (a + b) - b == a
    assert (a - b) + b == a
    assert a + b == b + a
    assert (a + b).amount == a.amount + b.amount
    assert (a + -a).is_zero() and not (a - a)


@given(amounts, amounts, codes, codes)
def test_mixed_currencies_are_refused_and_named(x, y, c1, c2):
    assume(c1 != c2)
    a, b = Money(x, c1), Money(y, c2)
    for op in (lambda: a + b, lambda: a - b, lambda: a < b, lambda: a >= b, lambda: sum_money([a, b], c1)):
        with pytest.raises(CurrencyMismatch) as err:
            op()
        assert c1 in str(err.value) and c2 in str(err.value)


@given(amounts, codes, st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=20))
def test_allocate_parts_sum_exactly_and_stay_within_one_unit_of_their_share(amount, code, ratios):
    assume(sum(ratios) > 0)
    parts = Money(amount, code).allocate(ratios)
    assert len(parts) == len(ratios)
    assert sum_money(parts, code) == Money(amount, code)
    total = sum(ratios)
    for part, ratio in zip(parts, ratios):
        assert part.currency == code
        # |part - amount * ratio / total| < 1 minor unit
        assert abs(part.amount * total - amount * ratio) < total
        if ratio == 0:
            assert part.is_zero()


@given(amounts, codes, st.integers(min_value=1, max_value=50))
def test_split_parts_differ_by_at_most_one_unit_and_the_first_carry_the_extra(amount, code, n):
    parts = [p.amount for p in Money(amount, code).split(n)]
    assert sum(parts) == amount
    assert max(parts) - min(parts) <= 1
    assert [abs(p) for p in parts] == sorted((abs(p) for p in parts), reverse=True)


def test_allocate_examples():
    assert Money(100, "USD").split(3) == [Money(34, "USD"), Money(33, "USD"), Money(33, "USD")]
    assert Money(-100, "USD").split(3) == [Money(-34, "USD"), Money(-33, "USD"), Money(-33, "USD")]
    assert [p.amount for p in Money(5, "JPY").allocate([0, 1, 1])] == [0, 3, 2]
    assert [p.amount for p in Money(10, "EUR").allocate([1, 3])] == [3, 7]  # 2.5 vs 7.5: first tie wins


@pytest.mark.parametrize("ratios", [[], [0], [0, 0, 0], [1, -1, 2], [1.5, 1], [True, 1]])
def test_allocate_refuses_ratios_that_cannot_split(ratios):
    with pytest.raises(InvalidInput):
        Money(100, "USD").allocate(ratios)


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_split_refuses_a_bad_count(n):
    with pytest.raises(InvalidInput):
        Money(100, "USD").split(n)


@given(money)
def test_decimal_round_trip_is_exact(m):
    d = m.to_decimal()
    assert d.as_tuple().exponent == -exponent(m.currency)
    assert Money.from_decimal(d, m.currency) == m
    assert Money.from_decimal(str(d), m.currency.lower()) == m
    padded = f"{d:f}0" if exponent(m.currency) else f"{d:f}.00"
    assert Money.from_decimal(padded, m.currency) == m  # trailing zeros add no precision


@given(st.integers(min_value=-(10**40), max_value=10**40).filter(lambda n: n % 10), codes)
def test_from_decimal_refuses_more_decimals_than_the_currency_has(digits, code):
    e = exponent(code)
    t = Decimal(digits).as_tuple()
    value = Decimal(DecimalTuple(t.sign, t.digits, -(e + 1)))  # last digit is non-zero
    for v in (value, f"{value:f}"):
        with pytest.raises(InvalidAmount, match=f"more decimal places than {code}"):
            Money.from_decimal(v, code)


def test_from_decimal_examples():
    assert Money.from_decimal("12.34", "usd") == Money(1234, "USD")
    assert Money.from_decimal(Decimal("-0.005"), "KWD") == Money(-5, "KWD")
    assert Money.from_decimal(1500, "JPY") == Money(1500, "JPY")
    assert Money.from_decimal(Decimal("1.5E+3"), "JPY") == Money(1500, "JPY")
    assert Money.from_decimal(Decimal("12345678901234567890123456789.01"), "USD").amount == (
        1234567890123456789012345678901
    )
    big = Money(1234567890123456789012345678901, "USD")
    assert big.to_decimal() == Decimal("12345678901234567890123456789.01")


@pytest.mark.parametrize(
    "value",
    ["", "abc", "1e3", "NaN", "Infinity", "1_000", "1.", ".5", "1,00", Decimal("NaN"), Decimal("1E+99")]
    + [Decimal("-Infinity"), None],
)
def test_from_decimal_refuses_what_is_not_a_plain_amount(value):
    with pytest.raises(InvalidAmount):
        Money.from_decimal(value, "USD")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Money(12.5, "USD"),
        lambda: Money(1.0, "USD"),
        lambda: Money(Decimal(1), "USD"),
        lambda: Money(True, "USD"),
        lambda: Money(100, "USD") * 1.5,
        lambda: 2.0 * Money(100, "USD"),
        lambda: Money(100, "USD") * Decimal("2"),
        lambda: Money.from_decimal(0.1, "USD"),
        lambda: Money(1, "USD") + 1,
    ],
)
def test_floats_and_other_non_integers_are_refused(make):
    with pytest.raises(InvalidAmount):
        make()


@given(money, st.integers(min_value=-1000, max_value=1000))
def test_multiplying_by_an_integer(m, k):
    assert (m * k).amount == m.amount * k
    assert k * m == m * k


@given(same_currency_pair())
def test_comparisons_follow_the_amounts(pair):
    a, b = pair
    assert (a < b) == (a.amount < b.amount)
    assert (a <= b) == (a.amount <= b.amount)
    assert (a > b) == (a.amount > b.amount)
    assert (a >= b) == (a.amount >= b.amount)
    assert sorted([a, b]) == sorted([b, a])


@given(money)
def test_sign_predicates_and_truth(m):
    assert m.is_zero() == (m.amount == 0) == (not m)
    assert m.is_positive() == (m.amount > 0)
    assert m.is_negative() == (m.amount < 0)
    assert abs(m).amount == abs(m.amount)
    assert (-m).amount == -m.amount


@given(st.lists(amounts, max_size=30), codes)
def test_sum_money(values, code):
    assert sum_money([Money(v, code) for v in values], code) == Money(sum(values), code)


def test_empty_sum_is_zero_of_that_currency():
    assert sum_money([], "jpy") == Money.zero("JPY") == Money(0, "JPY")


def test_currency_table():
    assert len(CURRENCIES) > 150
    assert all(re.fullmatch("[A-Z]{3}", c) for c in CURRENCIES)
    expected = {"USD": 2, "EUR": 2, "HUF": 2, "ZWG": 2, "SLE": 2, "VES": 2, "VED": 2, "JPY": 0, "KRW": 0,
                "XOF": 0, "UYI": 0, "KWD": 3, "BHD": 3, "IQD": 3, "TND": 3, "CLF": 4, "UYW": 4}
    assert {c: exponent(c) for c in expected} == expected
    for code in "XAU XAG XPT XPD XDR XSU XUA XBA XBD XTS XXX HRK SLL CUC ZWL VEF ABC".split():
        assert not is_currency(code)
        with pytest.raises(UnknownCurrency, match=code):
            normalize_currency(code)
    assert normalize_currency(" usd ") == "USD"
    assert not is_currency(None) and not is_currency("")


def test_unknown_currency_is_refused_by_money():
    with pytest.raises(UnknownCurrency, match="'XYZ'"):
        Money(1, "XYZ")
    assert Money(1, "usd") == Money(1, "USD") and hash(Money(1, "usd")) == hash(Money(1, "USD"))


def test_text_forms():
    assert repr(Money(1234, "usd")) == "Money(1234, 'USD')"
    assert str(Money(1234, "USD")) == "12.34 USD"
    assert str(Money(-5, "KWD")) == "-0.005 KWD"
    assert str(Money(1234, "JPY")) == "1234 JPY"
    assert str(Money(0, "CLF")) == "0.0000 CLF"


@pytest.mark.parametrize(
    "m, locale, shown",
    [
        (Money(123456, "JPY"), "en_US", "¥123,456"),
        (Money(123456, "JPY"), "ja_JP", "￥123,456"),
        (Money(1234567, "KWD"), "en_US", "KWD1,234.567"),
        (Money(1234567, "KWD"), "de_DE", "1.234,567\xa0KWD"),
        (Money(123456, "USD"), "en_US", "$1,234.56"),
        (Money(-5, "USD"), "en_US", "-$0.05"),
        (Money(123456, "EUR"), "de_DE", "1.234,56\xa0€"),
        (Money(123456, "EUR"), "fr_FR", "1\u202f234,56\xa0€"),
        (Money(12345, "HUF"), "en_US", "HUF123.45"),  # CLDR would print HUF123
        (Money(1, "IDR"), "en_US", "IDR0.01"),  # CLDR would print IDR0
        (Money(1234, "IQD"), "en_US", "IQD1.234"),  # CLDR would print IQD1
        (Money(5, "CLF"), "en_US", "CLF0.0005"),
    ],
)
def test_format_shows_exactly_the_iso_digits(m, locale, shown):
    assert m.format(locale) == shown


@given(st.builds(Money, amounts, st.sampled_from(FORMAT_CODES)), st.sampled_from(MAIN_LOCALES))
def test_format_never_drops_a_minor_unit(m, locale):
    digits = "".join(re.findall("[0-9]", m.format(locale)))
    assert digits == str(abs(m.amount)).rjust(exponent(m.currency) + 1, "0")


@given(st.builds(Money, amounts, st.sampled_from(FORMAT_CODES)), st.sampled_from(LOCALES))
def test_parse_reads_back_what_format_writes(m, locale):
    assert Money.parse(m.format(locale), m.currency, locale) == m


@given(st.builds(Money, amounts, st.sampled_from(FORMAT_CODES)), st.sampled_from(MAIN_LOCALES))
def test_parse_reads_bare_numbers_without_grouping(m, locale):
    d = m.to_decimal()
    point = "," if locale in ("de_DE", "fr_FR") else "."
    assert Money.parse(f"{d:f}".replace(".", point), m.currency, locale) == m


@pytest.mark.parametrize(
    "text, code, locale, amount",
    [
        ("1.234,56", "EUR", "de_DE", 123456),
        ("1,234.56", "USD", "en_US", 123456),
        ("1 234,56", "EUR", "fr_FR", 123456),  # a plain space typed for CLDR's narrow no-break space
        ("  -12 ", "JPY", "ja_JP", -12),
        ("$12.30", "USD", "en_US", 1230),
        ("USD 12.30", "USD", "en_US", 1230),
        ("12,3\xa0€", "EUR", "de_DE", 1230),
        ("-\u200eKWD\xa01.5", "KWD", "fa_IR", -1500),
        ("0", "KWD", "en_US", 0),
    ],
)
def test_parse_examples(text, code, locale, amount):
    assert Money.parse(text, code, locale) == Money(amount, code)


@pytest.mark.parametrize(
    "text, code, locale",
    [
        ("", "USD", "en_US"),
        ("abc", "USD", "en_US"),
        ("12abc", "USD", "en_US"),
        ("1.2.3", "USD", "en_US"),
        ("1e3", "USD", "en_US"),
        ("NaN", "USD", "en_US"),
        ("Infinity", "USD", "en_US"),
        ("1_000", "USD", "en_US"),
        ("--5", "USD", "en_US"),
        ("(5.00)", "USD", "en_US"),
        ("+5", "USD", "en_US"),
        ("١٢", "USD", "en_US"),  # Arabic-Indic digits: decimal.Decimal would accept them
        ("1,23,4.00", "USD", "en_US"),  # grouping in the wrong places
        ("30.00", "EUR", "de_DE"),  # a '.' is a group separator in German: 3.000 or 30,00?
        ("1.234", "USD", "en_US"),  # excess precision
        ("12.5", "JPY", "en_US"),
        ("€12", "USD", "en_US"),  # another currency's symbol
        ("12 EUR", "USD", "en_US"),
        ("$1,234.56", "CAD", "en_US"),  # CAD is CA$ in en_US
        ("1.", "USD", "en_US"),
        (".5", "USD", "en_US"),
    ],
)
def test_parse_refuses_garbage_and_excess_precision(text, code, locale):
    with pytest.raises(InvalidAmount):
        Money.parse(text, code, locale)


@given(st.text(max_size=20), st.sampled_from(["USD", "JPY", "KWD"]), st.sampled_from(LOCALES))
def test_parse_either_reads_an_amount_or_raises_invalid_amount(text, code, locale):
    try:
        result = Money.parse(text, code, locale)
    except InvalidAmount:
        return
    assert result.currency == code and re.search("[0-9]", text)


def test_unknown_locale_is_invalid_input():
    with pytest.raises(InvalidInput, match="xx_YY"):
        Money(1, "USD").format("xx_YY")
    with pytest.raises(InvalidInput, match="xx_YY"):
        Money.parse("1", "USD", "xx_YY")
