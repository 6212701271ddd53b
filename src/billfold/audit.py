"""The audit trail: every change of state and every noteworthy act is one ``payment_events`` row,
written in the transaction that makes the change (DESIGN.md rule 4). This is the one place that
writes those rows: ``audit`` for any event, and the state machines (``billfold.states``) for
moves between states. Every row passes ``billfold.notify.outbox``, which queues webhooks out
for the events the merchant's endpoints asked for, and ``billfold.analytics.events``, which writes
the ``analytics_events`` (and notes the ``user_cohorts``) the business counts.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from billfold.kit.ids import new_id
from billfold.analytics import events as analytics_events
from billfold.models import PaymentEvent
from billfold.notify import outbox


def audit(session: Session, entity_type: str, entity_id: str, event_type: str, **data: object) -> None:
    """Record ``event_type`` for the entity, with ``data`` (none: NULL); an event worth telling the
    merchant's webhook endpoints is queued for them in the same transaction (``billfold.notify.outbox``),
    and one the business counts is an analytics event (``billfold.analytics.events``)."""
    event_id = new_id("evt")  # given, so a flush of many events is one executemany
    session.add(
        PaymentEvent(
            id=event_id,
            entity_type=entity_type,
            entity_id=entity_id,
            event_type=event_type,
            data=data or None,
        )
    )
    outbox.enqueue(session, event_id, entity_type, entity_id, event_type, data)
    analytics_events.record(session, entity_type, entity_id, event_type, data)
