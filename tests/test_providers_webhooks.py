"""Sandbox webhooks: Standard Webhooks signatures over the raw bytes, with a 5-minute window."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator

import pytest

from billfold.kit import clock
from billfold.kit.errors import ConfigurationError
from billfold.kit.money import Money
from billfold.providers import WebhookSignatureInvalid
from billfold.providers import standard_webhooks
from billfold.providers.sandbox import SandboxProvider

SECRET = standard_webhooks.make_secret(b"0123456789abcdef0123456789abcdef")


@pytest.fixture
def sandbox(frozen_clock: clock.FrozenClock) -> Iterator[SandboxProvider]:
    provider = SandboxProvider("sandbox", {"webhook_secret": SECRET})
    yield provider
    provider.close()


def paid(sandbox: SandboxProvider) -> tuple[bytes, dict[str, str]]:
    charge = sandbox.charge(amount=Money(1000, "USD"), token="tok_sandbox_visa", idempotency_key="k")
    [event] = sandbox.list_events(object_id=charge.id)
    return sandbox.build_webhook(event)


def test_a_signed_event_verifies_and_parses(sandbox: SandboxProvider) -> None:
    body, headers = paid(sandbox)
    event = sandbox.verify_webhook(body, headers)
    assert event.type == "charge.succeeded" and event.object_type == "charge"
    assert event.id == headers["webhook-id"] and event.created == clock.now()
    assert event.data["status"] == "succeeded" and event.data["amount"] == {"amount": 1000, "currency": "USD"}
    assert event.object_id == event.data["id"]


def test_the_signature_is_the_standard_webhooks_one(sandbox: SandboxProvider) -> None:
    body, headers = paid(sandbox)
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(b"0123456789abcdef0123456789abcdef", signed, hashlib.sha256).digest())
    assert headers["webhook-signature"] == "v1," + expected.decode()
    assert int(headers["webhook-timestamp"]) == int(clock.now().timestamp())


def test_header_names_are_case_insensitive_and_a_rolled_secret_list_is_accepted(sandbox: SandboxProvider) -> None:
    body, headers = paid(sandbox)
    shouted = {k.upper(): v for k, v in headers.items()}
    shouted["WEBHOOK-SIGNATURE"] = "v1,b2xkIHNpZ25hdHVyZQ== " + headers["webhook-signature"]
    assert sandbox.verify_webhook(body, shouted).id == headers["webhook-id"]


def test_a_tampered_body_is_refused(sandbox: SandboxProvider) -> None:
    body, headers = paid(sandbox)
    tampered = body.replace(b'"amount":1000', b'"amount":1')
    assert tampered != body
    with pytest.raises(WebhookSignatureInvalid) as refused:
        sandbox.verify_webhook(tampered, headers)
    assert refused.value.status == 400


def test_a_reserialised_body_is_refused(sandbox: SandboxProvider) -> None:
    body, headers = paid(sandbox)
    with pytest.raises(WebhookSignatureInvalid):
        sandbox.verify_webhook(json.dumps(json.loads(body), indent=1).encode(), headers)


@pytest.mark.parametrize("header, value", [
    ("webhook-id", "evt_other"), ("webhook-timestamp", "12345"), ("webhook-signature", "v1,AAAA"),
    ("webhook-signature", ""), ("webhook-timestamp", "soon"),
])
def test_a_changed_or_missing_header_is_refused(sandbox: SandboxProvider, header: str, value: str) -> None:
    body, headers = paid(sandbox)
    with pytest.raises(WebhookSignatureInvalid):
        sandbox.verify_webhook(body, {**headers, header: value})
    with pytest.raises(WebhookSignatureInvalid):
        sandbox.verify_webhook(body, {k: v for k, v in headers.items() if k != header})


def test_another_secret_is_refused(sandbox: SandboxProvider) -> None:
    body, headers = paid(sandbox)
    with pytest.raises(WebhookSignatureInvalid):
        SandboxProvider("sandbox", {}).verify_webhook(body, headers)


def test_a_stale_or_future_timestamp_is_refused(sandbox: SandboxProvider, frozen_clock: clock.FrozenClock) -> None:
    body, headers = paid(sandbox)
    frozen_clock.advance("300s")
    assert sandbox.verify_webhook(body, headers)  # exactly at the edge of the window
    frozen_clock.advance("1s")
    with pytest.raises(WebhookSignatureInvalid) as stale:
        sandbox.verify_webhook(body, headers)
    assert stale.value.code == "webhook_timestamp_stale"
    future = sandbox.build_webhook(sandbox.list_events()[0], at=clock.now() + standard_webhooks.TOLERANCE * 2)
    with pytest.raises(WebhookSignatureInvalid):
        sandbox.verify_webhook(*future)
    # Re-signing on redelivery gives a fresh timestamp under the same webhook-id.
    again_body, again = sandbox.build_webhook(sandbox.list_events()[0])
    assert again["webhook-id"] == headers["webhook-id"] and sandbox.verify_webhook(again_body, again)


def test_a_signed_body_that_is_not_an_event_is_refused(sandbox: SandboxProvider) -> None:
    body = b'{"hello": "world"}'
    headers = standard_webhooks.sign(SECRET, "evt_1", body)
    with pytest.raises(WebhookSignatureInvalid):
        sandbox.verify_webhook(body, headers)


def test_the_sandbox_emits_an_event_for_every_change(sandbox: SandboxProvider) -> None:
    customer = sandbox.create_customer(email="a@example.com", idempotency_key="c")
    method = sandbox.attach_payment_method(customer_id=customer.id, token="tok_sandbox_3ds_success", idempotency_key="m")
    pending = sandbox.charge(amount=Money(500, "EUR"), payment_method_id=method.id, capture=False, idempotency_key="p")
    sandbox.confirm(charge_id=pending.id, idempotency_key="cf")
    sandbox.capture(charge_id=pending.id, idempotency_key="cp")
    refund = sandbox.refund(charge_id=pending.id, amount=Money(100, "EUR"), idempotency_key="r")
    sandbox.charge(amount=Money(500, "EUR"), payment_method_id=method.id, capture=False, idempotency_key="p")  # replay
    assert [e.type for e in sandbox.list_events()] == [
        "customer.created", "payment_method.attached", "charge.requires_action", "charge.authorized",
        "charge.succeeded", "refund.succeeded", "charge.refunded",
    ]
    assert set(e.type for e in sandbox.list_events()) <= sandbox.capabilities.webhook_events
    [refunded] = sandbox.list_events(type="charge.refunded")
    assert refunded.data["amount_refunded"] == {"amount": 100, "currency": "EUR"}
    assert sandbox.list_events(object_id=refund.id)[0].type == "refund.succeeded"
    for event in sandbox.list_events():
        assert sandbox.verify_webhook(*sandbox.build_webhook(event)) == event


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()])
def test_a_malformed_secret_is_a_configuration_error(secret: str) -> None:
    with pytest.raises(ConfigurationError):
        SandboxProvider("sandbox", {"webhook_secret": secret})


def test_our_deliveries_verify_with_the_standardwebhooks_package_and_its_verify_with_ours() -> None:
    """Wire-compatible both ways with the reference implementation (on the real clock, which is
    the only one the package's own verify knows)."""
    from standardwebhooks import Webhook

    body = b'{"type":"charge.succeeded","data":{"amount":1000}}'
    assert Webhook(SECRET).verify(body, standard_webhooks.sign(SECRET, "evt_1", body)) == json.loads(body)
    now = clock.now()
    theirs = {"webhook-id": "evt_2", "webhook-timestamp": str(int(now.timestamp())),
              "webhook-signature": Webhook(SECRET).sign("evt_2", now, body.decode())}
    assert standard_webhooks.verify(SECRET, body, theirs) == "evt_2"


def test_a_body_that_is_not_utf8_is_refused() -> None:
    body = b'{"name": "\xff"}'
    with pytest.raises(WebhookSignatureInvalid):
        standard_webhooks.verify(SECRET, body, standard_webhooks.sign(SECRET, "evt_1", b"{}"))
