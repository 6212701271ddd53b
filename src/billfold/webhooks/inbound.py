"""A provider's event in: verified over the raw bytes, stored once under (provider, event id).

A provider delivers an event at least once, and again whenever it did not see our 2xx in time,
so the same event may arrive twice, or many times at once. ``payment_webhooks`` holds it under a
unique (``provider_id``, ``provider_event_id``): the first delivery inserts the row, and any
other finds the key taken and is answered as the duplicate it is. Only the delivery that stored
the row is new, so whatever processes the event runs for that one alone. The stored events are
processed by the worker (``billfold.webhooks.processing``).

The row's ``payload`` is the event as the adapter normalised it (``WebhookEvent.to_dict``: our
event type, the kind and id of the object it is about, and the provider's own object as it came),
so processing reads every provider's events the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.security import Security
from billfold.kit.db.dialects import insert_ignore
from billfold.kit.ids import new_id
from billfold.models import PaymentWebhook
from billfold.payments import provider_config
from billfold.providers.base import WebhookEvent
from billfold.providers.errors import WebhookSignatureInvalid

EVENT_KEY = ("provider_id", "provider_event_id")


@dataclass(frozen=True, slots=True)
class Received:
    webhook_id: str  # the payment_webhooks row holding the event
    duplicate: bool  # the event was already stored by an earlier delivery


def receive_webhook(
    session: Session, security: Security, provider_id: str, body: bytes, headers: Mapping[str, str]
) -> Received:
    """Verify a delivery to ``provider_id`` with its adapter and store the event once. NotFound
    for an unknown provider; WebhookSignatureInvalid (400) for a signature, timestamp or body that
    does not verify, and then nothing is stored. A provider that was switched off still has its
    events received: refunds and disputes of its payments go on. (The API answers deliveries in
    ``billfold.webhooks.door``, which does the same in the event loop, many events a commit.)"""
    adapter = provider_config.adapter_for_delivery(session, security, provider_id)
    event = adapter.verify_webhook(body, headers)
    (received,) = store_rows(session, [event_row(provider_id, event)])
    return received


def event_row(provider_id: str, event: WebhookEvent) -> dict[str, Any]:
    """The ``payment_webhooks`` row of a verified event, with a new id."""
    if len(event.id) > 255 or len(event.type) > 100:
        raise WebhookSignatureInvalid("the event's id or type is too long to be a provider's event")
    return {
        "id": new_id("whk"), "provider_id": provider_id, "provider_event_id": event.id,
        "event_type": event.type, "payload": event.to_dict(),
    }


def store_rows(session: Session, rows: Sequence[Mapping[str, Any]]) -> list[Received]:
    """Insert each row unless its provider's event id is stored already (by an earlier delivery,
    or by an earlier row of ``rows``: the same event delivered twice at once), one statement for
    all. A row is new when the id stored under its key is its own; a concurrent delivery waits for
    the first to commit, then finds its key taken."""
    if insert_ignore(session, PaymentWebhook.__table__, rows, key=EVENT_KEY) == len(rows):
        return [Received(row["id"], duplicate=False) for row in rows]
    stored: dict[tuple[str, str], str] = {}
    for provider_id in {row["provider_id"] for row in rows}:
        event_ids = sorted({row["provider_event_id"] for row in rows if row["provider_id"] == provider_id})
        found = session.execute(
            sa.select(PaymentWebhook.provider_event_id, PaymentWebhook.id).where(
                PaymentWebhook.provider_id == provider_id, PaymentWebhook.provider_event_id.in_(event_ids)
            )
        )
        stored.update(((provider_id, event_id), webhook_id) for event_id, webhook_id in found)
    received = []
    for row in rows:
        webhook_id = stored[(row["provider_id"], row["provider_event_id"])]
        received.append(Received(webhook_id, duplicate=webhook_id != row["id"]))
    return received
