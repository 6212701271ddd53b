"""The subscription state machine (reference/providers.md §3.2). Renewals, plan changes and
retries that leave the status where it is write their own ``payment_events`` rows
(``subscription.renewed``, ``subscription.changed``, ...) through ``record``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from billfold.kit.ids import new_id
from billfold.kit.states import machine
from billfold.models import PaymentEvent, Subscription

SUBSCRIPTION = machine(
    "subscription",
    {
        None: {"trialing", "active"},
        "trialing": {"active", "past_due", "cancelled"},
        "active": {"past_due", "cancelled"},
        "past_due": {"active", "cancelled"},
        "cancelled": set(),
    },
)


def record(session: Session, subscription: Subscription, event: str, *, by: str | None, **data: Any) -> None:
    """An event that does not change the status: ``subscription.<event>``."""
    session.add(
        PaymentEvent(
            id=new_id("evt"),
            entity_type="subscription",
            entity_id=subscription.id,
            event_type=f"subscription.{event}",
            data={"status": subscription.status, "by": by, **{k: v for k, v in data.items() if v is not None}},
        )
    )
