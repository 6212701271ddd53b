"""Invoice totals by property: the amount is the sum of the lines (credits and prorations negative),
the total is amount − discount + tax and never negative; an invoice that would be is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billfold.invoices.service import LineIn, totals
from billfold.kit.errors import InvalidAmount

CENTS = st.integers(min_value=-10**9, max_value=10**9)


@st.composite
def lines(draw: st.DrawFn) -> list[LineIn]:
    made = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        quantity = draw(st.integers(min_value=1, max_value=50))
        unit = draw(CENTS)
        kind = draw(st.sampled_from(["item", "proration", "credit", "shipping"]))
        made.append(LineIn("line", unit * quantity, quantity=quantity, unit_amount_cents=unit, kind=kind))
    return made


@settings(max_examples=300, deadline=None)
@given(lines(), st.integers(min_value=0, max_value=10**10), st.integers(min_value=0, max_value=10**10))
def test_totals_add_up_or_are_refused(rows: list[LineIn], discount: int, tax: int) -> None:
    amount = sum(line.amount_cents for line in rows)
    if amount - discount < 0:
        with pytest.raises(InvalidAmount):
            totals(rows, tax_cents=tax, discount_cents=discount)
        return
    sums = totals(rows, tax_cents=tax, discount_cents=discount)
    assert sums.amount_cents == amount
    assert sums.total_cents == amount - discount + tax >= 0
    assert (sums.discount_cents, sums.tax_cents) == (discount, tax)


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=1, max_value=10**9))
def test_a_credit_larger_than_the_items_is_refused(item: int, extra: int) -> None:
    with pytest.raises(InvalidAmount):
        totals([LineIn("item", item), LineIn("credit", -(item + extra), kind="credit")])
    assert totals([LineIn("item", item + extra), LineIn("credit", -item, kind="credit")]).total_cents == extra


@given(st.integers(min_value=-10**6, max_value=10**6), st.integers(min_value=1, max_value=100))
def test_the_unit_amount_must_multiply_to_the_amount(unit: int, quantity: int) -> None:
    assert totals([LineIn("x", abs(unit) * quantity, quantity=quantity, unit_amount_cents=abs(unit))]).amount_cents == abs(unit) * quantity
    with pytest.raises(InvalidAmount):
        totals([LineIn("x", abs(unit) * quantity + 1, quantity=quantity, unit_amount_cents=abs(unit))])
