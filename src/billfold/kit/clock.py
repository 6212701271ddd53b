"""The one clock. Every part of Billfold asks ``clock.now()`` for the time; nothing else
reads the wall clock, so tests and the demo can freeze time or move it forward.

Times are timezone-aware and in UTC.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Protocol

from billfold.kit.errors import InvalidInput

UTC = timezone.utc


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The machine's clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that stands still until told to move: for tests, the demo and sandbox mode."""

    def __init__(self, at: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._at = ensure_utc(at) if at is not None else datetime.now(UTC)

    def now(self) -> datetime:
        with self._lock:
            return self._at

    def set(self, at: datetime) -> datetime:
        at = ensure_utc(at)
        with self._lock:
            self._at = at
            return at

    def advance(self, by: timedelta | str) -> datetime:
        delta = parse_duration(by) if isinstance(by, str) else by
        if delta < timedelta(0):
            raise InvalidInput("the clock only moves forward")
        with self._lock:
            self._at = self._at + delta
            return self._at


_current: Clock = SystemClock()


def now() -> datetime:
    """The current time from the clock in use, timezone-aware UTC."""
    return _current.now()


def get_clock() -> Clock:
    return _current


def set_clock(clock: Clock) -> Clock:
    """Replace the clock in use; returns the previous one."""
    global _current
    previous, _current = _current, clock
    return previous


@contextmanager
def using(clock: Clock) -> Iterator[Clock]:
    """Use ``clock`` inside the block, then put the previous clock back."""
    previous = set_clock(clock)
    try:
        yield clock
    finally:
        set_clock(previous)


def ensure_utc(value: datetime) -> datetime:
    """An aware datetime converted to UTC; a naive one is refused, since its zone is a guess."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"datetime {value.isoformat()} has no time zone; Billfold keeps time in UTC")
    return value.astimezone(UTC)


_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"`` as a timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidInput(f"{text!r} is not a duration; use a number and a unit, such as 30d, 12h, 90m, 45s or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
