"""Billing periods on the calendar. Period ``k`` of a subscription runs from ``anchor + k
intervals`` to ``anchor + (k + 1) intervals``, always counted from the original anchor, so the
anchor's day of the month comes back after a short month: monthly from 31 January gives 28 (or
29) February, then 31 March; yearly from 29 February gives 28 February, and 29 February again in
a leap year. The time of day is kept."""

from __future__ import annotations

import calendar
from datetime import datetime

INTERVAL_MONTHS = {"monthly": 1, "yearly": 12}


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` moved by whole months, the day clamped to the target month's last day."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(index, 12)
    day = min(anchor.day, calendar.monthrange(year, month + 1)[1])
    return anchor.replace(year=year, month=month + 1, day=day)


def boundary(anchor: datetime, interval: str, index: int) -> datetime:
    """Where period ``index`` starts (and period ``index - 1`` ends)."""
    return add_months(anchor, INTERVAL_MONTHS[interval] * index)


def period(anchor: datetime, interval: str, index: int) -> tuple[datetime, datetime]:
    return boundary(anchor, interval, index), boundary(anchor, interval, index + 1)
