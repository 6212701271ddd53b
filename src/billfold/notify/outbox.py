"""The outbox of webhooks out: ``billfold.audit.audit`` calls ``enqueue`` for every audit row, and an
event worth telling the merchant (``EVENT_TYPES``) becomes one ``webhook_deliveries`` row per
active endpoint that wants it, in the same transaction: a change rolled back tells nothing, and a
change committed cannot lose its webhook.

Cheap when nothing is wanted: an audit row of another kind costs a dictionary lookup; one of these
kinds reads the active endpoints once per transaction (kept in ``session.info`` for the rest of it).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.kit import clock
from billfold.kit.db import for_transaction
from billfold.kit.ids import new_id
from billfold.models.notify import WebhookDelivery, WebhookEndpoint

EVENT_TYPES = (
    "order.paid",
    "payment.failed",
    "refund.succeeded",
    "refund.failed",
    "subscription.created",
    "subscription.renewed",
    "subscription.past_due",
    "subscription.cancelled",
    "invoice.paid",
    "invoice.credited",
    "invoice.credit_voided",
    "membership.started",
    "membership.expired",
)
"""What an endpoint may ask to be told of (``["*"]``: all of them)."""
ALL = "*"

# The audit event -> the type told. A state machine's start has "from": None in its data.
_SIMPLE = {
    ("order", "order.paid"): "order.paid",
    ("payment", "payment.failed"): "payment.failed",
    ("refund", "refund.succeeded"): "refund.succeeded",
    ("refund", "refund.failed"): "refund.failed",  # declined, or failed after succeeding (the money came back)
    ("subscription", "subscription.renewed"): "subscription.renewed",
    ("subscription", "subscription.past_due"): "subscription.past_due",
    ("subscription", "subscription.cancelled"): "subscription.cancelled",
    ("invoice", "invoice.paid"): "invoice.paid",
    ("invoice", "invoice.credited"): "invoice.credited",  # a credit note issued (its id and number in "event")
    ("invoice", "invoice.credit_voided"): "invoice.credit_voided",  # and voided: its refund failed after succeeding
    ("membership", "membership.expired"): "membership.expired",
}
_STARTS = {
    ("subscription", "subscription.trialing"): ("subscription.created", (None,)),
    ("membership", "membership.active"): ("membership.started", (None, "pending")),
}

# What of each entity's row a payload shows (never metadata: it holds provider details).
_FIELDS = (
    "order_number", "invoice_number", "status", "user_id", "organization_id", "order_id", "payment_id",
    "subscription_id", "product_id", "membership_type_id", "provider_id", "amount_cents", "subtotal_cents",
    "tax_cents", "discount_cents", "total_cents", "price_cents", "currency", "reason", "current_period_start",
    "current_period_end", "cancel_at_period_end", "trial_end", "start_date", "end_date", "issue_date", "due_date",
    "paid_date", "created_at", "completed_at",
)

_MEMO = "billfold_webhook_endpoints"


def outgoing_type(entity_type: str, event_type: str, data: dict[str, Any]) -> str | None:
    """The type an audit event is told as, or None when it is not told."""
    told = _SIMPLE.get((entity_type, event_type))
    if told is not None:
        return told
    start = _STARTS.get((entity_type, event_type))
    if start is not None and data.get("from") in start[1]:
        return start[0]
    return None


def forget_endpoints(session: Session) -> None:
    """Read the endpoints again at the next event (they changed in this transaction)."""
    session.info.pop(_MEMO, None)


_ACTIVE_ENDPOINTS = sa.select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(WebhookEndpoint.is_active == sa.true())


def _endpoints(session: Session) -> list[tuple[str, list[str]]]:
    def read() -> list[tuple[str, list[str]]]:
        with session.no_autoflush:  # the caller may be half-way through building its rows
            rows = session.execute(_ACTIVE_ENDPOINTS).all()
        return [(row.id, list(row.event_types or [])) for row in rows]

    return for_transaction(session, _MEMO, read)


def _value(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def snapshot(session: Session, entity_type: str, entity_id: str, row: Any = None) -> dict[str, Any]:
    """The entity as the payload shows it: ``row`` (the row that just moved) when given, else from
    the session's identity map."""
    from billfold import models

    model = {
        "order": models.Order, "payment": models.Payment, "refund": models.Refund, "invoice": models.Invoice,
        "subscription": models.Subscription, "membership": models.UserMembership,
    }.get(entity_type)
    if row is None or type(row) is not model:
        with session.no_autoflush:
            row = session.get(model, entity_id) if model is not None else None
    shown: dict[str, Any] = {"object": entity_type, "id": entity_id}
    if row is not None:
        columns = sa.inspect(type(row)).columns.keys()
        shown.update({name: _value(getattr(row, name)) for name in _FIELDS if name in columns})
    return shown


def enqueue(
    session: Session, event_id: str, entity_type: str, entity_id: str, event_type: str, data: dict[str, Any],
    row: Any = None,
) -> None:
    """One delivery per active endpoint that wants this event (none if it is not told); ``row``: the
    entity's row, when the caller has it."""
    told = outgoing_type(entity_type, event_type, data)
    if told is None:
        return
    wanting = [endpoint_id for endpoint_id, types in _endpoints(session) if ALL in types or told in types]
    if not wanting:
        return
    now = clock.now()
    payload = {
        "type": told,
        "timestamp": now.isoformat(),
        "data": {**snapshot(session, entity_type, entity_id, row), "event": {k: _value(v) for k, v in data.items()}},
    }
    for endpoint_id in wanting:
        session.add(
            WebhookDelivery(
                id=new_id("whd"), endpoint_id=endpoint_id, event_id=event_id, event_type=told,
                entity_key=f"{entity_type}:{entity_id}", payload=payload, status="pending", attempts=0,
                next_attempt_at=now, created_at=now, updated_at=now,
            )
        )
