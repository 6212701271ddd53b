"""The subscription state machine (reference/providers.md §3.2). Renewals, plan changes and
retries that leave the status where it is write their own ``payment_events`` rows
(``subscription.renewed``, ``subscription.changed``, ...) through ``record``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from billfold.audit import audit
from billfold.models import Subscription
from billfold.states import machine

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
    details = {"status": subscription.status, "by": by, **{k: v for k, v in data.items() if v is not None}}
    audit(session, "subscription", subscription.id, f"subscription.{event}", **details)
