"""The PayPal adapter against a stateful PayPal fake that holds every request and answer to
PayPal's OpenAPI documents (tests/paypal_fake.py): orders approved by the buyer and captured once,
authorizations captured or voided, refunds, the vault, timeouts settled without a second capture,
and webhooks verified by PayPal, also through Billfold's own webhook endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.errors import ConfigurationError
from billfold.kit.ids import new_id
from billfold.kit.money import Money
from billfold.models import PaymentWebhook
from billfold.providers import registry
from billfold.providers.base import (
    ChargeStatus,
    CreatesBeforeCharging,
    DisputeStatus,
    ProviderAdapter,
    ReadsDisputes,
    RefundStatus,
)
from billfold.providers.errors import (
    Declined,
    InvalidProviderRequest,
    ProviderObjectNotFound,
    ProviderUnavailable,
    WebhookSignatureInvalid,
)
from billfold.providers.paypal import PayPalProvider
from billfold.providers.paypal.provider import normalise_event, paypal_value
from tests.accounts import Api
from tests.paypal_fake import Buyer, PayPalFake, serving
from tests.server import free_port
from tests.test_organizations import assert_problem

CLIENT_ID = "AbFakeClientId0123"
CLIENT_SECRET = "EKfake-client-secret-never-shown-0123456789"
WEBHOOK_ID = "1JE4291016473214C"


@pytest.fixture(scope="session")
def paypal_server() -> Iterator[PayPalFake]:
    fake = PayPalFake(CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID, hang_seconds=1.6)
    with serving(fake):
        yield fake


@pytest.fixture
def paypal(paypal_server: PayPalFake) -> Iterator[PayPalFake]:
    """The fake, emptied; after the test, no request or answer may have broken PayPal's contract."""
    paypal_server.reset()
    yield paypal_server
    assert paypal_server.state.violations == []


@pytest.fixture
def buyer(paypal: PayPalFake) -> Iterator[Buyer]:
    hooks = Buyer(paypal)
    yield hooks
    hooks.http.close()


def make_adapter(fake: PayPalFake, **config: object) -> PayPalProvider:
    return PayPalProvider("paypal_test", {
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "webhook_id": WEBHOOK_ID,
        "api_base": fake.url, "timeout_seconds": 10, **config,
    })


@pytest.fixture
def adapter(paypal: PayPalFake) -> Iterator[PayPalProvider]:
    made = make_adapter(paypal)
    yield made
    made.close()


def approved_order(adapter: PayPalProvider, buyer: Buyer, amount: Money, *, capture: bool = True) -> str:
    created = adapter.create_charge(amount=amount, idempotency_key=new_id("k"), capture=capture,
                                    metadata={"payment_id": "pay_test"})
    buyer.approve(created.id)
    return created.id


def saved_method(adapter: PayPalProvider, buyer: Buyer) -> str:
    method = adapter.attach_payment_method(customer_id="bfcustomer01", token=buyer.setup_token(), idempotency_key=new_id("k"))
    return method.id


# ---- construction and OAuth2 ---------------------------------------------------------------------


def test_the_registry_builds_it_and_it_speaks_the_protocol_without_calling_paypal(paypal: PayPalFake) -> None:
    made = registry.adapter_for("pp", {"kind": "paypal", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                                      "webhook_id": WEBHOOK_ID, "api_base": paypal.url})
    assert isinstance(made, PayPalProvider) and isinstance(made, ProviderAdapter) and isinstance(made, CreatesBeforeCharging)
    assert isinstance(made, ReadsDisputes) and made.capabilities.disputes
    assert made.capabilities.creates_before_charging and made.capabilities.saved_methods
    assert made.timeout.connect is not None and made.timeout.read is not None
    assert paypal.state.token_requests == 0 and paypal.state.calls == []


@pytest.mark.parametrize("missing", ["client_id", "client_secret", "webhook_id"])
def test_a_config_without_credentials_or_webhook_id_is_refused_without_showing_the_secret(missing: str) -> None:
    config = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "webhook_id": WEBHOOK_ID}
    del config[missing]
    with pytest.raises(ConfigurationError) as refused:
        PayPalProvider("pp", config)
    assert missing in str(refused.value) and CLIENT_SECRET not in str(refused.value)


def test_the_token_is_fetched_once_cached_and_renewed_when_it_expires(
    adapter: PayPalProvider, paypal: PayPalFake, buyer: Buyer, frozen_clock: clock.FrozenClock
) -> None:
    order_id = approved_order(adapter, buyer, Money(1000, "USD"))
    for _ in range(3):
        adapter.get_charge(order_id)
    assert paypal.state.token_requests == 1
    frozen_clock.advance(timedelta(hours=9))
    adapter.get_charge(order_id)
    assert paypal.state.token_requests == 2


def test_a_revoked_token_is_renewed_once_and_the_call_goes_through(
    adapter: PayPalProvider, paypal: PayPalFake, buyer: Buyer
) -> None:
    order_id = approved_order(adapter, buyer, Money(1000, "USD"))
    buyer.revoke_tokens()
    assert adapter.get_charge(order_id).status == ChargeStatus.CREATED
    assert paypal.state.token_requests == 2


def test_a_token_refused_again_after_renewal_is_rejected_credentials(
    adapter: PayPalProvider, paypal: PayPalFake, buyer: Buyer
) -> None:
    order_id = approved_order(adapter, buyer, Money(1000, "USD"))
    buyer.revoke_tokens(for_good=True)
    with pytest.raises(InvalidProviderRequest) as refused:
        adapter.get_charge(order_id)
    assert refused.value.code == "provider_credentials_rejected" and paypal.state.token_requests == 2
    assert CLIENT_SECRET not in json.dumps(refused.value.to_problem())


def test_rejected_credentials_are_an_invalid_request_that_never_shows_the_secret(paypal: PayPalFake) -> None:
    wrong = make_adapter(paypal, client_secret="EKwrong-secret-that-must-stay-hidden")
    with pytest.raises(InvalidProviderRequest) as refused:
        wrong.get_charge("5O190127TN364715T")
    assert refused.value.code == "provider_credentials_rejected"
    shown = json.dumps(refused.value.to_problem()) + str(refused.value)
    assert "EKwrong-secret" not in shown and CLIENT_ID not in shown
    wrong.close()


def test_the_fake_refuses_and_records_whatever_breaks_paypals_contract(paypal: PayPalFake, adapter: PayPalProvider) -> None:
    """The guard itself: a request off PayPal's documents is answered 500 and recorded (and the
    fixture fails any test that leaves a record)."""
    token = adapter._access_token()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=paypal.url, headers=headers) as client:
        as_number = client.post("/v2/checkout/orders", json={
            "intent": "CAPTURE", "purchase_units": [{"amount": {"currency_code": "USD", "value": 10}}]})
        long_key = client.post("/v2/checkout/orders", headers={"PayPal-Request-Id": "k" * 109}, json={
            "intent": "CAPTURE", "purchase_units": [{"amount": {"currency_code": "USD", "value": "10.00"}}]})
        no_intent = client.post("/v2/checkout/orders", json={"purchase_units": [{"amount": {"currency_code": "USD", "value": "1.00"}}]})
    assert [a.status_code for a in (as_number, long_key, no_intent)] == [500, 500, 500]
    assert len(paypal.state.violations) == 3 and "PayPal-Request-Id" in paypal.state.violations[1]
    assert paypal.state.orders == {}
    paypal.state.violations.clear()


# ---- orders ----------------------------------------------------------------------------------------


def test_an_order_approved_by_the_buyer_is_captured_once(adapter: PayPalProvider, paypal: PayPalFake, buyer: Buyer) -> None:
    created = adapter.create_charge(amount=Money(2599, "EUR"), idempotency_key=new_id("k"),
                                    description="Order 1001", metadata={"payment_id": "pay_abc", "invoice_id": "INV-1"})
    assert created.status == ChargeStatus.REQUIRES_ACTION
    assert created.next_action == {"type": "redirect_to_url", "url": f"{paypal.url}/checkoutnow?token={created.id}"}
    unit = paypal.state.orders[created.id].order["purchase_units"][0]
    assert unit["amount"] == {"currency_code": "EUR", "value": "25.99"}
    assert unit["custom_id"] == "pay_abc" and unit["invoice_id"] == "INV-1"

    waiting = adapter.confirm(charge_id=created.id, idempotency_key=new_id("k"))
    assert waiting.status == ChargeStatus.REQUIRES_ACTION and buyer.captured() == []

    buyer.approve(created.id)
    assert adapter.get_charge(created.id).status == ChargeStatus.CREATED
    paid = adapter.confirm(charge_id=created.id, idempotency_key=new_id("k"))
    assert paid.status == ChargeStatus.SUCCEEDED and paid.amount_captured == Money(2599, "EUR")
    assert paid.metadata["paypal_capture_id"] == buyer.captured()[0]["capture_id"]
    again = adapter.confirm(charge_id=created.id, idempotency_key=new_id("k"))
    assert again.status == ChargeStatus.SUCCEEDED and len(buyer.captured()) == 1


def test_amounts_are_paypal_decimal_strings_and_whole_unit_currencies_are_respected(
    adapter: PayPalProvider, paypal: PayPalFake
) -> None:
    assert [paypal_value(Money(n, c)) for n, c in [(1, "USD"), (100000, "USD"), (500, "JPY"), (120000, "HUF")]] == \
        ["0.01", "1000.00", "500", "1200"]
    created = adapter.create_charge(amount=Money(500, "JPY"), idempotency_key=new_id("k"))
    assert paypal.state.orders[created.id].order["purchase_units"][0]["amount"]["value"] == "500"
    assert created.amount == Money(500, "JPY")
    calls = len(paypal.state.calls)
    with pytest.raises(InvalidProviderRequest):
        adapter.create_charge(amount=Money(1050, "HUF"), idempotency_key=new_id("k"))  # 10.50 HUF: PayPal takes no fraction
    assert len(paypal.state.calls) == calls


def test_a_key_longer_than_paypal_allows_is_sent_as_a_digest_and_still_replays(adapter: PayPalProvider, paypal: PayPalFake) -> None:
    key = "charge:" + "x" * 200  # PayPal-Request-Id is at most 108 characters: the contract check would refuse it
    first = adapter.create_charge(amount=Money(1200, "USD"), idempotency_key=key)
    again = adapter.create_charge(amount=Money(1200, "USD"), idempotency_key=key)
    assert again.id == first.id and len(paypal.state.orders) == 1
    assert {len(c["request_id"]) for c in paypal.state.calls if c["request_id"]} == {67}


def test_a_one_time_token_is_refused_before_any_call(adapter: PayPalProvider, paypal: PayPalFake) -> None:
    with pytest.raises(InvalidProviderRequest) as refused:
        adapter.charge(amount=Money(100, "USD"), idempotency_key=new_id("k"), token="tok_visa")
    assert "approve link" in str(refused.value) and paypal.state.calls == []


@pytest.mark.parametrize("issue, code", [("INSTRUMENT_DECLINED", "generic_decline"), ("PAYER_ACTION_REQUIRED", "authentication_required")])
def test_a_declined_buyer_is_declined_and_nothing_is_captured(
    adapter: PayPalProvider, buyer: Buyer, issue: str, code: str
) -> None:
    created = adapter.create_charge(amount=Money(1000, "USD"), idempotency_key=new_id("k"))
    buyer.approve(created.id, decline=issue)
    with pytest.raises(Declined) as declined:
        adapter.confirm(charge_id=created.id, idempotency_key=new_id("k"))
    assert declined.value.decline_code == code
    assert declined.value.charge is not None and declined.value.charge.status == ChargeStatus.FAILED
    assert declined.value.charge.id == created.id and buyer.captured() == []


def test_an_authorization_is_captured_in_full(adapter: PayPalProvider, buyer: Buyer) -> None:
    order_id = approved_order(adapter, buyer, Money(5000, "USD"), capture=False)
    held = adapter.confirm(charge_id=order_id, idempotency_key=new_id("k"))
    assert held.status == ChargeStatus.AUTHORIZED and held.capture is False and held.amount_captured == Money(0, "USD")
    captured = adapter.capture(charge_id=order_id, idempotency_key=new_id("k"))
    assert captured.status == ChargeStatus.SUCCEEDED and captured.amount_captured == Money(5000, "USD")
    assert adapter.capture(charge_id=order_id, idempotency_key=new_id("k")).amount_captured == Money(5000, "USD")
    assert len(buyer.captured()) == 1


def test_an_authorization_is_captured_in_part_and_the_rest_released(adapter: PayPalProvider, buyer: Buyer) -> None:
    order_id = approved_order(adapter, buyer, Money(5000, "USD"), capture=False)
    adapter.confirm(charge_id=order_id, idempotency_key=new_id("k"))
    captured = adapter.capture(charge_id=order_id, idempotency_key=new_id("k"), amount=Money(3000, "USD"))
    assert captured.status == ChargeStatus.SUCCEEDED and captured.amount_captured == Money(3000, "USD")
    assert [c["amount"]["value"] for c in buyer.captured()] == ["30.00"]


def test_an_authorization_is_voided(adapter: PayPalProvider, buyer: Buyer) -> None:
    order_id = approved_order(adapter, buyer, Money(5000, "USD"), capture=False)
    adapter.confirm(charge_id=order_id, idempotency_key=new_id("k"))
    voided = adapter.cancel(charge_id=order_id, idempotency_key=new_id("k"))
    assert voided.status == ChargeStatus.CANCELED and voided.amount_captured == Money(0, "USD")
    with pytest.raises(InvalidProviderRequest):
        adapter.refund(charge_id=order_id, idempotency_key=new_id("k"))
    assert buyer.captured() == []


def test_partial_and_full_refunds_and_an_over_refund_is_refused(adapter: PayPalProvider, buyer: Buyer) -> None:
    order_id = approved_order(adapter, buyer, Money(10000, "USD"))
    adapter.confirm(charge_id=order_id, idempotency_key=new_id("k"))
    part = adapter.refund(charge_id=order_id, idempotency_key=new_id("k"), amount=Money(2500, "USD"), reason="one item back",
                          metadata={"refund_id": "ref_01part"})
    assert part.charge_id == order_id and part.amount == Money(2500, "USD") and part.status == RefundStatus.SUCCEEDED
    with pytest.raises(InvalidProviderRequest) as over:
        adapter.refund(charge_id=order_id, idempotency_key=new_id("k"), amount=Money(7501, "USD"))
    assert "REFUND_AMOUNT_EXCEEDED" in str(over.value)
    rest = adapter.refund(charge_id=order_id, idempotency_key=new_id("k"))
    assert rest.amount == Money(7500, "USD")
    charge = adapter.get_charge(order_id)
    assert charge.amount_refunded == Money(10000, "USD") and charge.amount_refundable == Money(0, "USD")
    fetched = adapter.get_refund(part.id)
    assert (fetched.id, fetched.charge_id, fetched.amount, fetched.status) == (part.id, order_id, part.amount, RefundStatus.SUCCEEDED)
    assert fetched.metadata == {"refund_id": "ref_01part"}, "custom_id names our refund, read back from PayPal"
    with pytest.raises(ProviderObjectNotFound):
        adapter.get_refund("0NOSUCHREFUND00")


def test_the_same_refund_key_refunds_once(adapter: PayPalProvider, buyer: Buyer) -> None:
    order_id = approved_order(adapter, buyer, Money(4000, "USD"))
    adapter.confirm(charge_id=order_id, idempotency_key=new_id("k"))
    key = new_id("k")
    first = adapter.refund(charge_id=order_id, idempotency_key=key, amount=Money(1000, "USD"))
    again = adapter.refund(charge_id=order_id, idempotency_key=key, amount=Money(1000, "USD"))
    assert again.id == first.id and adapter.get_charge(order_id).amount_refunded == Money(1000, "USD")


def test_a_dispute_is_read_as_about_the_order_and_its_outcome_mapped(adapter: PayPalProvider, buyer: Buyer) -> None:
    order_id = approved_order(adapter, buyer, Money(3000, "USD"))
    paid = adapter.confirm(charge_id=order_id, idempotency_key=new_id("k"))
    dispute_id = buyer.dispute(paid.metadata["paypal_capture_id"])
    opened = adapter.get_dispute(dispute_id)
    assert (opened.id, opened.charge_id, opened.amount, opened.status) == (dispute_id, order_id, Money(3000, "USD"), DisputeStatus.OPEN)
    assert opened.reason == "MERCHANDISE_OR_SERVICE_NOT_RECEIVED"
    buyer.resolve(dispute_id, "RESOLVED_SELLER_FAVOUR")
    assert adapter.get_dispute(dispute_id).status == DisputeStatus.WON
    other = buyer.dispute(paid.metadata["paypal_capture_id"])
    buyer.resolve(other, "RESOLVED_BUYER_FAVOUR")
    assert adapter.get_dispute(other).status == DisputeStatus.LOST


def test_charges_and_refunds_are_listed_by_transaction_search(
    adapter: PayPalProvider, paypal: PayPalFake, buyer: Buyer, frozen_clock: clock.FrozenClock
) -> None:
    started = clock.now()
    first = approved_order(adapter, buyer, Money(1000, "USD"))
    adapter.confirm(charge_id=first, idempotency_key=new_id("k"))
    frozen_clock.advance(timedelta(days=40))  # another Transaction Search window
    second = approved_order(adapter, buyer, Money(2000, "USD"))
    adapter.confirm(charge_id=second, idempotency_key=new_id("k"))
    refund = adapter.refund(charge_id=second, idempotency_key=new_id("k"), amount=Money(500, "USD"))
    unpaid = adapter.create_charge(amount=Money(3000, "USD"), idempotency_key=new_id("k"))
    frozen_clock.advance(timedelta(seconds=1))
    charges = adapter.list_charges(started, clock.now())
    assert [c.id for c in charges] == [first, second] and unpaid.id not in {c.id for c in charges}
    assert charges[1].amount_refunded == Money(500, "USD")
    assert [(r.id, r.charge_id) for r in adapter.list_refunds(started, clock.now())] == [(refund.id, second)]
    assert [c.id for c in adapter.list_charges(started + timedelta(days=1), clock.now())] == [second]
    assert adapter.list_charges(started - timedelta(days=5), started) == []


# ---- unknown outcomes --------------------------------------------------------------------------------


def test_a_capture_that_times_out_is_settled_by_get_charge_with_one_capture(
    adapter: PayPalProvider, paypal: PayPalFake, buyer: Buyer
) -> None:
    order_id = approved_order(adapter, buyer, Money(1999, "USD"))
    impatient = make_adapter(paypal, timeout_seconds=0.8)
    buyer.fail_next("/capture", "timeout")
    with pytest.raises(ProviderUnavailable) as lost:
        impatient.confirm(charge_id=order_id, idempotency_key=new_id("k"))
    assert lost.value.sent is True
    impatient.close()
    settled = adapter.get_charge(order_id)
    assert settled.status == ChargeStatus.SUCCEEDED
    assert adapter.confirm(charge_id=order_id, idempotency_key=new_id("k")).status == ChargeStatus.SUCCEEDED
    assert len(buyer.captured()) == 1


def test_a_500_on_capture_is_unavailable_and_confirming_again_captures_once(adapter: PayPalProvider, buyer: Buyer) -> None:
    order_id = approved_order(adapter, buyer, Money(1999, "USD"))
    buyer.fail_next("/capture", "500")
    key = new_id("k")
    with pytest.raises(ProviderUnavailable):
        adapter.confirm(charge_id=order_id, idempotency_key=key)
    assert adapter.get_charge(order_id).status == ChargeStatus.CREATED and buyer.captured() == []
    assert adapter.confirm(charge_id=order_id, idempotency_key=key).status == ChargeStatus.SUCCEEDED
    assert len(buyer.captured()) == 1


def test_a_refused_connection_is_unavailable_and_certainly_not_sent() -> None:
    nowhere = PayPalProvider("pp", {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "webhook_id": WEBHOOK_ID,
                                    "api_base": f"http://127.0.0.1:{free_port()}", "timeout_seconds": 2})
    with pytest.raises(ProviderUnavailable) as down:
        nowhere.get_charge("5O190127TN364715T")
    assert down.value.sent is False and CLIENT_SECRET not in str(down.value)
    nowhere.close()


def test_the_retry_rule_a_lost_create_is_found_by_its_id_and_captured_once(
    adapter: PayPalProvider, paypal: PayPalFake, buyer: Buyer
) -> None:
    """Billfold stores the order's id before the money moves: an answer lost after that is asked
    about by id, and confirming then captures once; a create whose answer was lost is made again
    under the same PayPal-Request-Id and PayPal answers the same order."""
    method = saved_method(adapter, buyer)
    key = new_id("k")
    stored = adapter.create_charge(amount=Money(1500, "USD"), idempotency_key=key, payment_method_id=method,
                                   off_session=True, metadata={"payment_id": "pay_retry"})
    assert stored.status == ChargeStatus.CREATED
    again = adapter.create_charge(amount=Money(1500, "USD"), idempotency_key=key, payment_method_id=method, off_session=True,
                                  metadata={"payment_id": "pay_retry"})
    assert again.id == stored.id and len(paypal.state.orders) == 1
    assert adapter.find_charge(idempotency_key=key) is None  # PayPal cannot look a key up: Billfold asks by id
    found = adapter.get_charge(stored.id)
    assert found.status == ChargeStatus.CREATED
    paid = adapter.confirm(charge_id=found.id, idempotency_key=new_id("k"))
    assert paid.status == ChargeStatus.SUCCEEDED
    assert adapter.confirm(charge_id=found.id, idempotency_key=new_id("k")).status == ChargeStatus.SUCCEEDED
    assert [c["order_id"] for c in buyer.captured()] == [stored.id]


# ---- the vault ---------------------------------------------------------------------------------------


def test_a_saved_method_is_charged_off_session_and_detached(adapter: PayPalProvider, paypal: PayPalFake, buyer: Buyer) -> None:
    method = adapter.attach_payment_method(customer_id="bfcustomer02", token=buyer.setup_token("ada@example.com"),
                                           idempotency_key=new_id("k"))
    assert method.type == "paypal" and method.customer_id == "bfcustomer02" and not method.detached
    paid = adapter.charge(amount=Money(999, "GBP"), idempotency_key=new_id("k"), payment_method_id=method.id, off_session=True)
    assert paid.status == ChargeStatus.SUCCEEDED and paid.amount_captured == Money(999, "GBP")
    assert paid.next_action is None and paid.payment_method_id == method.id
    detached = adapter.detach_payment_method(payment_method_id=method.id, idempotency_key=new_id("k"))
    assert detached.detached and detached.id == method.id
    with pytest.raises(InvalidProviderRequest):
        adapter.charge(amount=Money(999, "GBP"), idempotency_key=new_id("k"), payment_method_id=method.id, off_session=True)
    assert len(buyer.captured()) == 1


def test_an_off_session_charge_without_a_saved_method_is_declined_before_any_call(adapter: PayPalProvider, paypal: PayPalFake) -> None:
    with pytest.raises(Declined) as declined:
        adapter.charge(amount=Money(100, "USD"), idempotency_key=new_id("k"), off_session=True)
    assert declined.value.decline_code == "authentication_required" and paypal.state.calls == []


def test_every_write_carries_a_paypal_request_id(adapter: PayPalProvider, paypal: PayPalFake, buyer: Buyer) -> None:
    method = saved_method(adapter, buyer)
    adapter.charge(amount=Money(700, "USD"), idempotency_key=new_id("k"), payment_method_id=method)
    order_id = approved_order(adapter, buyer, Money(800, "USD"), capture=False)
    adapter.confirm(charge_id=order_id, idempotency_key=new_id("k"))
    adapter.capture(charge_id=order_id, idempotency_key=new_id("k"), amount=Money(500, "USD"))
    adapter.refund(charge_id=order_id, idempotency_key=new_id("k"), amount=Money(100, "USD"))
    adapter.detach_payment_method(payment_method_id=method, idempotency_key=new_id("k"))
    made = {*paypal.state.orders, *paypal.state.authorizations, *paypal.state.captures, method}
    writes = [c for c in paypal.state.calls if c["method"] in ("POST", "PATCH", "DELETE", "PUT")]
    operations = {(c["method"], "/".join("{id}" if part in made else part for part in c["path"].split("/"))) for c in writes}
    assert operations == {
        ("POST", "/v3/vault/payment-tokens"), ("POST", "/v2/checkout/orders"), ("POST", "/v2/checkout/orders/{id}/capture"),
        ("POST", "/v2/checkout/orders/{id}/authorize"), ("POST", "/v2/payments/authorizations/{id}/capture"),
        ("POST", "/v2/payments/captures/{id}/refund"), ("DELETE", "/v3/vault/payment-tokens/{id}"),
    }
    assert all(c["request_id"] for c in writes), writes


# ---- webhooks ------------------------------------------------------------------------------------------


def capture_resource(order_id: str, value: str = "10.00") -> dict[str, object]:
    return {"id": "8MC585209K746392H", "status": "COMPLETED", "amount": {"currency_code": "USD", "value": value},
            "supplementary_data": {"related_ids": {"order_id": order_id}}}


def test_a_delivery_paypal_verifies_is_accepted_and_a_tampered_one_is_not(adapter: PayPalProvider, paypal: PayPalFake) -> None:
    body, headers = paypal.build_webhook("PAYMENT.CAPTURE.COMPLETED", capture_resource("5O190127TN364715T"))
    event = adapter.verify_webhook(body, {k.lower(): v for k, v in headers.items()})
    assert (event.type, event.object_type, event.object_id) == ("charge.succeeded", "charge", "5O190127TN364715T")
    assert event.id == json.loads(body)["id"]
    with pytest.raises(WebhookSignatureInvalid):
        adapter.verify_webhook(body.replace(b'"10.00"', b'"1000.00"'), headers)
    with pytest.raises(WebhookSignatureInvalid):
        adapter.verify_webhook(body, {k: v for k, v in headers.items() if k != "PAYPAL-TRANSMISSION-SIG"})
    other = make_adapter(paypal, webhook_id="9XX99999XX999999X")
    with pytest.raises(WebhookSignatureInvalid):
        other.verify_webhook(body, headers)  # signed for another webhook
    other.close()


def test_a_verification_paypal_cannot_answer_is_unavailable(paypal: PayPalFake) -> None:
    body, headers = paypal.build_webhook("PAYMENT.CAPTURE.COMPLETED", capture_resource("5O190127TN364715T"))
    nowhere = make_adapter(paypal, api_base=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ProviderUnavailable):
        nowhere.verify_webhook(body, headers)
    nowhere.close()


@pytest.mark.parametrize("paypal_type, resource_type, resource, expected", [
    ("PAYMENT.CAPTURE.COMPLETED", "capture", capture_resource("ORDER1"), ("charge.succeeded", "charge", "ORDER1")),
    ("PAYMENT.CAPTURE.DENIED", "capture", capture_resource("ORDER1"), ("charge.failed", "charge", "ORDER1")),
    ("PAYMENT.CAPTURE.PENDING", "capture", capture_resource("ORDER1"), ("charge.processing", "charge", "ORDER1")),
    ("PAYMENT.CAPTURE.REFUNDED", "refund", {"id": "REFUND1"}, ("refund.succeeded", "refund", "REFUND1")),
    ("CHECKOUT.ORDER.APPROVED", "checkout-order", {"id": "ORDER2"}, ("charge.updated", "charge", "ORDER2")),
    ("PAYMENT.AUTHORIZATION.CREATED", "authorization", capture_resource("ORDER3"), ("charge.authorized", "charge", "ORDER3")),
    ("PAYMENT.AUTHORIZATION.VOIDED", "authorization", capture_resource("ORDER3"), ("charge.canceled", "charge", "ORDER3")),
    ("CUSTOMER.DISPUTE.CREATED", "dispute", {"dispute_id": "PP-D-1"}, ("dispute.opened", "dispute", "PP-D-1")),
    ("CUSTOMER.DISPUTE.RESOLVED", "dispute", {"dispute_id": "PP-D-1"}, ("dispute.closed", "dispute", "PP-D-1")),
    ("VAULT.PAYMENT-TOKEN.DELETED", "payment_token", {"id": "tok1"}, ("payment_method.detached", "payment_method", "tok1")),
    ("BILLING.SUBSCRIPTION.CANCELLED", "subscription", {"id": "I-1"}, ("subscription.canceled", "subscription", "I-1")),
    ("BILLING.SUBSCRIPTION.SUSPENDED", "subscription", {"id": "I-1"}, ("subscription.updated", "subscription", "I-1")),
    ("PAYMENT.PAYOUTSBATCH.SUCCESS", "payouts", {"id": "B1"}, ("PAYMENT.PAYOUTSBATCH.SUCCESS", "charge", "B1")),
])
def test_paypal_events_are_normalised(paypal_type: str, resource_type: str, resource: dict[str, object],
                                      expected: tuple[str, str, str]) -> None:
    event = normalise_event({"id": "WH-1", "event_type": paypal_type, "resource_type": resource_type,
                             "create_time": "2026-01-31T09:30:00Z", "resource": resource})
    assert (event.type, event.object_type, event.object_id) == expected


def stored(engine: Engine, provider_id: str) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(
            sa.select(PaymentWebhook.provider_event_id).where(PaymentWebhook.provider_id == provider_id)
        ).all())


def test_a_paypal_delivery_through_billfolds_webhook_endpoint(
    api: Api, engine: Engine, admin_token: str, paypal: PayPalFake, buyer: Buyer
) -> None:
    provider_id = "pp_" + new_id("x")[-10:].lower()
    with api.client(admin_token) as admin:
        refused = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": "paypal", "display_name": "PayPal",
            "config": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "api_base": paypal.url},
        })
        assert_problem(refused, 422, "invalid_provider_config")
        assert CLIENT_SECRET not in refused.text and "webhook_id" in refused.text
        made = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": "paypal", "display_name": "PayPal",
            "config": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "webhook_id": WEBHOOK_ID, "api_base": paypal.url},
        })
        assert made.status_code == 201, made.text
        assert CLIENT_SECRET not in made.text and CLIENT_SECRET not in admin.get(f"/v1/payment-providers/{provider_id}").text
    url = f"{api.url}/v1/webhooks/{provider_id}"
    delivered = buyer.deliver(url, "PAYMENT.CAPTURE.COMPLETED", capture_resource("5O190127TN364715T"))
    assert delivered["status"] == 200, delivered
    [event_id] = stored(engine, provider_id)
    assert event_id.startswith("WH-")
    tampered = buyer.deliver(url, "PAYMENT.CAPTURE.COMPLETED", capture_resource("5O190127TN364715T"), tamper=True)
    assert tampered["status"] == 400 and json.loads(tampered["body"])["code"] == "webhook_signature_invalid"
    with httpx.Client() as client:
        unsigned = client.post(url, content=b'{"id": "WH-X", "event_type": "PAYMENT.CAPTURE.COMPLETED"}')
    assert_problem(unsigned, 400, "webhook_signature_invalid")
    assert stored(engine, provider_id) == [event_id]

    unreachable = provider_id + "u"  # PayPal cannot be asked: 503, so PayPal delivers again later
    with api.client(admin_token) as admin:
        assert admin.post("/v1/payment-providers", json={
            "id": unreachable, "kind": "paypal", "display_name": "PayPal down",
            "config": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "webhook_id": WEBHOOK_ID,
                       "api_base": f"http://127.0.0.1:{free_port()}", "timeout_seconds": 2},
        }).status_code == 201
    down = buyer.deliver(f"{api.url}/v1/webhooks/{unreachable}", "PAYMENT.CAPTURE.COMPLETED", capture_resource("5O190127TN364715T"))
    assert down["status"] == 503 and json.loads(down["body"])["code"] == "provider_unavailable"
    assert CLIENT_SECRET not in down["body"] and stored(engine, unreachable) == []


# ---- through Billfold: checkout, approval, capture, refund ------------------------------------------


def paypal_provider(api: Api, admin_token: str, paypal: PayPalFake) -> str:
    provider_id = "pp_" + new_id("x")[-10:].lower()
    with api.client(admin_token) as admin:
        made = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": "paypal", "display_name": "PayPal",
            "config": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "webhook_id": WEBHOOK_ID,
                       "api_base": paypal.url, "timeout_seconds": 10},
        })
        assert made.status_code == 201, made.text
    return provider_id


def test_a_shop_order_is_paid_by_the_buyers_approval_at_paypal_and_refunded(
    api: Api, engine: Engine, admin_token: str, paypal: PayPalFake, buyer: Buyer
) -> None:
    """A newcomer's path: configure PayPal, check an order out with no token (the answer carries
    PayPal's approve link), the buyer approves at PayPal, the shop confirms: one capture, the order
    paid; then refunded in part and in full through the admin API, at PayPal too."""
    from tests.test_checkout import checkout, customer, order, product

    provider_id = paypal_provider(api, admin_token, paypal)
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 2000), 1))
    with api.client(ada.token) as client:
        waiting = checkout(client, made["id"], provider_id=provider_id)
        assert waiting.status_code == 202, waiting.text
        payment = waiting.json()["payment"]
        link = payment["next_action"]
        assert link["type"] == "redirect_to_url" and link["url"].startswith(paypal.url), link
        order_id = payment["provider_payment_id"]
        buyer.approve(order_id)
        paid = client.post(f"/v1/payments/{payment['id']}/confirm")
        assert paid.status_code == 200, paid.text
        assert paid.json()["order"]["status"] == "paid"
    assert len([c for c in buyer.captured() if c.get("order_id") == order_id]) == 1, buyer.captured()
    total = paid.json()["order"]["total_cents"]
    with api.client(admin_token) as admin:
        part = admin.post(f"/v1/payments/{payment['id']}/refunds", json={"amount_cents": 500})
        assert part.status_code == 201, part.text
        rest = admin.post(f"/v1/payments/{payment['id']}/refunds", json={})
        assert rest.status_code == 201, rest.text
        assert admin.get(f"/v1/orders/{made['id']}").json()["status"] == "refunded"
    charge = make_adapter(paypal).get_charge(order_id)
    assert (charge.amount_refunded.amount, charge.amount_captured.amount) == (total, total)


def test_an_approval_paypal_reports_by_webhook_is_captured_without_the_shop(
    api: Api, engine: Engine, admin_token: str, paypal: PayPalFake, buyer: Buyer
) -> None:
    """The buyer approves and closes the tab: PayPal's CHECKOUT.ORDER.APPROVED event reaches the
    inbox, and its processing captures the order (once, however often it is delivered)."""
    from billfold import worker
    from billfold.config import Settings
    from billfold.kit import sweeps as registry
    from tests.test_checkout import checkout, customer, order, product

    provider_id = paypal_provider(api, admin_token, paypal)
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 1200), 1))
    with api.client(ada.token) as client:
        waiting = checkout(client, made["id"], provider_id=provider_id)
        assert waiting.status_code == 202, waiting.text
    order_id = waiting.json()["payment"]["provider_payment_id"]
    buyer.approve(order_id)
    for _ in range(2):
        delivered = buyer.deliver(f"{api.url}/v1/webhooks/{provider_id}", "CHECKOUT.ORDER.APPROVED",
                                  {"id": order_id, "intent": "CAPTURE", "status": "APPROVED"}, resource_type="checkout-order")
        assert delivered["status"] == 200, delivered
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=api.data_dir)
    worker.catch_up(worker.make_context(settings, engine), sweeps=[registry.get("webhooks.process")])
    with api.client(ada.token) as client:
        assert client.get(f"/v1/orders/{made['id']}").json()["status"] == "paid"
    assert len([c for c in buyer.captured() if c.get("order_id") == order_id]) == 1
