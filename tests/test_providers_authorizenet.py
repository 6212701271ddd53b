"""The Authorize.net adapter against a stateful fake of its JSON API (tests/authorizenet_fake.py):
charges, declines, capture, void, refund and the void rule, safe retries without an idempotency
key, saved profiles, and webhooks signed with X-ANET-Signature, through Billfold's own endpoint."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit.ids import new_id
from billfold.kit.money import Money
from billfold.models import PaymentWebhook
from billfold.providers import base, registry
from billfold.providers.authorizenet import AuthorizeNetProvider, opaque_data, opaque_token, short_reference, sign_webhook
from billfold.providers.base import ChargeStatus, ProviderAdapter, RefundStatus
from billfold.providers.errors import (
    Declined,
    DeclineCode,
    InvalidProviderRequest,
    ProviderObjectNotFound,
    ProviderUnavailable,
    WebhookSignatureInvalid,
)
from tests.accounts import Api
from tests.authorizenet_fake import AuthorizeNetFake, running
from tests.server import free_port
from tests.test_checkout import customer, order, product
from tests.test_organizations import assert_problem, person

LOGIN = "fake-login-4Xc9"
TRANSACTION_KEY = "tk-9f8e7d6c5b4a3210"
SIGNATURE_KEY = "5B7C0A3E9F1D2C4B6A8E0F1D3C5B7A9E" * 4  # 128 hex characters, as the Merchant Interface shows it
USD = "USD"


@pytest.fixture(scope="module")
def fake() -> Iterator[AuthorizeNetFake]:
    with running(LOGIN, TRANSACTION_KEY, SIGNATURE_KEY, stall_seconds=1.2) as served:
        yield served


def config(fake: AuthorizeNetFake, **more: Any) -> dict[str, Any]:
    return {"api_login_id": LOGIN, "transaction_key": TRANSACTION_KEY, "signature_key": SIGNATURE_KEY,
            "api_base": fake.api_base, "timeout_seconds": 0.5, **more}


@pytest.fixture
def anet(fake: AuthorizeNetFake) -> Iterator[AuthorizeNetProvider]:
    adapter = AuthorizeNetProvider("anet", config(fake))
    yield adapter
    adapter.close()


def key() -> str:
    return f"billfold-{new_id('pay')}-charge"


def usd(cents: int) -> Money:
    return Money(cents, USD)


def settle(fake: AuthorizeNetFake) -> None:
    assert httpx.post(fake.url + "/_fake/settle").status_code == 200


def made_with(fake: AuthorizeNetFake, idempotency_key: str) -> list[dict[str, Any]]:
    """The transactions the fake holds for this key (its invoice number)."""
    return [t for t in fake.transactions.values() if t["order"]["invoiceNumber"] == short_reference(idempotency_key)]


# ---- construction and shapes -------------------------------------------------------------


def test_the_kind_is_built_in_and_builds_without_a_network_call(fake: AuthorizeNetFake) -> None:
    before = len(fake.requests)
    adapter = registry.adapter_for("anet_us", {"kind": "authorizenet", **config(fake)})
    assert isinstance(adapter, AuthorizeNetProvider) and isinstance(adapter, ProviderAdapter)
    assert not adapter.capabilities.creates_before_charging and adapter.capabilities.currencies == {USD}
    assert adapter.capabilities.webhook_events <= base.EVENT_TYPES
    assert adapter.timeout.connect == 0.5 and adapter.timeout.read == 0.5
    assert len(fake.requests) == before


def test_a_config_without_its_secrets_is_refused_clearly(fake: AuthorizeNetFake) -> None:
    for missing in ("signature_key", "transaction_key", "api_login_id"):
        with pytest.raises(ValueError, match=missing):
            AuthorizeNetProvider("anet", {k: v for k, v in config(fake).items() if k != missing})
    for insecure in ("http://gateway.example/xml/v1/request.api", "http://127.0.0.1.example/xml/v1/request.api",
                     "ftp://127.0.0.1/", "not a url"):
        with pytest.raises(ValueError, match="https|URL"):
            AuthorizeNetProvider("anet", config(fake, api_base=insecure))


ACCEPT_JS_VALUE = (  # the shape of a real Accept.js dataValue: base64 of {"code":…,"token":…,"v":"1.1"}, 236 characters
    "eyJjb2RlIjoiNTBfMl8wNjAwMDUyN0JEODE4RjQxOUEyRjhGQkIxMkY0MzdGQjAxQUIwRTY2NjhFNEFCN0VENzE4NTUwMjlGRUU0M0JG"
    "NENDQjcxN0RDRDMzREQ0MDIzMDBBNkJDMTMxN0IzOTQ0NkJBQ0NDMzBGODA2NzY5MTk5MTMxRERBODMyNTI2IiwidG9rZW4iOiI5NDkw"
    "MjMyMTAy+/k5OTk0MDQ2MDMiLCJ2IjoiMS4xIn0="
)


def test_the_token_takes_accept_js_opaque_data_and_never_a_card_number(anet: AuthorizeNetProvider) -> None:
    accepts = anet.capabilities.accepts_token
    compact = opaque_token(ACCEPT_JS_VALUE)
    assert re.fullmatch(r"[A-Za-z0-9_]{1,255}", compact), "fits Billfold's checkout and payment-method token fields"
    assert accepts(compact) and opaque_data(compact) == ("COMMON.ACCEPT.INAPP.PAYMENT", ACCEPT_JS_VALUE)
    apple = opaque_token("eyJ2ZXJzaW9uIjoiRUNfdjEi+/==", "COMMON.APPLE.INAPP.PAYMENT")
    assert accepts(apple) and opaque_data(apple) == ("COMMON.APPLE.INAPP.PAYMENT", "eyJ2ZXJzaW9uIjoiRUNfdjEi+/==")
    for wrong in ("4111111111111111", "4111 1111 1111 1111", "anet_", "anet_opaque:COMMON.ACCEPT.INAPP.PAYMENT:",
                  "tok_visa", "anet_opaque:X:approve", "anet_a_b", "anet_a+b", "pm_anet_approve"):
        assert not accepts(wrong), wrong


# ---- charges -----------------------------------------------------------------------------


def test_auth_capture_succeeds_with_our_references_and_is_read_back(anet: AuthorizeNetProvider, fake: AuthorizeNetFake) -> None:
    k = key()
    charge = anet.charge(amount=usd(1250), token=opaque_token("approve"), idempotency_key=k, description="Order 17",
                         metadata={"payment_id": "pay_17", "order_id": "ord_17"})
    assert charge.status is ChargeStatus.SUCCEEDED and charge.provider_status == "capturedPendingSettlement"
    # our ids travel as merchant-defined userFields, so the transaction names our payment when listed
    assert charge.metadata == {"payment_id": "pay_17", "order_id": "ord_17", "invoice_number": short_reference(k)}
    assert charge.amount == charge.amount_captured == usd(1250) and charge.amount_refunded == usd(0)
    [made] = made_with(fake, k)
    assert charge.id == made["transId"] and len(short_reference(k)) == 20
    assert made["authAmount"] == made["settleAmount"] and str(made["authAmount"]) == "12.50"
    assert anet.get_charge(charge.id) == charge
    assert anet.find_charge(idempotency_key=k) == charge
    assert anet.find_charge(idempotency_key=key()) is None
    with pytest.raises(ProviderObjectNotFound):
        anet.get_charge("99999999999")


@pytest.mark.parametrize(("reason", "expected"), [
    (2, DeclineCode.GENERIC_DECLINE), (3, DeclineCode.GENERIC_DECLINE), (4, DeclineCode.LOST_CARD),
    (8, DeclineCode.EXPIRED_CARD), (44, DeclineCode.INCORRECT_CVC), (65, DeclineCode.INCORRECT_CVC),
])
def test_a_decline_raises_declined_with_the_reason_mapped(
    anet: AuthorizeNetProvider, fake: AuthorizeNetFake, reason: int, expected: DeclineCode
) -> None:
    k = key()
    with pytest.raises(Declined) as declined:
        anet.charge(amount=usd(900), token=opaque_token(f"decline{reason}"), idempotency_key=k)
    assert declined.value.decline_code is expected
    assert declined.value.hard == (expected in (DeclineCode.LOST_CARD, DeclineCode.EXPIRED_CARD, DeclineCode.INCORRECT_CVC))
    failed = declined.value.charge
    assert failed is not None and failed.status is ChargeStatus.FAILED and failed.provider_status == "declined"
    assert failed.failure_code == str(expected) and failed.amount_captured == usd(0)
    assert anet.find_charge(idempotency_key=k) == failed  # the decline is the key's outcome, found again
    assert len(made_with(fake, k)) == 1


def test_the_fakes_decline_hook_and_a_held_charge(anet: AuthorizeNetProvider, fake: AuthorizeNetFake) -> None:
    httpx.post(fake.url + "/_fake/decline", json={"reason": 45})
    with pytest.raises(Declined) as declined:
        anet.charge(amount=usd(300), token=opaque_token("approve"), idempotency_key=key())
    assert declined.value.decline_code is DeclineCode.INCORRECT_CVC
    held = anet.charge(amount=usd(300), token=opaque_token("review"), idempotency_key=key())
    assert held.status is ChargeStatus.PROCESSING and held.provider_status == "FDSPendingReview"


def test_authorize_then_capture_part_and_a_second_capture_answers_the_first(anet: AuthorizeNetProvider) -> None:
    authorized = anet.charge(amount=usd(5000), token=opaque_token("approve"), idempotency_key=key(), capture=False)
    assert authorized.status is ChargeStatus.AUTHORIZED and authorized.amount_captured == usd(0)
    with pytest.raises(InvalidProviderRequest) as too_much:
        anet.capture(charge_id=authorized.id, idempotency_key="cap-1", amount=usd(5001))
    assert too_much.value.code == "capture_exceeds_authorized"
    captured = anet.capture(charge_id=authorized.id, idempotency_key="cap-1", amount=usd(3500))
    assert captured.id == authorized.id and captured.status is ChargeStatus.SUCCEEDED
    assert captured.amount == usd(5000) and captured.amount_captured == usd(3500)
    assert anet.capture(charge_id=authorized.id, idempotency_key="cap-1", amount=usd(3500)) == captured


def test_void_of_an_authorization_and_again(anet: AuthorizeNetProvider) -> None:
    authorized = anet.charge(amount=usd(2000), token=opaque_token("approve"), idempotency_key=key(), capture=False)
    canceled = anet.cancel(charge_id=authorized.id, idempotency_key="void-1")
    assert canceled.status is ChargeStatus.CANCELED and canceled.provider_status == "voided"
    assert anet.cancel(charge_id=authorized.id, idempotency_key="void-1") == canceled
    with pytest.raises(InvalidProviderRequest) as refused:
        anet.capture(charge_id=authorized.id, idempotency_key="cap-2")
    assert refused.value.code == "charge_not_capturable"


# ---- refunds -----------------------------------------------------------------------------


def test_refunds_of_a_settled_charge_partial_then_the_rest_and_never_more(
    anet: AuthorizeNetProvider, fake: AuthorizeNetFake
) -> None:
    charge = anet.charge(amount=usd(10000), token=opaque_token("approve"), idempotency_key=key())
    settle(fake)
    first = anet.refund(charge_id=charge.id, idempotency_key="ref-a-" + charge.id, amount=usd(3000), reason="damaged",
                        metadata={"refund_id": "ref_1"})
    assert first.charge_id == charge.id and first.id != charge.id and first.amount == usd(3000)
    assert first.metadata["refund_id"] == "ref_1" and [r.metadata.get("refund_id") for r in anet.list_refunds() if r.id == first.id] == ["ref_1"]
    assert first.status is RefundStatus.SUCCEEDED and first.provider_status == "refundPendingSettlement"
    assert fake.transactions[first.id]["transactionType"] == "refundTransaction"
    assert fake.transactions[first.id]["refTransId"] == charge.id
    # The same key again: the refund already made is the answer, nothing new at the gateway.
    assert anet.refund(charge_id=charge.id, idempotency_key="ref-a-" + charge.id, amount=usd(3000)) == first
    with pytest.raises(InvalidProviderRequest) as over:
        anet.refund(charge_id=charge.id, idempotency_key="ref-b-" + charge.id, amount=usd(7001))
    assert over.value.code == "refund_exceeds_captured"
    rest = anet.refund(charge_id=charge.id, idempotency_key="ref-c-" + charge.id)
    assert rest.amount == usd(7000)
    assert anet.get_charge(charge.id).amount_refunded == usd(10000)
    assert anet.get_refund(rest.id) == rest
    with pytest.raises(InvalidProviderRequest) as none_left:
        anet.refund(charge_id=charge.id, idempotency_key="ref-d-" + charge.id, amount=usd(1))
    assert none_left.value.code == "charge_already_refunded"
    assert [r.id for r in anet.list_refunds() if r.charge_id == charge.id] == [first.id, rest.id]
    assert len([t for t in fake.transactions.values() if t.get("refTransId") == charge.id]) == 2


def test_an_unsettled_charge_is_voided_in_full_and_a_part_of_it_is_refused(anet: AuthorizeNetProvider) -> None:
    charge = anet.charge(amount=usd(4200), token=opaque_token("approve"), idempotency_key=key())
    with pytest.raises(InvalidProviderRequest) as partial:
        anet.refund(charge_id=charge.id, idempotency_key="part-" + charge.id, amount=usd(1000))
    assert partial.value.code == "charge_not_refundable_yet"
    voided = anet.refund(charge_id=charge.id, idempotency_key="all-" + charge.id)
    assert voided.id == f"void-{charge.id}" and voided.charge_id == charge.id and voided.amount == usd(4200)
    assert voided.status is RefundStatus.SUCCEEDED and voided.provider_status == "voided"
    assert anet.get_charge(charge.id).status is ChargeStatus.CANCELED
    assert anet.refund(charge_id=charge.id, idempotency_key="all-" + charge.id).id == voided.id
    assert anet.get_refund(voided.id).id == voided.id


# ---- safe retries without an idempotency key ---------------------------------------------


def test_a_timeout_is_unknown_then_the_charge_is_found_and_a_retry_never_charges_twice(
    anet: AuthorizeNetProvider, fake: AuthorizeNetFake
) -> None:
    k = key()
    httpx.post(fake.url + "/_fake/fail", json={"mode": "timeout", "when": "after"})
    with pytest.raises(ProviderUnavailable) as unknown:
        anet.charge(amount=usd(1999), token=opaque_token("approve"), idempotency_key=k)
    assert unknown.value.sent is True
    found = anet.find_charge(idempotency_key=k)
    assert found is not None and found.status is ChargeStatus.SUCCEEDED and found.amount == usd(1999)
    # The same adapter asks before sending again; another (another process) meets the duplicate window.
    assert anet.charge(amount=usd(1999), token=opaque_token("approve"), idempotency_key=k) == found
    other = AuthorizeNetProvider("anet", config(fake))
    assert other.charge(amount=usd(1999), token=opaque_token("approve"), idempotency_key=k) == found
    assert [t["transId"] for t in made_with(fake, k)] == [found.id]


def test_a_5xx_or_a_timeout_before_the_work_is_unknown_and_nothing_was_made(
    anet: AuthorizeNetProvider, fake: AuthorizeNetFake
) -> None:
    k = key()
    httpx.post(fake.url + "/_fake/fail", json={"mode": "500", "when": "before"})
    with pytest.raises(ProviderUnavailable) as unknown:
        anet.charge(amount=usd(700), token=opaque_token("approve"), idempotency_key=k)
    assert unknown.value.sent is True and unknown.value.status == 503
    assert anet.find_charge(idempotency_key=k) is None
    charge = anet.charge(amount=usd(700), token=opaque_token("approve"), idempotency_key=k)
    assert [t["transId"] for t in made_with(fake, k)] == [charge.id]


def test_a_refused_connection_was_certainly_not_sent(fake: AuthorizeNetFake) -> None:
    closed = AuthorizeNetProvider("anet", config(fake, api_base=f"http://127.0.0.1:{free_port()}/xml/v1/request.api"))
    with pytest.raises(ProviderUnavailable) as unreachable:
        closed.charge(amount=usd(100), token=opaque_token("approve"), idempotency_key=key())
    assert unreachable.value.sent is False


def test_the_duplicate_window_answers_the_first_charge(anet: AuthorizeNetProvider, fake: AuthorizeNetFake) -> None:
    k = key()
    first = anet.charge(amount=usd(2500), token=opaque_token("approve"), idempotency_key=k, capture=False)
    again = AuthorizeNetProvider("anet", config(fake)).charge(
        amount=usd(2500), token=opaque_token("approve"), idempotency_key=k, capture=False)
    assert again == first and len(made_with(fake, k)) == 1
    # Outside the window (0 s here) the gateway would take a second charge: our lookup is what protects.
    windowless = AuthorizeNetProvider("anet", config(fake, duplicate_window=0))
    other_key = key()
    windowless.charge(amount=usd(100), token=opaque_token("approve"), idempotency_key=other_key)
    windowless.charge(amount=usd(100), token=opaque_token("approve"), idempotency_key=other_key)
    assert len(made_with(fake, other_key)) == 2, "documented: a retry must ask find_charge first"


# ---- customers and saved methods ---------------------------------------------------------


def test_a_customer_a_saved_card_an_off_session_charge_and_detach(anet: AuthorizeNetProvider) -> None:
    customer_key = f"customer-{new_id('usr')}"
    customer = anet.create_customer(email="ada@shop.example", name="Ada", idempotency_key=customer_key)
    assert customer.id.isdigit()
    assert anet.create_customer(email="ada@shop.example", name="Ada", idempotency_key=customer_key).id == customer.id
    attach_key = f"payment-method-{new_id('pm')}-attach"
    method = anet.attach_payment_method(customer_id=customer.id, token=opaque_token("approvemc"), idempotency_key=attach_key)
    assert method.customer_id == customer.id and method.id.startswith(customer.id + "-")
    assert (method.brand, method.last4, method.exp_month, method.exp_year) == ("mastercard", "4444", 12, 2031)
    assert anet.attach_payment_method(customer_id=customer.id, token=opaque_token("approvemc"),
                                      idempotency_key=attach_key).id == method.id
    charge = anet.charge(amount=usd(1500), customer_id=customer.id, payment_method_id=method.id, off_session=True,
                         idempotency_key=key())
    assert charge.status is ChargeStatus.SUCCEEDED and charge.off_session
    assert (charge.customer_id, charge.payment_method_id) == (customer.id, method.id)
    with pytest.raises(InvalidProviderRequest) as needs_saved:
        anet.charge(amount=usd(1500), token=opaque_token("approve"), off_session=True, idempotency_key=key())
    assert needs_saved.value.code == "off_session_needs_saved_method"
    detached = anet.detach_payment_method(payment_method_id=method.id, idempotency_key="detach-1")
    assert detached.detached and detached.id == method.id and detached.last4 == "4444"
    assert anet.detach_payment_method(payment_method_id=method.id, idempotency_key="detach-1").detached
    with pytest.raises(ProviderObjectNotFound):
        anet.charge(amount=usd(1500), payment_method_id=method.id, off_session=True, idempotency_key=key())


# ---- errors and secrets ------------------------------------------------------------------


def test_rejected_credentials_say_so_without_any_secret(fake: AuthorizeNetFake) -> None:
    wrong = AuthorizeNetProvider("anet", config(fake, transaction_key="tk-wrong-0123456789abcdef"))
    with pytest.raises(InvalidProviderRequest) as rejected:
        wrong.charge(amount=usd(100), token=opaque_token("approve"), idempotency_key=key())
    assert rejected.value.code == "provider_credentials_rejected"
    text = json.dumps(rejected.value.to_problem()) + str(rejected.value)
    for secret in ("tk-wrong-0123456789abcdef", TRANSACTION_KEY, SIGNATURE_KEY, LOGIN):
        assert secret not in text
    with pytest.raises(ValueError) as refused:
        AuthorizeNetProvider("anet", {"api_login_id": LOGIN, "transaction_key": TRANSACTION_KEY})
    assert TRANSACTION_KEY not in str(refused.value)


# ---- webhooks ----------------------------------------------------------------------------


def notification(event_type: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"notificationId": new_id("ntf"), "eventType": event_type,
                       "eventDate": "2026-12-07T03:16:16.1234567Z", "webhookId": "wh-1", "payload": payload}).encode()


@pytest.mark.parametrize(("event_type", "ours", "object_type", "object_id"), [
    ("net.authorize.payment.authcapture.created", "charge.succeeded", "charge", "60012"),
    ("net.authorize.payment.authorization.created", "charge.authorized", "charge", "60012"),
    ("net.authorize.payment.priorAuthCapture.created", "charge.succeeded", "charge", "60012"),
    ("net.authorize.payment.refund.created", "refund.succeeded", "refund", "60012"),
    ("net.authorize.payment.void.created", "charge.canceled", "charge", "60012"),
    ("net.authorize.payment.fraud.held", "charge.processing", "charge", "60012"),
    ("net.authorize.payment.fraud.declined", "charge.failed", "charge", "60012"),
    ("net.authorize.customer.paymentProfile.deleted", "payment_method.detached", "payment_method", "394-60012"),
    ("net.authorize.customer.subscription.suspended", "net.authorize.customer.subscription.suspended",
     "subscription", "60012"),
])
def test_a_signed_notification_is_verified_and_normalised(
    anet: AuthorizeNetProvider, event_type: str, ours: str, object_type: str, object_id: str
) -> None:
    entity = {"charge": "transaction", "refund": "transaction", "payment_method": "customerPaymentProfile",
              "subscription": "subscription"}[object_type]
    body = notification(event_type, {"entityName": entity, "id": "60012", "customerProfileId": 394, "authAmount": 12.5})
    event = anet.verify_webhook(body, {"X-ANET-Signature": sign_webhook(body, SIGNATURE_KEY)})
    assert (event.id, event.type, event.object_type, event.object_id) == (
        json.loads(body)["notificationId"], ours, object_type, object_id)
    assert event.created.isoformat() == "2026-12-07T03:16:16.123456+00:00"


def test_a_tampered_unsigned_or_other_key_notification_is_refused(anet: AuthorizeNetProvider) -> None:
    body = notification("net.authorize.payment.authcapture.created", {"entityName": "transaction", "id": "60012"})
    good = sign_webhook(body, SIGNATURE_KEY)
    assert anet.verify_webhook(body, {"x-anet-signature": good.lower()}).type == "charge.succeeded"
    refused = [
        (body.replace(b"60012", b"60013"), {"X-ANET-Signature": good}),
        (body, {}),
        (body, {"X-ANET-Signature": sign_webhook(body, "another key")}),
        (body, {"X-ANET-Signature": sign_webhook(body, SIGNATURE_KEY, "hex")}),  # the key's other reading
        (body, {"X-ANET-Signature": good.replace("sha512=", "sha256=")}),
    ]
    for tampered, headers in refused:
        with pytest.raises(WebhookSignatureInvalid) as invalid:
            anet.verify_webhook(tampered, headers)
        assert SIGNATURE_KEY not in str(invalid.value.to_problem())


def test_the_hex_reading_of_the_key_when_configured(fake: AuthorizeNetFake) -> None:
    hexed = AuthorizeNetProvider("anet", config(fake, signature_key_encoding="hex"))
    body = notification("net.authorize.payment.void.created", {"entityName": "transaction", "id": "7"})
    assert hexed.verify_webhook(body, {"X-ANET-Signature": sign_webhook(body, SIGNATURE_KEY, "hex")}).object_id == "7"
    with pytest.raises(WebhookSignatureInvalid):
        hexed.verify_webhook(body, {"X-ANET-Signature": sign_webhook(body, SIGNATURE_KEY)})


def stored(engine: Engine, provider_id: str) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(
            sa.select(PaymentWebhook.__table__).where(PaymentWebhook.provider_id == provider_id)
        ).all())


def test_the_fakes_webhooks_reach_billfold_signed_and_a_tampered_one_stores_nothing(
    api: Api, engine: Engine, admin_token: str, fake: AuthorizeNetFake, anet: AuthorizeNetProvider
) -> None:
    provider_id = "anet_" + new_id("x")[-10:].lower()
    with api.client(admin_token) as admin:
        without_key = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": "authorizenet", "display_name": "Authorize.net",
            "config": {k: v for k, v in config(fake).items() if k != "signature_key"},
        })
        made = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": "authorizenet", "display_name": "Authorize.net", "config": config(fake),
        })
        shown = admin.get(f"/v1/payment-providers/{provider_id}")
    assert_problem(without_key, 422, "invalid_provider_config")
    assert "signature_key" in without_key.text and TRANSACTION_KEY not in without_key.text
    assert made.status_code == 201, made.text
    for answer in (made, shown):
        assert TRANSACTION_KEY not in answer.text and SIGNATURE_KEY not in answer.text
    charge = anet.charge(amount=usd(4321), token=opaque_token("approve"), idempotency_key=key())
    [event] = [e for e in json.loads(httpx.get(fake.url + "/_fake/events").content)["events"]
               if e["payload"].get("id") == charge.id]
    url = f"{api.url}/v1/webhooks/{provider_id}"
    delivered = httpx.post(fake.url + "/_fake/deliver", json={"url": url, "notificationId": event["notificationId"]}).json()
    again = httpx.post(fake.url + "/_fake/deliver", json={"url": url, "notificationId": event["notificationId"]}).json()
    assert delivered["status"] == 200, delivered
    assert json.loads(delivered["body"])["duplicate"] is False and json.loads(again["body"])["duplicate"] is True
    [row] = stored(engine, provider_id)
    assert row.provider_event_id == event["notificationId"] and row.event_type == "charge.succeeded"

    body = json.dumps(event).encode()
    with api.client() as client:
        tampered = client.post(f"/v1/webhooks/{provider_id}", content=body.replace(b"43.21", b"0.01"),
                               headers={"X-ANET-Signature": sign_webhook(body, SIGNATURE_KEY),
                                        "content-type": "application/json"})
        other_key = client.post(f"/v1/webhooks/{provider_id}", content=body,
                                headers={"X-ANET-Signature": sign_webhook(body, "not the key"),
                                         "content-type": "application/json"})
    for answer in (tampered, other_key):
        assert_problem(answer, 400, "webhook_signature_invalid")
        assert SIGNATURE_KEY not in answer.text
    assert len(stored(engine, provider_id)) == 1


def test_a_customer_saves_an_accept_js_card_through_billfold_and_deletes_it(
    api: Api, engine: Engine, admin_token: str, fake: AuthorizeNetFake
) -> None:
    provider_id = "anet_" + new_id("x")[-10:].lower()
    with api.client(admin_token) as admin:
        made = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": "authorizenet", "display_name": "Authorize.net", "config": config(fake),
        })
    assert made.status_code == 201, made.text
    me = person(engine, "payer")
    with api.client(me.token) as client:
        saved = client.post("/v1/me/payment-methods", json={"provider_id": provider_id,
                                                            "token": opaque_token("approvemc")})
        card_number = client.post("/v1/me/payment-methods", json={"provider_id": provider_id,
                                                                  "token": "5555555555554444"})
        assert saved.status_code == 201, saved.text
        method = saved.json()
        customer_id, profile_id = method["provider_payment_method_id"].split("-")
        assert (method["card_brand"], method["last_four"], method["expiry_month"], method["expiry_year"]) == (
            "mastercard", "4444", "12", "2031")
        assert profile_id in fake.customers[customer_id]["payment_profiles"]
        assert client.delete(f"/v1/me/payment-methods/{method['id']}").status_code == 204
    assert card_number.status_code == 422 and "5555555555554444" not in card_number.text
    assert fake.customers[customer_id]["payment_profiles"] == {}


def test_an_order_paid_through_billfold_survives_a_timeout_with_one_charge_and_is_refunded_by_a_void(
    api: Api, engine: Engine, admin_token: str, fake: AuthorizeNetFake
) -> None:
    provider_id = "anet_" + new_id("x")[-10:].lower()
    with api.client(admin_token) as admin:
        made = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": "authorizenet", "display_name": "Authorize.net", "config": config(fake),
        })
    assert made.status_code == 201, made.text
    ada = customer(api, engine)
    pending = order(api, ada.token, (product(engine, 2500, "USD"), 1))
    body = {"token": opaque_token("approve"), "provider_id": provider_id}
    with api.client(ada.token) as client:
        httpx.post(fake.url + "/_fake/fail", json={"mode": "timeout", "when": "after"})
        assert_problem(client.post(f"/v1/orders/{pending['id']}/checkout", json=body), 503, "provider_unavailable")
        [payment] = client.get(f"/v1/orders/{pending['id']}").json()["payments"]
        assert payment["status"] == "pending"
        retried = client.post(f"/v1/orders/{pending['id']}/checkout", json=body)
    assert retried.status_code == 200, retried.text
    paid = retried.json()
    assert paid["order"]["status"] == "paid" and paid["payment"]["id"] == payment["id"]
    [made_charge] = made_with(fake, f"billfold-{payment['id']}-charge")
    assert paid["payment"]["provider_payment_id"] == made_charge["transId"]
    with api.client(admin_token) as admin:
        refunded = admin.post(f"/v1/payments/{payment['id']}/refunds", json={})
    assert refunded.status_code == 201, refunded.text
    assert fake.transactions[made_charge["transId"]]["transactionStatus"] == "voided"
