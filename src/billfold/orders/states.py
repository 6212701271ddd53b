"""The state machines of orders, payments and refunds (reference/providers.md §3.2)."""

from __future__ import annotations

from billfold.states import machine

# The tables (reference/providers.md §3.2). Payments: a partial refund keeps a payment completed;
# a failed payment becomes completed only on a late success of the same provider charge.
ORDER = machine(
    "order",
    {None: {"pending"}, "pending": {"paid", "cancelled"}, "paid": {"refunded"}, "cancelled": set(), "refunded": set()},
)
PAYMENT = machine(
    "payment",
    {
        None: {"pending"},
        "pending": {"completed", "failed"},
        "completed": {"refunded"},
        "failed": {"completed"},
        "refunded": {"completed"},
    },
)
REFUND = machine(
    "refund",
    {None: {"pending"}, "pending": {"succeeded", "failed"}, "succeeded": {"failed"}, "failed": set()},
)
