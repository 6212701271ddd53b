"""The state machines of payments and refunds (reference/providers.md §3.2), applied by
``billfold/states.py``; an order's own machine stays in ``orders/states.py``.

Payments: a partial refund keeps a payment completed; a failed payment becomes completed only on a
late success of the same provider charge; a refund that fails later gives a refunded payment back
its completion.

A payment has one state more than its column holds: ``waiting`` for the customer's action (3-D
Secure). The spec allows ``payments.status`` only ``pending``, ``completed``, ``failed`` and
``refunded``, and the API shows that column, so a waiting payment is stored as ``pending`` with
``metadata.provider_status`` = ``requires_action``; the machine reads the state from the row
(``PAYMENT.current``) and stores it there (``PAYMENT.put``). See docs/payments.md."""

from __future__ import annotations

from typing import Any

from billfold.states import StateMachine, machine
from billfold.payments.details import WAITING_FOR_CUSTOMER, PaymentDetails

WAITING = "waiting"


class PaymentMachine(StateMachine):
    """The payment machine: ``waiting`` is derived from, and stored in, a ``pending`` row's details."""

    def current(self, row: Any) -> str | None:
        if row.status == "pending" and PaymentDetails.of(row).provider_status == WAITING_FOR_CUSTOMER:
            return WAITING
        return row.status

    def put(self, row: Any, state: str) -> None:
        details = PaymentDetails.of(row)
        if state == WAITING:
            details.but(provider_status=WAITING_FOR_CUSTOMER).write(row)
        elif state == "pending" and details.provider_status == WAITING_FOR_CUSTOMER:
            details.but(provider_status=None).write(row)  # no longer waiting; the provider's word follows
        row.status = "pending" if state == WAITING else state


PAYMENT = PaymentMachine(
    "payment",
    {
        state: frozenset(targets)
        for state, targets in {
            None: {"pending"},
            "pending": {WAITING, "completed", "failed"},
            WAITING: {"pending", "completed", "failed"},  # confirmed (still processing, or done), or ended
            "completed": {"refunded"},
            "failed": {"completed"},
            "refunded": {"completed"},
        }.items()
    },
)
REFUND = machine(
    "refund",
    {None: {"pending"}, "pending": {"succeeded", "failed"}, "succeeded": {"failed"}, "failed": set()},
)


def waiting(payment: Any) -> bool:
    """Whether the payment waits for the customer's action (then ``confirm`` or ``cancel`` it)."""
    return PAYMENT.current(payment) == WAITING
