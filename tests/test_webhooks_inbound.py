"""Webhooks in, over HTTP on each database: a provider's event is verified over the raw bytes and
stored once under (provider, event id), however often and however concurrently it is delivered."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.ids import new_id
from billfold.kit.money import Money
from billfold.models import PaymentWebhook
from billfold.providers import WebhookEvent, standard_webhooks
from billfold.providers.sandbox import SandboxProvider
from tests.accounts import Api
from tests.test_organizations import assert_problem

SECRET = standard_webhooks.make_secret(b"the inbound webhook tests' secret")
DELIVERIES = 20


@pytest.fixture
def provider_id(api: Api, admin_token: str) -> str:
    """A sandbox provider of this test's own, with SECRET for its webhooks."""
    provider_id = "wh_" + new_id("x")[-12:].lower()
    with api.client(admin_token) as admin:
        made = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": "sandbox", "display_name": "Webhook sandbox",
            "config": {"webhook_secret": SECRET},
        })
    assert made.status_code == 201, made.text
    return provider_id


@pytest.fixture
def sandbox() -> Iterator[SandboxProvider]:
    """The provider's side: it makes the events and signs the deliveries."""
    provider = SandboxProvider("sandbox", {"webhook_secret": SECRET})
    yield provider
    provider.close()


def a_charge_event(sandbox: SandboxProvider) -> WebhookEvent:
    charge = sandbox.charge(amount=Money(1250, "EUR"), token="tok_sandbox_visa", idempotency_key=new_id("k"))
    [event] = sandbox.list_events(object_id=charge.id)
    return event


def deliver(client: httpx.Client, provider_id: str, sandbox: SandboxProvider, event: WebhookEvent) -> httpx.Response:
    body, headers = sandbox.build_webhook(event)  # signed afresh, as a provider's retry is
    return client.post(f"/v1/webhooks/{provider_id}", content=body, headers={**headers, "content-type": "application/json"})


def stored(engine: Engine, provider_id: str) -> list[PaymentWebhook]:
    with engine.connect() as connection:
        return list(connection.execute(
            sa.select(PaymentWebhook.__table__).where(PaymentWebhook.provider_id == provider_id)
        ).all())


@pytest.mark.every_database  # the unique key and the dialect's insert-or-ignore
def test_an_event_delivered_twice_is_stored_once(api: Api, engine: Engine, provider_id: str, sandbox: SandboxProvider) -> None:
    event = a_charge_event(sandbox)
    with api.client() as client:
        first = deliver(client, provider_id, sandbox, event)
        again = deliver(client, provider_id, sandbox, event)
    assert first.status_code == 200, first.text
    assert again.status_code == 200, again.text
    assert first.json()["duplicate"] is False and again.json() == {**first.json(), "duplicate": True}
    [row] = stored(engine, provider_id)
    assert row.id == first.json()["id"] and row.provider_event_id == event.id
    assert row.event_type == "charge.succeeded" and row.processed is False
    assert row.payload == json.loads(sandbox.build_webhook(event)[0])


@pytest.mark.every_database
def test_twenty_concurrent_deliveries_of_one_event_store_it_once(
    api: Api, engine: Engine, provider_id: str, sandbox: SandboxProvider
) -> None:
    event = a_charge_event(sandbox)
    start = threading.Barrier(DELIVERIES)

    def one_delivery(_: int) -> httpx.Response:
        with api.client() as client:
            start.wait(timeout=30)
            return deliver(client, provider_id, sandbox, event)

    with ThreadPoolExecutor(DELIVERIES) as pool:
        answers = list(pool.map(one_delivery, range(DELIVERIES)))
    assert [a.status_code for a in answers] == [200] * DELIVERIES, [a.text for a in answers if a.status_code != 200]
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * (DELIVERIES - 1), "one delivery is new"
    [row] = stored(engine, provider_id)
    assert {a.json()["id"] for a in answers} == {row.id} and row.provider_event_id == event.id


def test_the_key_is_per_provider_and_each_event_is_its_own(
    api: Api, engine: Engine, admin_token: str, provider_id: str, sandbox: SandboxProvider
) -> None:
    other = provider_id + "b"
    with api.client(admin_token) as admin:
        assert admin.post("/v1/payment-providers", json={
            "id": other, "kind": "sandbox", "display_name": "Another", "config": {"webhook_secret": SECRET},
        }).status_code == 201
    first, second = a_charge_event(sandbox), a_charge_event(sandbox)
    with api.client() as client:
        for target in (provider_id, other):
            for event in (first, second):
                answer = deliver(client, target, sandbox, event)
                assert answer.status_code == 200 and answer.json()["duplicate"] is False, answer.text
    for target in (provider_id, other):
        assert sorted(r.provider_event_id for r in stored(engine, target)) == sorted([first.id, second.id])


def test_a_delivery_that_does_not_verify_is_refused_and_nothing_is_stored(
    api: Api, engine: Engine, provider_id: str, sandbox: SandboxProvider
) -> None:
    body, headers = sandbox.build_webhook(a_charge_event(sandbox))
    with api.client() as client:
        tampered = client.post(f"/v1/webhooks/{provider_id}", content=body.replace(b"1250", b"1"), headers=headers)
        unsigned = client.post(f"/v1/webhooks/{provider_id}", content=body)
        forged = SandboxProvider("sandbox", {}).build_webhook(a_charge_event(sandbox))
        other_secret = client.post(f"/v1/webhooks/{provider_id}", content=forged[0], headers=forged[1])
        unknown = client.post("/v1/webhooks/no_such_provider", content=body, headers=headers)
    for answer in (tampered, unsigned, other_secret):
        assert_problem(answer, 400, "webhook_signature_invalid")
    assert_problem(unknown, 404, "not_found")
    assert stored(engine, provider_id) == []


def test_a_providers_signed_delivery_is_not_read_as_card_data_and_an_unsigned_one_is_still_refused(
    api: Api, engine: Engine, provider_id: str, sandbox: SandboxProvider
) -> None:
    """The card-data guard's one exception (docs/payments.md#card-data): a provider describes a card
    as PCI allows (expiry, last four) and its ids may hold a Luhn-valid run of digits (about 1 in 300
    of the sandbox's hex ids did), which the guard refused with 422 and the provider would have
    retried for days. The signature decides instead: nothing unsigned is stored."""
    described = WebhookEvent(
        "evt_sandbox_4242424242424242", "charge.succeeded", "charge", "ch_sandbox_5555555555554444", clock.now(),
        {"payment_method_details": {"card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}}},
    )
    body, headers = sandbox.build_webhook(described)
    with api.client() as client:
        signed = client.post(f"/v1/webhooks/{provider_id}", content=body, headers={**headers, "content-type": "application/json"})
        unsigned = client.post(f"/v1/webhooks/{provider_id}", content=body, headers={"content-type": "application/json"})
        listed = client.get("/v1/products", params={"q": "x"}, headers={"Idempotency-Key": "4242424242424242"})
    assert signed.status_code == 200 and signed.json()["duplicate"] is False, signed.text
    assert_problem(unsigned, 400, "webhook_signature_invalid")
    assert_problem(listed, 422, "card_data_refused")  # everywhere else the guard stands
    [row] = stored(engine, provider_id)
    assert row.provider_event_id == described.id


def test_a_new_webhook_secret_takes_effect_at_once_though_deliveries_reuse_their_adapter(
    api: Api, engine: Engine, admin_token: str, provider_id: str, sandbox: SandboxProvider
) -> None:
    """Deliveries reuse the adapter built in the last second (provider_config.adapter_for_delivery);
    a secret changed through the API is used from the next delivery on, in the process that took
    the change."""
    rotated = standard_webhooks.make_secret(b"the rotated secret of the inbound tests")
    after = SandboxProvider("sandbox", {"webhook_secret": rotated})
    try:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            assert deliver(client, provider_id, sandbox, a_charge_event(sandbox)).status_code == 200
            with api.client(admin_token) as admin:
                changed = admin.patch(f"/v1/payment-providers/{provider_id}", json={"config": {"webhook_secret": rotated}})
                assert changed.status_code == 200, changed.text
            assert_problem(deliver(client, provider_id, sandbox, a_charge_event(sandbox)), 400, "webhook_signature_invalid")
            assert deliver(client, provider_id, after, a_charge_event(after)).status_code == 200
    finally:
        after.close()
    assert len(stored(engine, provider_id)) == 2


@pytest.mark.every_database  # many events a transaction: the dialect's multi-row insert-or-ignore
def test_a_crowd_of_deliveries_stores_each_event_once_and_answers_each_with_its_own_row(
    api: Api, engine: Engine, provider_id: str, sandbox: SandboxProvider
) -> None:
    """The API writes the deliveries arriving together in one transaction (billfold.webhooks.door):
    40 events, each delivered twice, all at once from 40 connections; every answer names its event's
    row, exactly one delivery of each is new, and nothing else is stored."""
    events = [a_charge_event(sandbox) for _ in range(40)]
    work = [event for event in events for _ in range(2)]
    start = threading.Barrier(40)

    def deliveries(share: list[WebhookEvent]) -> list[tuple[str, httpx.Response]]:
        with api.client() as client:
            start.wait(timeout=30)
            return [(event.id, deliver(client, provider_id, sandbox, event)) for event in share]

    with ThreadPoolExecutor(40) as pool:
        answers = [a for share in pool.map(deliveries, [work[i::40] for i in range(40)]) for a in share]
    assert [a.status_code for _, a in answers] == [200] * 80, [a.text for _, a in answers if a.status_code != 200]
    rows = {r.provider_event_id: r.id for r in stored(engine, provider_id)}
    assert sorted(rows) == sorted(e.id for e in events)
    assert all(a.json()["id"] == rows[event_id] for event_id, a in answers)
    new = sorted(event_id for event_id, a in answers if not a.json()["duplicate"])
    assert new == sorted(rows), "exactly one delivery of each event is new"


def test_the_delivery_door_refuses_what_the_endpoint_refuses(api: Api, engine: Engine, provider_id: str, sandbox: SandboxProvider) -> None:
    """Deliveries are answered before FastAPI; the same checks stand there: a NUL character, a body
    over the limit, a query parameter the route does not take (left to FastAPI), another method."""
    body, headers = sandbox.build_webhook(a_charge_event(sandbox))
    headers = {**headers, "content-type": "application/json"}
    with api.client() as client:
        nul = client.post(f"/v1/webhooks/{provider_id}", content=body.replace(b'"data"', b'"da\\u0000ta"'), headers=headers)
        huge = client.post(f"/v1/webhooks/{provider_id}", content=b" " * 2_000_000 + body, headers=headers)
        queried = client.post(f"/v1/webhooks/{provider_id}", params={"replay": "1"}, content=body, headers=headers)
        read = client.get(f"/v1/webhooks/{provider_id}")
        taken = client.post(f"/v1/webhooks/{provider_id}", content=body, headers=headers)
    assert_problem(nul, 422, "invalid_input")
    assert_problem(huge, 413, "request_too_large")
    assert_problem(queried, 422, "invalid_input")
    assert read.status_code == 405 and "POST" in read.headers["allow"]
    assert taken.status_code == 200 and taken.json()["duplicate"] is False
    assert taken.headers["x-content-type-options"] == "nosniff" and taken.headers["cache-control"] == "no-store"
    assert len(stored(engine, provider_id)) == 1
