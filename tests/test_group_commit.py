"""Group commit (``kit.db.group_commit``) on each database: rows handed in together by concurrent
requests are written in a few transactions, each request learns its own row's fate, and one bad
row fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit.db import session_factory
from billfold.kit.db.group_commit import GroupCommit
from billfold.kit.ids import new_id
from billfold.models import PaymentProvider, PaymentWebhook
from billfold.webhooks import inbound

pytestmark = pytest.mark.every_database  # the dialect's multi-row insert-or-ignore, and its constraints


@pytest.fixture
def provider(engine: Engine) -> Iterator[str]:
    provider_id = "gc_" + new_id("x")[-10:].lower()
    with session_factory(engine).begin() as session:
        session.add(PaymentProvider(id=provider_id, display_name="Group commit"))
    yield provider_id
    with session_factory(engine).begin() as session:
        session.execute(sa.delete(PaymentProvider).where(PaymentProvider.id == provider_id))


def row(provider_id: str, event_id: str) -> dict[str, object]:
    return {"id": new_id("whk"), "provider_id": provider_id, "provider_event_id": event_id,
            "event_type": "charge.succeeded", "payload": {"id": event_id}}


def submit_all(engine: Engine, rows: list[dict[str, object]]) -> tuple[list[object], GroupCommit]:
    writer: GroupCommit = GroupCommit(session_factory(engine), inbound.store_rows)

    async def everyone() -> list[object]:
        return await asyncio.gather(*(writer.submit(r) for r in rows), return_exceptions=True)

    return asyncio.run(everyone()), writer


def stored(engine: Engine, provider_id: str) -> dict[str, str]:
    with engine.connect() as connection:
        return dict(connection.execute(sa.select(PaymentWebhook.provider_event_id, PaymentWebhook.id)
                                       .where(PaymentWebhook.provider_id == provider_id)).all())


def test_concurrent_rows_share_transactions_and_each_learns_whether_it_was_new(engine: Engine, provider: str) -> None:
    events = [f"evt_{i}" for i in range(60)]
    rows = [row(provider, e) for e in events] + [row(provider, e) for e in events[:20]]  # 20 delivered twice at once
    results, writer = submit_all(engine, rows)
    in_db = stored(engine, provider)
    assert sorted(in_db) == sorted(events)
    assert [r.webhook_id for r in results] == [in_db[r["provider_event_id"]] for r in rows]
    assert [r.duplicate for r in results] == [False] * 60 + [True] * 20, "the first row of an event is the new one"
    assert writer.items == 80 and writer.batches < 10, f"{writer.batches} transactions for 80 rows"


def test_an_event_stored_earlier_is_a_duplicate_in_a_later_batch(engine: Engine, provider: str) -> None:
    [first], _ = submit_all(engine, [row(provider, "evt_once")])
    again, _ = submit_all(engine, [row(provider, "evt_once"), row(provider, "evt_new")])
    assert first.duplicate is False and again[0].duplicate is True and again[0].webhook_id == first.webhook_id
    assert again[1].duplicate is False and sorted(stored(engine, provider)) == ["evt_new", "evt_once"]


def test_one_bad_row_fails_alone_and_the_rest_are_stored(engine: Engine, provider: str) -> None:
    rows = [row(provider, f"evt_{i}") for i in range(10)]
    rows.insert(5, row("no_such_provider", "evt_orphan"))  # breaks the foreign key
    results, _ = submit_all(engine, rows)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(results[5], sa.exc.IntegrityError)
    assert sorted(stored(engine, provider)) == sorted(f"evt_{i}" for i in range(10))
    assert all(not r.duplicate for i, r in enumerate(results) if i != 5)
