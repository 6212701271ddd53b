"""The webhook inbox processed, over real HTTP with the sandbox's own signed deliveries: the
``webhooks.process`` sweep settles the payment or refund an event is about by asking the provider,
so a payment whose answer was lost is completed by its event; duplicates and late events never move
a payment backwards; an event about something Billfold does not know is processed and changes
nothing; and an event whose provider cannot be asked stays unprocessed with its error until a later
round."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold import worker
from billfold.accounts.api_keys import create_api_key
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit import sweeps as registry
from billfold.kit.db import session_factory, transaction
from billfold.models import Payment, PaymentProvider, PaymentWebhook, Refund
from billfold.providers.base import WebhookEvent
from billfold.providers.sandbox import SandboxProvider
from tests.accounts import Api
from tests.test_checkout import checkout, customer, order, product, sandbox_charges
from tests.test_checkout_recovery import payments_of
from tests.test_organizations import assert_problem

PROCESS = "webhooks.process"

# Claims (FOR UPDATE SKIP LOCKED), the unique event key and migration 0015's columns, on each database.
pytestmark = pytest.mark.every_database


def sandbox(api: Api) -> SandboxProvider:
    return SandboxProvider("sandbox", {"state_path": str(Path(api.data_dir) / "sandbox.sqlite3")})


def process(engine: Engine, data_dir: Path) -> int:
    """The sweep, as ``billfold worker`` runs it, round after round until a round finds nothing
    due: the database is shared with other tests, whose unprocessed events may come first in a
    round of 50. How many it processed."""
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=data_dir)
    context, total = worker.make_context(settings, engine), 0
    for _ in range(100):
        done = registry.get(PROCESS).run(context)
        if not done:
            break
        total += done
    return total


def deliver(api: Api, event: WebhookEvent) -> str:
    """The sandbox's signed delivery of ``event`` to the inbox; the stored row's id."""
    body, headers = sandbox(api).build_webhook(event)
    with httpx.Client(base_url=api.url, timeout=30) as client:
        answer = client.post("/v1/webhooks/sandbox", content=body, headers={**headers, "content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def events_of(api: Api, object_id: str, type: str | None = None) -> list[WebhookEvent]:
    found = sandbox(api).list_events(object_id=object_id, type=type)
    assert found, f"the sandbox sent no {type or ''} event about {object_id}"
    return found


def webhook(engine: Engine, webhook_id: str) -> PaymentWebhook:
    with session_factory(engine)() as session:
        return session.get_one(PaymentWebhook, webhook_id)


def lost_payment(api: Api, engine: Engine) -> tuple[str, str]:
    """An order whose payment was charged at the provider but whose answer was lost: (order, payment)."""
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        assert_problem(checkout(client, made["id"], token="tok_sandbox_timeout_after_success"), 503, "provider_unavailable")
    [payment] = payments_of(engine, made["id"])
    assert payment.status == "pending" and payment.provider_payment_id is None
    return made["id"], payment.id


def test_a_payment_whose_answer_was_lost_is_completed_by_its_event(api: Api, engine: Engine) -> None:
    order_id, payment_id = lost_payment(api, engine)
    [charge] = sandbox_charges(api, payment_id)
    [succeeded] = events_of(api, charge.id, "charge.succeeded")
    webhook_id = deliver(api, succeeded)
    assert process(engine, api.data_dir) >= 1
    [payment] = payments_of(engine, order_id)
    assert payment.status == "completed" and payment.provider_payment_id == charge.id
    done = webhook(engine, webhook_id)
    assert done.processed and done.processed_at is not None and not done.last_error
    assert payment_id in (done.note or "") and "completed" in (done.note or "")


def test_duplicate_and_late_events_leave_a_completed_payment_completed(api: Api, engine: Engine) -> None:
    order_id, payment_id = lost_payment(api, engine)
    [charge] = sandbox_charges(api, payment_id)
    [succeeded] = events_of(api, charge.id, "charge.succeeded")
    first = deliver(api, succeeded)
    assert deliver(api, succeeded) == first, "a duplicate delivery is stored once"
    process(engine, api.data_dir)
    # A charge.failed about the same charge arriving late (a provider's events are not ordered):
    # the provider, asked, says succeeded, and the payment stays completed.
    late = WebhookEvent(f"{succeeded.id}_late", "charge.failed", "charge", charge.id, succeeded.created, {"status": "declined"})
    late_id = deliver(api, late)
    process(engine, api.data_dir)
    [payment] = payments_of(engine, order_id)
    assert payment.status == "completed"
    assert webhook(engine, late_id).processed
    with session_factory(engine)() as session:
        stored = session.scalars(sa.select(sa.func.count()).select_from(PaymentWebhook).where(
            PaymentWebhook.provider_event_id == succeeded.id)).one()
    assert stored == 1


def test_an_event_about_an_object_billfold_does_not_know_is_processed_and_changes_nothing(api: Api, engine: Engine) -> None:
    product(engine)  # the sandbox provider is there (and on)
    with session_factory(engine)() as session:
        before = session.scalars(sa.select(sa.func.count()).select_from(Payment)).one()
    stranger = WebhookEvent(
        f"evt_stranger_{clock.now().timestamp()}", "charge.succeeded", "charge", "ch_not_ours_at_all", clock.now(), {}
    )
    webhook_id = deliver(api, stranger)
    process(engine, api.data_dir)
    row = webhook(engine, webhook_id)
    assert row.processed and not row.last_error and "no payment" in (row.note or "")
    with session_factory(engine)() as session:
        assert session.scalars(sa.select(sa.func.count()).select_from(Payment)).one() == before


def switched(engine: Engine, active: bool) -> None:
    with transaction(session_factory(engine)) as session:
        session.get_one(PaymentProvider, "sandbox").is_active = active


def test_an_event_the_provider_cannot_answer_about_is_retried_later(api: Api, engine: Engine) -> None:
    order_id, payment_id = lost_payment(api, engine)
    [charge] = sandbox_charges(api, payment_id)
    webhook_id = deliver(api, events_of(api, charge.id, "charge.succeeded")[0])
    switched(engine, False)
    try:
        process(engine, api.data_dir)
    finally:
        switched(engine, True)
    failed = webhook(engine, webhook_id)
    assert not failed.processed and failed.attempts == 1 and failed.last_error
    assert failed.next_attempt_at is not None and failed.next_attempt_at > clock.now()
    assert payments_of(engine, order_id)[0].status == "pending"
    process(engine, api.data_dir)
    assert not webhook(engine, webhook_id).processed, "not before its backoff"
    with clock.using(clock.FrozenClock(failed.next_attempt_at)):
        process(engine, api.data_dir)
    done = webhook(engine, webhook_id)
    assert done.processed and not done.last_error and done.attempts == 1
    assert payments_of(engine, order_id)[0].status == "completed"


def test_a_refund_whose_answer_was_lost_is_completed_by_its_event(api: Api, engine: Engine, admin_token: str) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 2500), 1))
    with api.client(ada.token) as client:
        assert checkout(client, made["id"], token="tok_sandbox_timeout_after_success").status_code == 503
    [payment] = payments_of(engine, made["id"])
    [charge] = sandbox_charges(api, payment.id)
    deliver(api, events_of(api, charge.id, "charge.succeeded")[0])
    process(engine, api.data_dir)
    assert payments_of(engine, made["id"])[0].status == "completed"
    with api.client(admin_token) as admin:
        lost = admin.post(f"/v1/payments/{payment.id}/refunds", json={"amount_cents": 1000})
    assert lost.status_code == 503, lost.text
    with session_factory(engine)() as session:
        [refund] = session.scalars(sa.select(Refund).where(Refund.payment_id == payment.id)).all()
    assert refund.status == "pending" and refund.provider_refund_id is None
    [made_refund] = [r for r in sandbox(api).list_refunds_of(charge.id) if r.metadata.get("refund_id") == refund.id]
    webhook_id = deliver(api, events_of(api, made_refund.id, "refund.succeeded")[0])
    process(engine, api.data_dir)
    with session_factory(engine)() as session:
        settled = session.get_one(Refund, refund.id)
    assert settled.status == "succeeded" and settled.provider_refund_id == made_refund.id
    assert webhook(engine, webhook_id).processed


def api_key(engine: Engine, *scopes: str) -> str:
    with transaction(session_factory(engine)) as session:
        return create_api_key(session, name="webhooks test", scopes=list(scopes), created_by=None)[1]


def listed(client: httpx.Client, **params: str) -> list[dict]:
    """Every event the list answers with these filters, page by page (the worker's database holds
    other tests' events too)."""
    found: list[dict] = []
    while True:
        answer = client.get("/v1/webhooks/events", params={**params, "limit": 100,
                                                           **({"starting_after": found[-1]["id"]} if found else {})})
        assert answer.status_code == 200, answer.text
        found += answer.json()["data"]
        if not answer.json()["has_more"]:
            return found


def test_admins_and_keys_list_and_replay_events_and_customers_cannot(api: Api, engine: Engine, admin_token: str) -> None:
    order_id, payment_id = lost_payment(api, engine)
    [charge] = sandbox_charges(api, payment_id)
    webhook_id = deliver(api, events_of(api, charge.id, "charge.succeeded")[0])
    reader, writer = api_key(engine, "read"), api_key(engine, "write")
    buyer = customer(api, engine, "nosy")
    with api.client(reader) as client:
        assert webhook_id in [e["id"] for e in listed(client, processed="false", provider_id="sandbox")]
        assert client.post(f"/v1/webhooks/events/{webhook_id}/replay").status_code == 403
    with api.client(buyer.token) as client:
        assert client.get("/v1/webhooks/events").status_code == 403
        assert client.post(f"/v1/webhooks/events/{webhook_id}/replay").status_code == 403
    process(engine, api.data_dir)
    assert payments_of(engine, order_id)[0].status == "completed"
    with api.client(admin_token) as admin:
        [row] = [e for e in listed(admin, processed="true") if e["id"] == webhook_id]
        assert row["processed"] and row["processed_at"] and payment_id in row["note"]
        assert webhook_id not in [e["id"] for e in listed(admin, processed="false")]
        assert_problem(admin.post("/v1/webhooks/events/whk_no_such_event/replay"), 404, "not_found")
    with api.client(writer) as client:
        replayed = client.post(f"/v1/webhooks/events/{webhook_id}/replay")
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["id"] == webhook_id and "processed" not in replayed.json(), "a write key gets ids only"
        assert client.get("/v1/webhooks/events").status_code == 403
    assert not webhook(engine, webhook_id).processed
    process(engine, api.data_dir)
    assert webhook(engine, webhook_id).processed, "processed again by the next round"
    assert payments_of(engine, order_id)[0].status == "completed", "and the payment stays completed"


@pytest.mark.slow
def test_events_delivered_twice_in_any_order_to_two_workers_at_once_leave_each_payment_as_in_order(api: Api, engine: Engine) -> None:
    """15 payments whose answers were lost, and four events about each charge (the provider's own
    ``charge.succeeded``, and a ``charge.requires_action``, ``charge.failed`` and a second
    ``charge.succeeded`` as a provider might send around it): 60 events, each delivered twice, all
    shuffled, processed by two workers at once (their claims, on each database; 1,000 events of every
    kind: test_webhooks_events.py). Each payment ends completed, as the in-order
    events would leave it, with one charge, one stored row per event, and every event processed."""
    ada = customer(api, engine, "many")
    item = product(engine)
    lost: dict[str, str] = {}  # payment -> order
    with api.client(ada.token) as client:
        for _ in range(15):
            made = order(api, ada.token, (item, 1))
            assert checkout(client, made["id"], token="tok_sandbox_timeout_after_success").status_code == 503
            [payment] = payments_of(engine, made["id"])
            lost[payment.id] = made["id"]
    events: list[WebhookEvent] = []
    for payment_id in lost:
        [charge] = sandbox_charges(api, payment_id)
        [real] = events_of(api, charge.id, "charge.succeeded")
        events.append(real)
        events += [
            WebhookEvent(f"{real.id}_{n}", kind, "charge", charge.id, real.created, {"status": kind.split(".")[1]})
            for n, kind in enumerate(("charge.requires_action", "charge.failed", "charge.succeeded"))
        ]
    assert len(events) == 60
    deliveries = events * 2
    random.Random(12).shuffle(deliveries)
    with ThreadPoolExecutor(4) as pool:
        stored = list(pool.map(lambda event: deliver(api, event), deliveries))
    assert len(set(stored)) == 60, "each event stored once"
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=api.data_dir)
    context = worker.make_context(settings, engine)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: worker.catch_up(context, sweeps=[registry.get(PROCESS)]), range(2)))
    with session_factory(engine)() as session:
        rows = session.scalars(sa.select(PaymentWebhook).where(PaymentWebhook.id.in_(set(stored)))).all()
        payments = session.scalars(sa.select(Payment).where(Payment.order_id.in_(list(lost.values())))).all()
    assert len(rows) == 60 and all(row.processed and not row.last_error for row in rows)
    assert len(payments) == 15 and {p.status for p in payments} == {"completed"}
    for payment in payments:
        [charge] = sandbox_charges(api, payment.id)
        assert payment.provider_payment_id == charge.id, "one charge each, recorded"


def test_a_payment_waiting_for_the_customer_follows_its_events(api: Api, engine: Engine) -> None:
    """3-D Secure: the ``charge.requires_action`` event leaves the payment waiting; the customer
    authenticates at the provider and our books never hear, until ``charge.succeeded`` is processed."""
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        waiting = checkout(client, made["id"], token="tok_sandbox_3ds_success")
        assert waiting.status_code == 202, waiting.text
    payment_id = waiting.json()["payment"]["id"]
    [charge] = sandbox_charges(api, payment_id)
    action_id = deliver(api, events_of(api, charge.id, "charge.requires_action")[0])
    process(engine, api.data_dir)
    assert webhook(engine, action_id).processed
    assert payments_of(engine, made["id"])[0].status == "pending", "still waiting for the customer"
    sandbox(api).confirm(charge_id=charge.id, idempotency_key="authenticated-at-the-bank")
    succeeded_id = deliver(api, events_of(api, charge.id, "charge.succeeded")[0])
    process(engine, api.data_dir)
    assert webhook(engine, succeeded_id).processed
    assert payments_of(engine, made["id"])[0].status == "completed"
    with api.client(ada.token) as client:
        assert client.get(f"/v1/orders/{made['id']}").json()["status"] == "paid"
