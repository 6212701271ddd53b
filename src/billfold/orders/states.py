"""The state machine of orders (reference/providers.md §3.2). Payments and refunds have theirs in
``payments/states.py``."""

from __future__ import annotations

from billfold.states import machine

ORDER = machine(
    "order",
    {None: {"pending"}, "pending": {"paid", "cancelled"}, "paid": {"refunded"}, "cancelled": set(), "refunded": set()},
)
