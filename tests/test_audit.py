"""The audit trail's rows (``billfold.audit``): written as plain rows at the commit, in one
statement however often the session flushed before it, yet exactly the events of what was
committed: none of a rolled-back transaction or savepoint, all of the transaction around a
savepoint rolled back, and every one visible to a read in the same transaction."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from billfold.audit import audit
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.models import PaymentEvent

pytestmark = pytest.mark.every_database


def events_of(engine: Engine, entity_id: str) -> list[str]:
    with session_factory(engine)() as session:
        return list(session.scalars(
            sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_id == entity_id).order_by(PaymentEvent.id)
        ))


def test_the_events_of_a_commit_are_written_in_one_statement_across_flushes_and_a_rollback_writes_none(engine: Engine) -> None:
    kept, dropped = new_id("ord"), new_id("ord")
    inserts: list[Any] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "INSERT INTO payment_events" in statement:
            inserts.append(parameters)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with transaction(session_factory(engine)) as session:
            for n in range(30):
                audit(session, "order", kept, f"order.note_{n:02}", n=n)
                if n % 10 == 9:
                    session.flush()  # as a service does between its steps
            assert inserts == [], "nothing written before the commit"
        assert len(inserts) == 1, "thirty events and three flushes, one statement"
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert events_of(engine, kept) == [f"order.note_{n:02}" for n in range(30)]

    with pytest.raises(RuntimeError), transaction(session_factory(engine)) as session:
        audit(session, "order", dropped, "order.noted")
        session.flush()
        audit(session, "order", dropped, "order.noted_again")
        raise RuntimeError("the request failed")
    assert events_of(engine, dropped) == []


def test_a_savepoint_rolled_back_takes_its_own_events_and_leaves_the_others(engine: Engine) -> None:
    entity = new_id("ord")
    with transaction(session_factory(engine)) as session:
        audit(session, "order", entity, "order.before")
        with pytest.raises(RuntimeError), session.begin_nested():
            audit(session, "order", entity, "order.inside")
            session.flush()
            raise RuntimeError("the savepoint fails")
        audit(session, "order", entity, "order.after")
        with session.begin_nested():
            audit(session, "order", entity, "order.inside_kept")
    assert events_of(engine, entity) == ["order.before", "order.after", "order.inside_kept"]


def test_a_read_in_the_same_transaction_sees_the_events_recorded_so_far(engine: Engine) -> None:
    entity = new_id("ord")
    with transaction(session_factory(engine)) as session:
        audit(session, "order", entity, "order.first", amount_cents=100)
        audit(session, "order", entity, "order.second")
        found = session.scalars(sa.select(PaymentEvent).where(PaymentEvent.entity_id == entity).order_by(PaymentEvent.id)).all()
        assert [(e.event_type, e.data) for e in found] == [("order.first", {"amount_cents": 100}), ("order.second", None)]
    assert events_of(engine, entity) == ["order.first", "order.second"]
