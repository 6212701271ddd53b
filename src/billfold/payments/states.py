"""The state machines of payments and refunds (reference/providers.md §3.2), applied by
``kit/states.py``; an order's own machine stays in ``orders/states.py``.

Payments: a partial refund keeps a payment completed; a failed payment becomes completed only on a
late success of the same provider charge; a refund that fails later gives a refunded payment back
its completion."""

from __future__ import annotations

from billfold.kit.states import machine

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
