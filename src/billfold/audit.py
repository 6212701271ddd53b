"""The audit trail: every change of state and every noteworthy act is one ``payment_events`` row,
written in the transaction that makes the change (DESIGN.md rule 4). This is the one place that
writes those rows: ``audit`` for any event, and the state machines (``billfold.states``) for
moves between states. Every row passes ``billfold.notify.outbox``, which queues webhooks out
for the events the merchant's endpoints asked for, and ``billfold.analytics.events``, which writes
the ``analytics_events`` (and notes the ``user_cohorts``) the business counts.

The rows are plain values, not ORM objects (an object cost more CPU than the rest of its event:
a renewal writes about eight), written by one SQLAlchemy Core ``executemany`` at the commit
(``kit.db.insert_at_commit``), or before an ORM statement about ``PaymentEvent`` in the same
transaction (plain SQL reading them there calls ``kit.db.write_at_commit_rows`` first). Not at each flush: a sale
flushes four times in the transaction that records its payment, and each flush would have been an
INSERT of its own. Inside a savepoint an event is an object added to the session, rolled back with
the savepoint; rows kept for the transaction around it wait for its commit, so a savepoint rolled
back never takes them along.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from billfold.analytics import events as analytics_events
from billfold.kit import clock
from billfold.kit.db import insert_at_commit
from billfold.kit.ids import new_id
from billfold.models import PaymentEvent
from billfold.notify import outbox


def audit(
    session: Session, entity_type: str, entity_id: str, event_type: str, *, subject: object = None, **data: object
) -> None:
    """Record ``event_type`` for the entity, with ``data`` (none: NULL); an event worth telling the
    merchant's webhook endpoints is queued for them in the same transaction (``billfold.notify.outbox``),
    and one the business counts is an analytics event (``billfold.analytics.events``). ``subject``:
    the entity's row, when the caller has it (a row not written yet, such as an invoice numbered
    before its INSERT, is not in the session for the outbox to find)."""
    event_id = new_id("evt")
    row = {
        "id": event_id, "entity_type": entity_type, "entity_id": entity_id, "event_type": event_type,
        "data": data or None, "created_at": clock.now(),
    }
    insert_at_commit(session, PaymentEvent, row)
    outbox.enqueue(session, event_id, entity_type, entity_id, event_type, data, subject)
    analytics_events.record(session, entity_type, entity_id, event_type, data)

