"""Proration to the second and calendar periods: the worked examples of reference/providers.md §5
and properties that hold for any change (hypothesis)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from billfold.subscriptions.periods import add_months, boundary, period
from billfold.subscriptions.proration import prorate, round_half_up

UTC = timezone.utc
START, END = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
AT = datetime(2025, 1, 10, 8, 30, tzinfo=UTC)


def test_the_worked_examples_of_the_reference() -> None:
    upgrade = prorate(period_start=START, period_end=END, at=AT, old_unit_cents=1000, old_quantity=1, new_unit_cents=2999, new_quantity=1)
    assert (upgrade.credit_cents, upgrade.charge_cents, upgrade.net_cents) == (-698, 2094, 1396)
    assert (upgrade.remaining_seconds, upgrade.period_seconds) == (1_870_200, 2_678_400)
    seats = prorate(period_start=START, period_end=END, at=AT, old_unit_cents=1200, old_quantity=5, new_unit_cents=1200, new_quantity=8)
    assert (seats.credit_cents, seats.charge_cents, seats.net_cents) == (-4190, 6703, 2513), "rounded per line, not on the net"
    downgrade = prorate(period_start=START, period_end=END, at=AT, old_unit_cents=2999, old_quantity=1, new_unit_cents=1000, new_quantity=1)
    assert downgrade.net_cents == -1396
    half = prorate(period_start=START, period_end=END, at=START + (END - START) / 2, old_unit_cents=1000, old_quantity=1, new_unit_cents=2000, new_quantity=1)
    assert (half.credit_cents, half.charge_cents, half.net_cents) == (-500, 1000, 500)
    stripe_gist = prorate(
        period_start=datetime(2017, 2, 14, tzinfo=UTC), period_end=datetime.fromtimestamp(1489449600, UTC),
        at=datetime.fromtimestamp(1488568488, UTC), old_unit_cents=1000, old_quantity=1, new_unit_cents=0, new_quantity=1,
    )
    assert stripe_gist.credit_cents == -364


def test_rounding_is_half_away_from_zero() -> None:
    assert [round_half_up(n, 2) for n in (1, 3, -1, -3, 2)] == [1, 2, -1, -2, 1]
    assert round_half_up(4, 3) == 1 and round_half_up(5, 3) == 2


def test_calendar_periods_keep_the_anchor_day() -> None:
    jan31 = datetime(2026, 1, 31, 9, 30, tzinfo=UTC)
    assert [boundary(jan31, "monthly", k).date().isoformat() for k in range(5)] == [
        "2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31"
    ]
    assert add_months(datetime(2028, 1, 31, tzinfo=UTC), 1).day == 29, "a leap February"
    feb29 = datetime(2028, 2, 29, 12, 0, tzinfo=UTC)
    assert [boundary(feb29, "yearly", k).date().isoformat() for k in range(5)] == [
        "2028-02-29", "2029-02-28", "2030-02-28", "2031-02-28", "2032-02-29"
    ]
    assert period(jan31, "monthly", 1) == (datetime(2026, 2, 28, 9, 30, tzinfo=UTC), datetime(2026, 3, 31, 9, 30, tzinfo=UTC))


instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
prices = st.integers(min_value=0, max_value=10**9)
quantities = st.integers(min_value=1, max_value=10_000)


@settings(max_examples=300, deadline=None)
@given(start=instants, length=st.integers(1, 400 * 86400), offset=st.floats(0, 1), price=prices, quantity=quantities)
def test_a_change_to_the_same_plan_nets_to_nothing(start: datetime, length: int, offset: float, price: int, quantity: int) -> None:
    end = start + timedelta(seconds=length)
    at = start + timedelta(seconds=int(length * offset))
    same = prorate(period_start=start, period_end=end, at=at, old_unit_cents=price, old_quantity=quantity, new_unit_cents=price, new_quantity=quantity)
    assert same.net_cents == 0 and same.credit_cents == -same.charge_cents


@settings(max_examples=300, deadline=None)
@given(
    start=instants, length=st.integers(1, 400 * 86400), elapsed=st.integers(0, 400 * 86400),
    old=prices, old_qty=quantities, new=prices, new_qty=quantities,
)
def test_lines_never_exceed_the_full_period_and_are_each_rounded(
    start: datetime, length: int, elapsed: int, old: int, old_qty: int, new: int, new_qty: int
) -> None:
    end = start + timedelta(seconds=length)
    at = start + timedelta(seconds=min(elapsed, length))
    p = prorate(period_start=start, period_end=end, at=at, old_unit_cents=old, old_quantity=old_qty, new_unit_cents=new, new_quantity=new_qty)
    assert 0 <= -p.credit_cents <= old * old_qty and 0 <= p.charge_cents <= new * new_qty
    assert p.remaining_seconds == length - min(elapsed, length)
    for line, full in ((-p.credit_cents, old * old_qty), (p.charge_cents, new * new_qty)):
        exact_twice = 2 * full * p.remaining_seconds  # twice the exact amount, in 1/period_seconds
        assert abs(2 * line * p.period_seconds - exact_twice) <= p.period_seconds, "within half a minor unit"
    assert p.net_cents == p.charge_cents + p.credit_cents
    if at == start:
        assert (p.credit_cents, p.charge_cents) == (-old * old_qty, new * new_qty)
    if at == end:
        assert (p.credit_cents, p.charge_cents) == (0, 0)


@settings(max_examples=200, deadline=None)
@given(anchor=instants, months=st.integers(0, 600))
def test_a_boundary_never_drifts_from_the_anchor_day(anchor: datetime, months: int) -> None:
    moved = add_months(anchor, months)
    assert moved.day == anchor.day or moved.day < anchor.day and (moved + timedelta(days=1)).day == 1
    assert (moved.hour, moved.minute, moved.second) == (anchor.hour, anchor.minute, anchor.second)
    assert (moved.year * 12 + moved.month) - (anchor.year * 12 + anchor.month) == months
