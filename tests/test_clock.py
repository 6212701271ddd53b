"""The one clock: frozen and moved for tests and the demo, always UTC."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from billfold.kit import clock
from billfold.kit.errors import InvalidInput


def test_a_frozen_clock_stands_still_until_moved_forward() -> None:
    start = datetime(2026, 1, 31, 12, tzinfo=timezone.utc)
    frozen = clock.FrozenClock(start)
    with clock.using(frozen):
        assert clock.now() == clock.now() == start
        assert frozen.advance("30d") == start + timedelta(days=30) == clock.now()
        frozen.advance(timedelta(hours=1))
        assert clock.now() == start + timedelta(days=30, hours=1)
    assert clock.now() != start + timedelta(days=30, hours=1), "the previous clock is back after the block"


def test_the_clock_refuses_to_run_backwards() -> None:
    frozen = clock.FrozenClock(datetime(2026, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(InvalidInput, match="only moves forward"):
        frozen.advance(timedelta(seconds=-1))


def test_times_are_utc_and_naive_ones_are_refused() -> None:
    assert clock.now().tzinfo == timezone.utc
    berlin = timezone(timedelta(hours=1))
    assert clock.FrozenClock(datetime(2026, 1, 1, 1, tzinfo=berlin)).now() == datetime(2026, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(InvalidInput, match="no time zone"):
        clock.FrozenClock(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90)), ("45s", timedelta(seconds=45)), ("2w", timedelta(weeks=2))],
)
def test_durations_read_as_people_write_them(text: str, expected: timedelta) -> None:
    assert clock.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "1.5d", "-3d", "3 days", "3y"])
def test_a_malformed_duration_says_how_to_write_one(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not a duration"):
        clock.parse_duration(text)
