"""The one clock. Every part of Billfold asks ``clock.now()`` for the time; nothing else
reads the wall clock, so tests and the demo can freeze time or move it forward.

Times are timezone-aware and in UTC.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from billfold.kit.errors import InvalidInput

UTC = timezone.utc
_log = logging.getLogger(__name__)


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
    try:
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        raise InvalidInput(f"{text!r} is longer than any clock can count") from None


class DatabaseClock:
    """Sandbox mode's clock: real time plus an offset kept in the database (``billing_clock``),
    so that every process of one installation (API, workers, the CLI) agrees on ``now`` within
    ``cache_seconds``. ``advance`` moves it forward for all of them; nothing moves it back.

    The offset is read on a connection of its own, outside any transaction the caller has open,
    so asking for the time inside a transaction never waits for that transaction's locks (SQLite
    in WAL mode lets a reader through while another connection writes)."""

    def __init__(self, engine: Any, *, cache_seconds: float = 1.0, real: Clock | None = None) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self._real = real or SystemClock()
        self._lock = threading.Lock()  # guards the fields below; never held while the database answers
        self._offset = timedelta(0)
        self._read_at: float | None = None
        self._reading = False
        self._first_read = threading.Event()
        self._reader: Any = None

    def now(self) -> datetime:
        return self._real.now() + self.offset()

    def offset(self) -> timedelta:
        """How far ahead of real time the system runs (cached for ``cache_seconds``).

        One thread at a time re-reads it, on a connection of the clock's own; the others go on
        with the offset last read instead of queueing behind that read (before, a burst wedged
        every thread behind one that waited for a pooled connection). Only before the first read
        has finished do they wait for it, a few seconds at most."""
        with self._lock:
            known = self._read_at is not None
            if known and (self._reading or time.monotonic() - self._read_at < self.cache_seconds):
                return self._offset
            first_read_elsewhere = self._reading
            self._reading = True
        if first_read_elsewhere:
            self._first_read.wait(5)
            return self._offset
        try:
            offset = timedelta(seconds=read_offset_seconds(self._reading_engine()))
        except Exception:  # unreachable for a moment: keep the last offset we knew
            _log.warning("cannot read the billing clock; keeping offset %s", self._offset, exc_info=True)
            with self._lock:
                self._reading = False
            return self._offset
        with self._lock:
            self._offset, self._read_at, self._reading = offset, time.monotonic(), False
        self._first_read.set()
        return offset

    def refresh(self) -> timedelta:
        with self._lock:
            self._read_at = None
            self._reading = False
        return self.offset()

    def close(self) -> None:
        """Close the clock's own connection (the engine it was given stays open)."""
        reader, self._reader = self._reader, None
        if reader is not None and reader is not self.engine:
            reader.dispose()

    def _reading_engine(self) -> Any:
        """The clock's own one-connection pool, so reading the time never waits for, nor takes,
        a connection the requests share (an in-memory SQLite database has only its one engine)."""
        if self._reader is None:
            url = self.engine.url
            if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
                self._reader = self.engine
            else:
                from billfold.kit.db import create_engine

                self._reader = create_engine(url, pool_size=1, max_overflow=0)
        return self._reader

    def advance(self, by: timedelta | str) -> datetime:
        """Move the whole system's time forward by ``by`` (a timedelta or ``"30d"``); the new now."""
        delta = parse_duration(by) if isinstance(by, str) else by
        if delta <= timedelta(0):
            raise InvalidInput("the clock only moves forward")
        import sqlalchemy as sa

        from billfold.kit.db.types import UTCDateTime

        stamp = sa.bindparam("at", type_=UTCDateTime())
        seconds = int(delta.total_seconds())
        if seconds < 1:
            raise InvalidInput("the billing clock moves in whole seconds")
        with self.engine.begin() as connection:
            updated = connection.execute(
                sa.text(
                    "UPDATE billing_clock SET offset_seconds = offset_seconds + :s, updated_at = :at WHERE id = 1"
                ).bindparams(stamp),
                {"s": seconds, "at": self._real.now()},
            ).rowcount
            if updated != 1:
                connection.execute(
                    sa.text("INSERT INTO billing_clock (id, offset_seconds, updated_at) VALUES (1, :s, :at)").bindparams(
                        stamp
                    ),
                    {"s": seconds, "at": self._real.now()},
                )
        self.refresh()
        return self.now()


def read_offset_seconds(engine: Any) -> int:
    """The stored offset of the billing clock, in seconds (0 when there is no row). Read on a
    raw connection in autocommit fashion: no transaction of the caller's is joined or waited on."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            cursor.execute("SELECT offset_seconds FROM billing_clock WHERE id = 1")
            row = cursor.fetchone()
        finally:
            cursor.close()
        raw.rollback()
        return int(row[0]) if row else 0
    finally:
        raw.close()
