"""What the webhook inbox does with events beyond charges, over real HTTP with the sandbox's signed
deliveries: disputes (a lost one becomes a refund on our books, a won one changes no money), a
refund that fails after it succeeded (the payment has its money back), a saved method updated or
detached at the provider; and 1,000 events delivered three times each, shuffled, which leave the
books as one delivery of each in order would."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold import worker
from billfold.config import Settings
from billfold.kit import sweeps as registry
from billfold.kit.db import session_factory
from billfold.kit.money import Money
from billfold.models import Payment, PaymentEvent, PaymentMethod, PaymentWebhook, Refund
from billfold.payments.details import PaymentDetails
from billfold.providers.base import WebhookEvent
from tests.accounts import Api
from tests.test_checkout import checkout, customer, order, product, sandbox_charges
from tests.test_checkout_recovery import payments_of
from tests.test_payment_methods import make_provider
from tests.test_webhooks_processing import PROCESS, deliver, events_of, process, sandbox, webhook


def paid(api: Api, engine: Engine, price: int = 3000) -> tuple[str, Payment]:
    """A paid order and its completed payment."""
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, price), 1))
    with api.client(ada.token) as client:
        assert checkout(client, made["id"], token="tok_sandbox_visa").status_code == 200
    [payment] = payments_of(engine, made["id"])
    return made["id"], payment


def refunds_of(engine: Engine, payment_id: str) -> list[Refund]:
    with session_factory(engine)() as session:
        return list(session.scalars(sa.select(Refund).where(Refund.payment_id == payment_id).order_by(Refund.id)))


def event_types(engine: Engine, entity_id: str) -> list[str]:
    with session_factory(engine)() as session:
        return list(session.scalars(sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_id == entity_id).order_by(PaymentEvent.id)))


def test_a_lost_dispute_becomes_a_refund_once_and_a_won_one_moves_no_money(api: Api, engine: Engine) -> None:
    lost_order, lost = paid(api, engine)
    _, won = paid(api, engine)
    provider = sandbox(api)
    against = provider.open_dispute(lost.provider_payment_id, reason="fraudulent")
    kept = provider.open_dispute(won.provider_payment_id, amount=Money(1000, "USD"), reason="product_not_received")
    opened = deliver(api, events_of(api, against.id, "dispute.opened")[0])
    process(engine, api.data_dir)
    assert webhook(engine, opened).processed
    assert PaymentDetails.of(payments_of(engine, lost_order)[0]).disputes == {against.id: "open"}
    assert refunds_of(engine, lost.id) == [], "an open dispute takes no money off our books yet"

    provider.close_dispute(against.id, won=False)
    provider.close_dispute(kept.id, won=True)
    closed = events_of(api, against.id, "dispute.closed")[0]
    for event in (closed, closed, events_of(api, kept.id, "dispute.opened")[0], events_of(api, kept.id, "dispute.closed")[0]):
        deliver(api, event)
    process(engine, api.data_dir)
    [refund] = refunds_of(engine, lost.id)
    assert (refund.status, refund.amount_cents, refund.reason, refund.provider_refund_id) == (
        "succeeded", lost.amount_cents, "dispute_lost", f"dispute:{against.id}")
    [payment] = payments_of(engine, lost_order)
    assert payment.status == "refunded" and PaymentDetails.of(payment).disputes == {against.id: "lost"}
    assert "payment.dispute_lost" in event_types(engine, lost.id)
    assert refunds_of(engine, won.id) == [], "a won dispute gives nothing back"
    with session_factory(engine)() as session:
        assert session.get_one(Payment, won.id).status == "completed"
        assert PaymentDetails.of(session.get_one(Payment, won.id)).disputes == {kept.id: "won"}

    # Replayed, the lost dispute's event finds it recorded: no second refund.
    deliver(api, WebhookEvent(closed.id + "_again", closed.type, "dispute", against.id, closed.created, {}))
    process(engine, api.data_dir)
    assert len(refunds_of(engine, lost.id)) == 1


def test_a_refund_that_fails_after_succeeding_gives_the_payment_its_money_back(
    api: Api, engine: Engine, admin_token: str
) -> None:
    _, payment = paid(api, engine, 2000)
    with api.client(admin_token) as admin:
        made = admin.post(f"/v1/payments/{payment.id}/refunds", json={})
        assert made.status_code == 201, made.text
    [refund] = refunds_of(engine, payment.id)
    with session_factory(engine)() as session:
        assert session.get_one(Payment, payment.id).status == "refunded"
    failed = sandbox(api).fail_refund(refund.provider_refund_id)
    webhook_id = deliver(api, events_of(api, failed.id, "refund.failed")[0])
    process(engine, api.data_dir)
    assert webhook(engine, webhook_id).processed
    [refund] = refunds_of(engine, payment.id)
    assert refund.status == "failed" and "after succeeding" in (refund.error_message or "")
    with session_factory(engine)() as session:
        assert session.get_one(Payment, payment.id).status == "completed", "the money is the shop's again"
    with api.client(admin_token) as admin:
        again = admin.post(f"/v1/payments/{payment.id}/refunds", json={"amount_cents": 500})
        assert again.status_code == 201, "what failed can be refunded again: " + again.text


def deliver_to(api: Api, provider_id: str, event: WebhookEvent) -> str:
    body, headers = sandbox(api).build_webhook(event)
    with httpx.Client(base_url=api.url, timeout=30) as client:
        answer = client.post(f"/v1/webhooks/{provider_id}", content=body, headers={**headers, "content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def test_a_saved_method_updated_or_detached_at_the_provider_follows(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    provider_id = make_provider(engine)  # one that keeps saved methods, on the sandbox's usual state file
    with api.client(ada.token) as client:
        first = client.post("/v1/me/payment-methods", json={"provider_id": provider_id, "token": "tok_sandbox_visa"})
        second = client.post("/v1/me/payment-methods", json={"provider_id": provider_id, "token": "tok_sandbox_mastercard"})
        assert first.status_code == second.status_code == 201, first.text + second.text
    with session_factory(engine)() as session:
        ours = {m.id: m.provider_payment_method_id for m in session.scalars(
            sa.select(PaymentMethod).where(PaymentMethod.id.in_([first.json()["id"], second.json()["id"]])))}
    provider = sandbox(api)
    provider.update_payment_method(ours[first.json()["id"]], exp_month=7, exp_year=2031)
    provider.detach_payment_method(payment_method_id=ours[second.json()["id"]], idempotency_key="detached-by-the-bank")
    updated = deliver_to(api, provider_id, events_of(api, ours[first.json()["id"]], "payment_method.updated")[0])
    detached = deliver_to(api, provider_id, events_of(api, ours[second.json()["id"]], "payment_method.detached")[0])
    process(engine, api.data_dir)
    assert webhook(engine, updated).processed and webhook(engine, detached).processed
    with api.client(ada.token) as client:
        listed = {m["id"]: m for m in client.get("/v1/me/payment-methods").json()["data"]}
    assert set(listed) == {first.json()["id"]}, "the method detached at the provider is gone"
    assert (listed[first.json()["id"]]["expiry_month"], listed[first.json()["id"]]["expiry_year"]) == ("07", "2031")
    assert listed[first.json()["id"]]["is_default"], "the one left is the default"


@pytest.mark.slow
def test_a_thousand_events_delivered_three_times_shuffled_leave_the_books_as_one_in_order(
    api: Api, engine: Engine, admin_token: str
) -> None:
    """100 payments whose answers were lost, 50 refunded then failed at the provider, 50 disputes
    lost and 50 won: their 500 events from the sandbox, and 500 stale snapshots about the lost
    charges as a provider might send around them, 1,000 in all, each delivered three times, shuffled,
    processed by two workers at once. The books end as the provider's are, which is where one
    delivery of each in order leaves them: every lost payment completed, every failed refund failed
    with its payment completed, every lost dispute one refund, every won one none; one row per event."""
    ada = customer(api, engine, "thousand")
    item = product(engine, 1500)

    def bought(token: str, status: int) -> Payment:
        made = order(api, ada.token, (item, 1))
        with api.client(ada.token) as client:
            assert checkout(client, made["id"], token=token).status_code == status
        return payments_of(engine, made["id"])[0]

    with ThreadPoolExecutor(4) as pool:  # four customers' browsers at once: the setup waits on commits
        lost = [p.id for p in pool.map(lambda _: bought("tok_sandbox_timeout_after_success", 503), range(100))]
        completed = list(pool.map(lambda _: bought("tok_sandbox_visa", 200), range(150)))
    refunded, disputed_lost, disputed_won = completed[:50], completed[50:100], completed[100:]
    provider = sandbox(api)
    with api.client(admin_token) as admin:
        for payment in refunded:
            assert admin.post(f"/v1/payments/{payment.id}/refunds", json={"amount_cents": 700}).status_code == 201
    for payment in refunded:
        [refund] = refunds_of(engine, payment.id)
        provider.fail_refund(refund.provider_refund_id)
    disputes = {}
    for payment in disputed_lost + disputed_won:
        disputes[payment.id] = provider.open_dispute(payment.provider_payment_id).id
    for payment in disputed_lost:
        provider.close_dispute(disputes[payment.id], won=False)
    for payment in disputed_won:
        provider.close_dispute(disputes[payment.id], won=True)

    events: list[WebhookEvent] = []
    for payment_id in lost:
        [charge] = sandbox_charges(api, payment_id)
        [real] = events_of(api, charge.id, "charge.succeeded")
        events.append(real)
        events += [WebhookEvent(f"{real.id}_{n}", kind, "charge", charge.id, real.created, {})
                   for n, kind in enumerate(("charge.requires_action", "charge.failed", "charge.processing", "charge.canceled",
                                                           "charge.authorized"))]
    for payment in refunded:
        [refund] = refunds_of(engine, payment.id)
        events += events_of(api, refund.provider_refund_id)  # refund.succeeded, refund.failed
        events += events_of(api, payment.provider_payment_id, "charge.refunded")
        events += events_of(api, payment.provider_payment_id, "charge.succeeded")
    for payment in disputed_lost + disputed_won:
        events += events_of(api, disputes[payment.id])  # dispute.opened, dispute.closed
    assert len(events) == 1000 and len({e.id for e in events}) == 1000
    deliveries = events * 3
    random.Random(1000).shuffle(deliveries)
    signed = [provider.build_webhook(event) for event in deliveries]

    def send(part: list[tuple[bytes, dict[str, str]]]) -> list[str]:
        with httpx.Client(base_url=api.url, timeout=60) as client:
            answers = [client.post("/v1/webhooks/sandbox", content=body, headers={**headers, "content-type": "application/json"})
                       for body, headers in part]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:3]
        return [a.json()["id"] for a in answers]

    with ThreadPoolExecutor(4) as pool:
        stored = [row for part in pool.map(send, [signed[n::4] for n in range(4)]) for row in part]
    assert len(set(stored)) == 1000, "each event stored once"
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=api.data_dir)
    context = worker.make_context(settings, engine)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: worker.catch_up(context, sweeps=[registry.get(PROCESS)]), range(2)))

    with session_factory(engine)() as session:
        rows = session.scalars(sa.select(PaymentWebhook).where(PaymentWebhook.id.in_(set(stored)))).all()
        status = dict(session.execute(sa.select(Payment.id, Payment.status).where(
            Payment.id.in_(lost + [p.id for p in completed]))).all())
        refunds = session.scalars(sa.select(Refund).where(Refund.payment_id.in_([p.id for p in completed]))).all()
    assert len(rows) == 1000 and all(row.processed and not row.last_error for row in rows), "every event processed once"
    assert {status[p] for p in lost} == {"completed"}
    for payment_id in lost:
        [charge] = sandbox_charges(api, payment_id)
        assert payments_of_id(engine, payment_id).provider_payment_id == charge.id
    by_payment: dict[str, list[Refund]] = {}
    for refund in refunds:
        by_payment.setdefault(refund.payment_id, []).append(refund)
    for payment in refunded:
        assert [(r.status, r.amount_cents) for r in by_payment[payment.id]] == [("failed", 700)]
        assert status[payment.id] == "completed"
    for payment in disputed_lost:
        [refund] = by_payment[payment.id]
        assert (refund.status, refund.reason, refund.amount_cents) == ("succeeded", "dispute_lost", payment.amount_cents)
        assert status[payment.id] == "refunded"
    for payment in disputed_won:
        assert payment.id not in by_payment and status[payment.id] == "completed"


def payments_of_id(engine: Engine, payment_id: str) -> Payment:
    with session_factory(engine)() as session:
        return session.get_one(Payment, payment_id)
