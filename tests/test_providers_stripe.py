"""The Stripe adapter against localstripe (a stateful fake Stripe server started on a free port)
and on Stripe's own example objects (tests/fixtures/stripe/fixtures3.json, MIT, from stripe-mock).

localstripe does not honour Idempotency-Key, which is what the retry rule is for: the
PaymentIntent's id is kept before the money moves, and a retry fetches it and never charges again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.errors import ConfigurationError
from billfold.kit.ids import new_id
from billfold.kit.money import Money
from billfold.providers import adapter_for
from billfold.providers.base import (
    EVENT_TYPES,
    ChargeStatus,
    CreatesBeforeCharging,
    DisputeStatus,
    ProviderAdapter,
    ReadsDisputes,
    RefundStatus,
    WebhookEvent,
)
from billfold.providers.errors import (
    Declined,
    DeclineCode,
    IdempotencyMismatch,
    InvalidProviderRequest,
    NotSupported,
    ProviderObjectNotFound,
    ProviderUnavailable,
    WebhookSignatureInvalid,
)
from billfold.providers.stripe import API_VERSION, StripeProvider, mapping, signature
from tests.accounts import Api
from tests.stripe_fake import SECRET_KEY, LocalStripe, closed_port, losing_answers, never_answering, running_localstripe

# stripe-python's HTTPX client hands its form body to httpx as data=, which httpx deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

WEBHOOK_SECRET = "whsec_billfold_tests_0123456789abcdef"
FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "stripe" / "fixtures3.json").read_text())["resources"]
EUR = "EUR"


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    with running_localstripe(tmp_path_factory.mktemp("localstripe") / "localstripe.log") as server:
        yield server


def config(api_base: str, **extra: Any) -> dict[str, Any]:
    return {"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET, "api_base": api_base, "localstripe": True,
            **extra}


@pytest.fixture
def stripe(localstripe: LocalStripe) -> Iterator[StripeProvider]:
    provider = StripeProvider("stripe", config(localstripe.url))
    yield provider
    provider.close()


def key() -> str:
    return f"billfold-{new_id('pay')}-charge"


def eur(amount: int) -> Money:
    return Money(amount, EUR)


# ---- configuration ------------------------------------------------------------------------------


def test_the_registry_builds_it_without_calling_stripe_and_refuses_a_config_without_secrets() -> None:
    adapter = adapter_for("stripe_eu", {"kind": "stripe", **config(closed_port())})
    assert isinstance(adapter, StripeProvider) and isinstance(adapter, ProviderAdapter)
    assert isinstance(adapter, CreatesBeforeCharging) and isinstance(adapter, ReadsDisputes)
    assert adapter.capabilities.creates_before_charging and adapter.capabilities.disputes
    assert not adapter.capabilities.provider_subscriptions
    assert adapter.capabilities.webhook_events <= EVENT_TYPES
    assert adapter.capabilities.accepts_token("pm_1Pgaft") and not adapter.capabilities.accepts_token("4242424242424242")
    assert adapter._client._requestor._options.stripe_version == API_VERSION  # noqa: SLF001
    with pytest.raises(ConfigurationError, match="secret_key"):
        StripeProvider("stripe", {"webhook_secret": WEBHOOK_SECRET})
    with pytest.raises(ConfigurationError, match="webhook_secret"):
        StripeProvider("stripe", {"secret_key": SECRET_KEY})
    with pytest.raises(ConfigurationError, match="webhook_secret"):
        StripeProvider("stripe", {"secret_key": SECRET_KEY, "webhook_secret": "not-a-whsec"})
    with pytest.raises(ConfigurationError, match="timeout_seconds"):
        StripeProvider("stripe", {**config(closed_port()), "timeout_seconds": 0})


def test_rejected_credentials_never_echo_the_key(localstripe: LocalStripe) -> None:
    restricted = "rk_test_" + "Zz9" * 8  # localstripe takes sk_ keys only: this one is refused, 401
    provider = StripeProvider("stripe", {**config(localstripe.url), "secret_key": restricted})
    with pytest.raises(InvalidProviderRequest) as refused:
        provider.create_customer(email="a@example.com", idempotency_key=key())
    assert refused.value.code == "provider_credentials_rejected"
    assert "Zz9" not in json.dumps(refused.value.to_problem(), default=str) and "Zz9" not in str(refused.value)


# ---- customers and saved methods ------------------------------------------------------------------


def test_a_customer_saves_a_card_directly_and_through_a_setup_intent(stripe: StripeProvider, localstripe: LocalStripe) -> None:
    customer = stripe.create_customer(email="ada@example.com", name="Ada", metadata={"user_id": "usr_1"},
                                      idempotency_key=key())
    assert customer.id.startswith("cus_") and customer.email == "ada@example.com" and customer.metadata == {"user_id": "usr_1"}
    token = localstripe.card()
    saved = stripe.attach_payment_method(customer_id=customer.id, token=token, idempotency_key=key())
    assert (saved.id, saved.customer_id, saved.type, saved.brand, saved.last4) == (token, customer.id, "credit_card", "visa", "4242")
    assert (saved.exp_month, saved.exp_year, saved.detached) == (12, 2030, False)
    again = stripe.attach_payment_method(customer_id=customer.id, token=token, idempotency_key=key())
    assert again.id == saved.id, "a method already on the customer is answered as it is"
    other = stripe.create_customer(email="bob@example.com", idempotency_key=key())
    with pytest.raises(InvalidProviderRequest) as taken:
        stripe.attach_payment_method(customer_id=other.id, token=token, idempotency_key=key())
    assert taken.value.code == "payment_method_customer_mismatch"

    setup = stripe.create_setup_intent(customer_id=customer.id, idempotency_key=key())
    assert setup["id"].startswith("seti_") and setup["client_secret"] and setup["status"] == "requires_payment_method"
    with pytest.raises(InvalidProviderRequest) as unfinished:
        stripe.attach_payment_method(customer_id=customer.id, token=setup["id"], idempotency_key=key())
    assert unfinished.value.code == "setup_intent_not_succeeded"
    card = localstripe.card("5555555555554444")
    confirmed = localstripe.post(f"/v1/setup_intents/{setup['id']}/confirm",
                                 {"client_secret": setup["client_secret"], "payment_method": card})
    assert confirmed["status"] == "succeeded"
    through_setup = stripe.attach_payment_method(customer_id=customer.id, token=setup["id"], idempotency_key=key())
    assert through_setup.id == card and through_setup.customer_id == customer.id and through_setup.last4 == "4444"

    detached = stripe.detach_payment_method(payment_method_id=card, idempotency_key=key())
    assert detached.detached and detached.customer_id is None
    with pytest.raises(ProviderObjectNotFound):
        stripe.attach_payment_method(customer_id=customer.id, token="pm_doesnotexist", idempotency_key=key())


# ---- charges --------------------------------------------------------------------------------------


def test_a_saved_card_is_charged_and_read_back(stripe: StripeProvider, localstripe: LocalStripe) -> None:
    customer = stripe.create_customer(email="c@example.com", idempotency_key=key())
    method = stripe.attach_payment_method(customer_id=customer.id, token=localstripe.card(), idempotency_key=key())
    charge_key = key()
    paid = stripe.charge(amount=eur(1999), customer_id=customer.id, payment_method_id=method.id, off_session=True,
                         idempotency_key=charge_key, metadata={"payment_id": "pay_x1"}, description="Order 1")
    assert paid.id.startswith("pi_") and paid.status is ChargeStatus.SUCCEEDED and paid.provider_status == "succeeded"
    assert (paid.amount, paid.amount_captured, paid.amount_refunded) == (eur(1999), eur(1999), eur(0))
    assert paid.customer_id == customer.id and paid.payment_method_id == method.id and paid.off_session
    assert paid.metadata == {"payment_id": "pay_x1"}, "our own bookkeeping keys stay out of the caller's metadata"
    assert stripe.get_charge(paid.id) == paid
    assert stripe.find_charge(idempotency_key=charge_key) == paid
    assert stripe.find_charge(idempotency_key=key()) is None
    assert [c["status"] for c in localstripe.charges_of(paid.id)] == ["succeeded"]
    window = stripe.list_charges(paid.created, paid.created + timedelta(seconds=1))
    assert paid.id in [c.id for c in window]
    # created is whole seconds: a window ending within the charge's second holds it
    assert paid.id in [c.id for c in stripe.list_charges(paid.created, paid.created + timedelta(milliseconds=300))]
    assert paid.id not in [c.id for c in stripe.list_charges(paid.created + timedelta(seconds=1))]
    assert paid.id not in [c.id for c in stripe.list_charges(None, paid.created)]
    for _ in range(2):
        stripe.create_charge(amount=eur(100), token=localstripe.card(), idempotency_key=key())
    everything = stripe.list_charges()
    stripe.page_size = 2  # every page is read, whatever its size
    assert [c.id for c in stripe.list_charges()] == [c.id for c in everything] and len(everything) > 2
    assert [c.created for c in everything] == sorted(c.created for c in everything), "oldest first"
    with pytest.raises(ProviderObjectNotFound):
        stripe.get_charge("pi_doesnotexist")


def test_the_adapter_refuses_what_it_must_not_send(stripe: StripeProvider) -> None:
    with pytest.raises(InvalidProviderRequest) as both:
        stripe.charge(amount=eur(100), token="pm_a", payment_method_id="pm_b", idempotency_key=key())
    assert both.value.code == "invalid_payment_source"
    with pytest.raises(InvalidProviderRequest) as off_session:
        stripe.charge(amount=eur(100), token="pm_a", off_session=True, idempotency_key=key())
    assert off_session.value.code == "off_session_needs_saved_method"
    with pytest.raises(InvalidProviderRequest) as zero:
        stripe.charge(amount=eur(0), token="pm_a", idempotency_key=key())
    assert zero.value.code == "invalid_amount"


def test_declines_raise_with_the_failed_payment_intent(stripe: StripeProvider, localstripe: LocalStripe) -> None:
    customer = stripe.create_customer(email="d@example.com", idempotency_key=key())
    with pytest.raises(Declined) as at_saving:  # localstripe declines 4000000000000002 when it is saved
        stripe.attach_payment_method(customer_id=customer.id, token=localstripe.card("4000000000000002"),
                                     idempotency_key=key())
    assert at_saving.value.decline_code is DeclineCode.GENERIC_DECLINE and at_saving.value.charge is None
    method = stripe.attach_payment_method(customer_id=customer.id, token=localstripe.card("4000000000000341"),
                                          idempotency_key=key())
    charge_key = key()
    with pytest.raises(Declined) as declined:  # 0341 saves, then declines when charged
        stripe.charge(amount=eur(500), customer_id=customer.id, payment_method_id=method.id, off_session=True,
                      idempotency_key=charge_key, metadata={"payment_id": "pay_d"})
    failed = declined.value.charge
    assert failed is not None and failed.id.startswith("pi_") and failed.status is ChargeStatus.FAILED
    assert failed.provider_status == "requires_payment_method" and failed.failure_code == "generic_decline"
    assert declined.value.decline_code is DeclineCode.GENERIC_DECLINE and not declined.value.hard
    assert declined.value.status == 402
    assert stripe.get_charge(failed.id).status is ChargeStatus.FAILED
    with pytest.raises(Declined):  # the first outcome, again: never a second attempt
        stripe.confirm(charge_id=failed.id, idempotency_key=charge_key)
    assert [c["status"] for c in localstripe.charges_of(failed.id)] == ["failed"]


def test_three_d_secure_requires_action_then_confirms_after_the_customer_authenticates(
    stripe: StripeProvider, localstripe: LocalStripe,
) -> None:
    charge_key = key()
    waiting = stripe.charge(amount=eur(4200), token=localstripe.card("4000002500003155"), idempotency_key=charge_key)
    assert waiting.status is ChargeStatus.REQUIRES_ACTION and waiting.provider_status == "requires_action"
    assert waiting.next_action is not None and waiting.next_action["type"] == "use_stripe_sdk"
    json.dumps(waiting.next_action)  # a plain dict, ready to hand to the browser
    assert stripe.confirm(charge_id=waiting.id, idempotency_key=charge_key).status is ChargeStatus.REQUIRES_ACTION
    localstripe.authenticate(waiting.id)
    done = stripe.confirm(charge_id=waiting.id, idempotency_key=charge_key)
    assert done.status is ChargeStatus.SUCCEEDED and done.amount_captured == eur(4200) and done.next_action is None
    assert len(localstripe.charges_of(waiting.id)) == 1

    failing = stripe.charge(amount=eur(4200), token=localstripe.card("4000002500003155"), idempotency_key=key())
    localstripe.authenticate(failing.id, success=False)
    with pytest.raises(Declined) as failed:
        stripe.confirm(charge_id=failing.id, idempotency_key=key())
    assert failed.value.decline_code is DeclineCode.AUTHENTICATION_FAILED and failed.value.charge.status is ChargeStatus.FAILED


def test_off_session_a_card_that_needs_the_customer_declines_authentication_required(
    stripe: StripeProvider, localstripe: LocalStripe,
) -> None:
    customer = stripe.create_customer(email="o@example.com", idempotency_key=key())
    method = stripe.attach_payment_method(customer_id=customer.id, token=localstripe.card("4000002500003155"),
                                          idempotency_key=key())
    with pytest.raises(Declined) as declined:
        stripe.charge(amount=eur(900), customer_id=customer.id, payment_method_id=method.id, off_session=True,
                      idempotency_key=key())
    assert declined.value.decline_code is DeclineCode.AUTHENTICATION_REQUIRED and not declined.value.hard
    assert declined.value.charge.status is ChargeStatus.FAILED and declined.value.charge.next_action is None
    assert localstripe.charges_of(declined.value.charge.id) == []


def test_separate_capture_in_full_in_part_and_cancel(stripe: StripeProvider, localstripe: LocalStripe) -> None:
    held = stripe.charge(amount=eur(1000), token=localstripe.card(), capture=False, idempotency_key=key())
    assert held.status is ChargeStatus.AUTHORIZED and held.provider_status == "requires_capture" and not held.capture
    assert held.amount_captured == eur(0)
    with pytest.raises(InvalidProviderRequest) as too_much:
        stripe.capture(charge_id=held.id, amount=eur(1001), idempotency_key=key())
    assert too_much.value.code == "capture_exceeds_authorized"
    captured = stripe.capture(charge_id=held.id, idempotency_key=key())
    assert captured.status is ChargeStatus.SUCCEEDED and captured.amount_captured == eur(1000)
    assert stripe.capture(charge_id=held.id, idempotency_key=key()) == captured, "a retried capture answers what is"

    part = stripe.charge(amount=eur(1000), token=localstripe.card(), capture=False, idempotency_key=key())
    partly = stripe.capture(charge_id=part.id, amount=eur(600), idempotency_key=key())
    assert partly.status is ChargeStatus.SUCCEEDED and partly.amount_captured == eur(600)
    assert partly.amount_refunded == eur(0) and partly.amount_refundable == eur(600)
    assert part.id not in [r.charge_id for r in stripe.list_refunds()], "the released rest is no refund"

    voided = stripe.charge(amount=eur(700), token=localstripe.card(), capture=False, idempotency_key=key())
    canceled = stripe.cancel(charge_id=voided.id, idempotency_key=key())
    assert canceled.status is ChargeStatus.CANCELED and canceled.provider_status == "canceled"
    assert stripe.cancel(charge_id=voided.id, idempotency_key=key()).status is ChargeStatus.CANCELED
    with pytest.raises(InvalidProviderRequest) as not_capturable:
        stripe.capture(charge_id=voided.id, idempotency_key=key())
    assert not_capturable.value.code == "charge_not_capturable"
    with pytest.raises(InvalidProviderRequest) as not_cancelable:
        stripe.cancel(charge_id=captured.id, idempotency_key=key())
    assert not_cancelable.value.code == "charge_not_cancelable"


def test_partial_and_full_refunds_never_more_than_captured(stripe: StripeProvider, localstripe: LocalStripe) -> None:
    paid = stripe.charge(amount=eur(1000), token=localstripe.card(), idempotency_key=key())
    first_key = key()
    first = stripe.refund(charge_id=paid.id, amount=eur(300), reason="requested_by_customer",
                          metadata={"refund_id": "ref_1"}, idempotency_key=first_key)
    assert first.id.startswith("re_") and first.charge_id == paid.id and first.amount == eur(300)
    assert first.status is RefundStatus.SUCCEEDED and first.metadata == {"refund_id": "ref_1"}
    assert first.reason == "requested_by_customer"
    again = stripe.refund(charge_id=paid.id, amount=eur(300), idempotency_key=first_key)
    assert again == first, "a retried refund finds the first by its key (localstripe ignores Idempotency-Key)"
    with pytest.raises(IdempotencyMismatch):
        stripe.refund(charge_id=paid.id, amount=eur(200), idempotency_key=first_key)
    with pytest.raises(InvalidProviderRequest) as over:
        stripe.refund(charge_id=paid.id, amount=eur(701), idempotency_key=key())
    assert over.value.code == "refund_exceeds_captured"
    rest = stripe.refund(charge_id=paid.id, idempotency_key=key())
    assert rest.amount == eur(700)
    after = stripe.get_charge(paid.id)
    assert after.amount_refunded == eur(1000) and after.amount_refundable == eur(0)
    with pytest.raises(InvalidProviderRequest) as nothing_left:
        stripe.refund(charge_id=paid.id, amount=eur(1), idempotency_key=key())
    assert nothing_left.value.code == "charge_already_refunded"
    assert stripe.get_refund(rest.id) == rest
    ours = [r for r in stripe.list_refunds(first.created) if r.charge_id == paid.id]
    assert sorted(r.amount.amount for r in ours) == [300, 700]
    with pytest.raises(ProviderObjectNotFound):
        stripe.get_refund("re_doesnotexist")
    with pytest.raises(ProviderObjectNotFound):  # localstripe has no disputes: the call and its 404 are real
        stripe.get_dispute("dp_doesnotexist")
    held = stripe.charge(amount=eur(1000), token=localstripe.card(), capture=False, idempotency_key=key())
    with pytest.raises(InvalidProviderRequest) as not_refundable:
        stripe.refund(charge_id=held.id, idempotency_key=key())
    assert not_refundable.value.code == "charge_not_refundable"


# ---- unknown outcomes and the retry rule -------------------------------------------------------------


def test_an_unreachable_stripe_is_unavailable_and_nothing_was_sent() -> None:
    provider = StripeProvider("stripe", config(closed_port()))
    with pytest.raises(ProviderUnavailable) as refused:
        provider.charge(amount=eur(100), token="pm_card_visa", idempotency_key=key())
    assert refused.value.sent is False and refused.value.status == 503


def test_a_stripe_that_does_not_answer_times_out_with_the_outcome_unknown() -> None:
    with never_answering() as url:
        provider = StripeProvider("stripe", config(url, timeout_seconds=0.3, connect_timeout_seconds=0.3))
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable) as hung:
            provider.get_charge("pi_hanging")
        assert time.monotonic() - started < 3
    assert hung.value.sent is True


@pytest.mark.parametrize("status, error, expected, code", [
    (500, {"type": "api_error", "message": "An unknown error occurred"}, ProviderUnavailable, "provider_unavailable"),
    (503, {"type": "api_error"}, ProviderUnavailable, "provider_unavailable"),
    (429, {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}, ProviderUnavailable, "provider_unavailable"),
    (400, {"type": "idempotency_error", "message": "Keys for idempotent requests can only be used with the same parameters"},
     IdempotencyMismatch, "idempotency_mismatch"),
    (404, {"type": "invalid_request_error", "code": "resource_missing", "message": "No such payment_intent"},
     ProviderObjectNotFound, "provider_object_not_found"),
    (400, {"type": "invalid_request_error", "code": "parameter_invalid_integer", "message": "Invalid integer"},
     InvalidProviderRequest, "invalid_provider_request"),
    (403, {"type": "invalid_request_error", "message": "The provided key 'rk_test_***abc' does not have access"},
     InvalidProviderRequest, "provider_credentials_rejected"),
])
def test_stripe_error_answers_become_billfold_errors(
    localstripe: LocalStripe, status: int, error: dict[str, Any], expected: type[Exception], code: str,
) -> None:
    with losing_answers(localstripe.url) as proxy:
        provider = StripeProvider("stripe", config(proxy.url))
        proxy.answers.append(("", status, {"error": error}))
        with pytest.raises(expected) as raised:
            provider.get_charge("pi_whatever")
    assert raised.value.code == code and "rk_test" not in str(raised.value)
    if expected is ProviderUnavailable:
        assert raised.value.sent is True, "Stripe answered: something may have happened"


def test_a_card_error_keeps_stripes_decline_code(localstripe: LocalStripe) -> None:
    with losing_answers(localstripe.url) as proxy:
        provider = StripeProvider("stripe", config(proxy.url))
        created = provider.create_charge(amount=eur(700), token=localstripe.card(), idempotency_key=key())
        proxy.answers.append(("/confirm", 402, {"error": {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                                              "message": "Your card has insufficient funds.", "payment_intent": {"id": created.id}}}))
        with pytest.raises(Declined) as declined:
            provider.confirm(charge_id=created.id, idempotency_key=key())
    assert declined.value.decline_code is DeclineCode.INSUFFICIENT_FUNDS and not declined.value.hard
    assert declined.value.charge is not None and declined.value.charge.id == created.id
    assert "insufficient funds" in declined.value.detail


def test_the_retry_rule_a_lost_confirm_is_settled_by_the_stored_id_with_one_charge(localstripe: LocalStripe) -> None:
    """The PaymentIntent is created and its id kept; the confirm reaches Stripe and moves the
    money, and the answer is lost. The retry fetches the kept id and confirms nothing again."""
    with losing_answers(localstripe.url) as proxy:
        provider = StripeProvider("stripe", config(proxy.url))
        charge_key = key()
        created = provider.create_charge(amount=eur(2500), token=localstripe.card(), idempotency_key=charge_key,
                                         metadata={"payment_id": "pay_retry"})
        assert created.status is ChargeStatus.CREATED and created.amount_captured == eur(0)
        kept = created.id  # what Billfold stores before any money moves
        assert localstripe.charges_of(kept) == []
        proxy.lose = "/confirm"
        with pytest.raises(ProviderUnavailable) as lost:
            provider.confirm(charge_id=kept, idempotency_key=charge_key)
        assert lost.value.sent is True and proxy.lost
        assert len(localstripe.charges_of(kept)) == 1, "Stripe did charge; we never heard"
        # The retry: fetch the stored id first, confirm only what is still unconfirmed.
        now = provider.get_charge(kept)
        assert now.status is ChargeStatus.SUCCEEDED
        assert provider.confirm(charge_id=kept, idempotency_key=charge_key).status is ChargeStatus.SUCCEEDED
        assert provider.find_charge(idempotency_key=charge_key).id == kept
    assert [c["status"] for c in localstripe.charges_of(kept)] == ["succeeded"]
    assert len(localstripe.payment_intents_with("billfold_key", charge_key)) == 1


def test_the_retry_rule_a_crash_after_creating_is_finished_by_confirming_the_stored_id(stripe: StripeProvider, localstripe: LocalStripe) -> None:
    charge_key = key()
    kept = stripe.create_charge(amount=eur(800), token=localstripe.card(), idempotency_key=charge_key).id
    # crash: the answer is dropped; only the stored id survives. The retry:
    for _ in range(2):
        current = stripe.get_charge(kept)
        result = stripe.confirm(charge_id=kept, idempotency_key=charge_key) if current.status is ChargeStatus.CREATED else current
        assert result.id == kept and result.status is ChargeStatus.SUCCEEDED
    assert len(localstripe.charges_of(kept)) == 1
    assert len(localstripe.payment_intents_with("billfold_key", charge_key)) == 1


def test_calling_charge_twice_would_charge_twice_at_localstripe(stripe: StripeProvider, localstripe: LocalStripe) -> None:
    """Why the rule exists: localstripe, like a provider that lost a key, ignores Idempotency-Key."""
    charge_key = key()
    token = localstripe.card()
    first = stripe.charge(amount=eur(100), token=token, idempotency_key=charge_key)
    second = stripe.charge(amount=eur(100), token=token, idempotency_key=charge_key)
    assert first.id != second.id
    assert len(localstripe.payment_intents_with("billfold_key", charge_key)) == 2


# ---- webhooks -----------------------------------------------------------------------------------------


def stripe_event(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"evt_{new_id('t')[-14:]}", "object": "event", "type": event_type, "created": int(clock.now().timestamp()),
            "api_version": API_VERSION, "livemode": False, "data": {"object": obj}}


def test_a_signed_event_verifies_and_a_tampered_stale_or_foreign_one_does_not(frozen_clock: clock.FrozenClock) -> None:
    provider = StripeProvider("stripe", config(closed_port()))
    intent = {**FIXTURES["payment_intent"], "status": "succeeded"}
    body, headers = provider.build_webhook(stripe_event("payment_intent.succeeded", intent))
    event = provider.verify_webhook(body, headers)
    assert event.type == "charge.succeeded" and event.object_type == "charge" and event.object_id == intent["id"]
    assert event.created == frozen_clock.now() and event.data["status"] == "succeeded"
    timestamp, = [p[2:] for p in headers["Stripe-Signature"].split(",") if p.startswith("t=")]
    assert int(timestamp) == int(frozen_clock.now().timestamp())
    assert provider.verify_webhook(body, {"stripe-signature": headers["Stripe-Signature"] + ",v1=00ff"}).id == event.id

    def refused(body: bytes, headers: dict[str, str]) -> WebhookSignatureInvalid:
        with pytest.raises(WebhookSignatureInvalid) as error:
            provider.verify_webhook(body, headers)
        assert error.value.status == 400
        return error.value

    refused(body.replace(b'"succeeded"', b'"canceled"'), headers)
    refused(body, signature.sign("whsec_someone_elses_secret_000", body))
    refused(body, {})
    refused(body, {"Stripe-Signature": "t=abc,v1=00"})
    refused(b'{"object": "list"}', signature.sign(WEBHOOK_SECRET, b'{"object": "list"}'))
    frozen_clock.advance(timedelta(seconds=299))
    assert provider.verify_webhook(body, headers).id == event.id
    frozen_clock.advance(timedelta(seconds=2))
    assert refused(body, headers).code == "webhook_timestamp_stale"


def test_localstripe_delivers_a_signed_event_that_billfold_verifies_and_stores(
    api: Api, engine: Engine, admin_token: str, localstripe: LocalStripe,
) -> None:
    provider_id = "stripe_" + new_id("x")[-10:].lower()
    with api.client(admin_token) as admin:
        made = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": "stripe", "display_name": "Stripe (localstripe)",
            "config": {"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET, "api_base": localstripe.url,
                       "localstripe": True},
        })
        assert made.status_code == 201, made.text
        assert made.json()["config"]["secret_key"] == {"set": True} and made.json()["config"]["webhook_secret"] == {"set": True}
        missing = admin.post("/v1/payment-providers", json={"id": provider_id + "x", "kind": "stripe",
                                                             "display_name": "No secret", "config": {"secret_key": SECRET_KEY}})
        assert missing.status_code >= 400 and "webhook_secret" in missing.text
        forged = admin.post(f"/v1/webhooks/{provider_id}", content=b'{"id": "evt_forged"}',
                            headers={"Stripe-Signature": f"t={int(clock.now().timestamp())},v1=00"})
        assert forged.status_code == 400, forged.text
    endpoint = f"billfold-{provider_id}"
    localstripe.send_webhooks(endpoint, f"{api.url}/v1/webhooks/{provider_id}", WEBHOOK_SECRET, ["payment_intent.succeeded"])
    try:
        provider = StripeProvider(provider_id, config(localstripe.url))
        paid = provider.charge(amount=eur(1234), token=localstripe.card(), idempotency_key=key())
        deadline = time.monotonic() + 15
        stored: list[Any] = []
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                stored = connection.execute(sa.text(
                    "SELECT provider_event_id, event_type, payload FROM payment_webhooks WHERE provider_id = :p"
                ), {"p": provider_id}).all()
            mine = [row for row in stored if paid.id in (row.payload if isinstance(row.payload, str) else json.dumps(row.payload))]
            if mine:
                break
            time.sleep(0.2)
        assert mine, f"localstripe's event never arrived: {stored}"
        event_id, event_type, payload = mine[0]
        assert event_id.startswith("evt_") and event_type == "charge.succeeded"
        stored_event = WebhookEvent.from_dict(payload if isinstance(payload, dict) else json.loads(payload))
        assert (stored_event.id, stored_event.object_type, stored_event.object_id) == (event_id, "charge", paid.id)
        assert stored_event.data["object"] == "payment_intent", "Stripe's own object is kept"
        with engine.connect() as connection:
            forged_rows = connection.execute(sa.text(
                "SELECT count(*) FROM payment_webhooks WHERE provider_event_id = 'evt_forged'")).scalar_one()
        assert forged_rows == 0
    finally:  # localstripe sends every account's events to every endpoint: stop sending to this one
        localstripe.send_webhooks(endpoint, closed_port() + "/", WEBHOOK_SECRET, ["ping.never"])


# ---- parsing Stripe's own example objects --------------------------------------------------------


def test_stripe_example_payment_intents_map_to_every_status() -> None:
    example = FIXTURES["payment_intent"]
    assert example["status"] == "requires_payment_method" and example["last_payment_error"]
    failed = mapping.charge_from_payment_intent(example)
    assert failed.id == example["id"] and failed.status is ChargeStatus.FAILED and failed.amount == Money(1099, "USD")
    assert failed.failure_code == "generic_decline" and failed.capture
    expected = {
        "succeeded": ChargeStatus.SUCCEEDED, "processing": ChargeStatus.PROCESSING,
        "requires_capture": ChargeStatus.AUTHORIZED, "canceled": ChargeStatus.CANCELED,
        "requires_confirmation": ChargeStatus.CREATED, "requires_action": ChargeStatus.REQUIRES_ACTION,
    }
    for raw, ours in expected.items():
        assert mapping.charge_from_payment_intent({**example, "status": raw, "last_payment_error": None}).status is ours
    fresh = {**example, "last_payment_error": None}
    assert mapping.charge_from_payment_intent(fresh).status is ChargeStatus.CREATED, "no attempt yet"
    action = mapping.charge_from_payment_intent({**example, "status": "requires_action", "next_action": {
        "type": "redirect_to_url", "redirect_to_url": {"url": "https://hooks.stripe.com/3d", "return_url": None}}})
    assert action.next_action == {"type": "redirect_to_url", "redirect_to_url": {"url": "https://hooks.stripe.com/3d", "return_url": None}}
    insufficient = mapping.charge_from_payment_intent({**example, "last_payment_error": {
        "code": "card_declined", "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."}})
    assert insufficient.failure_code == "insufficient_funds" and insufficient.failure_message.startswith("Your card")
    with_charge = mapping.charge_from_payment_intent({**example, "status": "succeeded", "last_payment_error": None,
        "amount": 100, "latest_charge": {**FIXTURES["charge"], "amount_captured": 100, "amount_refunded": 40}})
    assert (with_charge.amount_captured, with_charge.amount_refunded) == (Money(100, "USD"), Money(40, "USD"))


def test_stripe_example_charge_refund_dispute_method_and_setup_intent_parse() -> None:
    charge = FIXTURES["charge"]
    about_intent = mapping.event_from(stripe_event("charge.refunded", {**charge, "payment_intent": "pi_123"}))
    assert (about_intent.type, about_intent.object_type, about_intent.object_id) == ("charge.refunded", "charge", "pi_123")
    bare = mapping.event_from(stripe_event("charge.succeeded", charge))
    assert bare.object_id == charge["id"] and bare.type == "charge.succeeded"

    refund = mapping.refund_from(FIXTURES["refund"])
    assert refund.id == FIXTURES["refund"]["id"] and refund.amount == Money(100, "USD")
    assert refund.status is RefundStatus.SUCCEEDED and refund.charge_id == FIXTURES["refund"]["charge"]
    assert mapping.refund_from({**FIXTURES["refund"], "payment_intent": "pi_9"}).charge_id == "pi_9"
    assert mapping.refund_from({**FIXTURES["refund"], "status": "pending"}).status is RefundStatus.PENDING

    example = FIXTURES["dispute"]
    dispute = mapping.dispute_from(example)
    assert dispute.id == example["id"] and dispute.amount == Money(1000, "USD") and dispute.reason == "general"
    assert dispute.status is DisputeStatus.OPEN and dispute.provider_status == "warning_needs_response"
    assert dispute.charge_id == example["charge"]
    assert mapping.dispute_from({**example, "payment_intent": "pi_7"}).charge_id == "pi_7"
    for raw, ours in {"won": DisputeStatus.WON, "lost": DisputeStatus.LOST, "needs_response": DisputeStatus.OPEN,
                      "under_review": DisputeStatus.OPEN, "warning_closed": DisputeStatus.WON}.items():
        assert mapping.dispute_from({**example, "status": raw}).status is ours

    method = mapping.payment_method_from(FIXTURES["payment_method"])
    assert (method.type, method.brand, method.last4, method.exp_month, method.exp_year) == ("credit_card", "visa", "4242", 8, 2030)

    setup = mapping.setup_intent_from(FIXTURES["setup_intent"])
    assert setup["id"] == FIXTURES["setup_intent"]["id"] and setup["client_secret"].startswith(setup["id"])


@pytest.mark.parametrize("stripe_type, ours, object_type, fixture", [
    ("payment_intent.succeeded", "charge.succeeded", "charge", "payment_intent"),
    ("payment_intent.payment_failed", "charge.failed", "charge", "payment_intent"),
    ("payment_intent.requires_action", "charge.requires_action", "charge", "payment_intent"),
    ("payment_intent.canceled", "charge.canceled", "charge", "payment_intent"),
    ("payment_intent.processing", "charge.processing", "charge", "payment_intent"),
    ("payment_intent.amount_capturable_updated", "charge.authorized", "charge", "payment_intent"),
    ("refund.updated", "refund.succeeded", "refund", "refund"),
    ("charge.refund.updated", "refund.succeeded", "refund", "refund"),
    ("charge.dispute.created", "dispute.opened", "dispute", "dispute"),
    ("charge.dispute.updated", "dispute.updated", "dispute", "dispute"),
    ("charge.dispute.closed", "dispute.closed", "dispute", "dispute"),
    ("payment_method.automatically_updated", "payment_method.updated", "payment_method", "payment_method"),
    ("payment_method.detached", "payment_method.detached", "payment_method", "payment_method"),
])
def test_stripe_events_are_normalised(stripe_type: str, ours: str, object_type: str, fixture: str) -> None:
    obj = FIXTURES[fixture]
    event = mapping.event_from(stripe_event(stripe_type, obj))
    assert (event.type, event.object_type, event.object_id) == (ours, object_type, obj["id"])
    assert event.type in EVENT_TYPES and event.data == obj


def test_stripe_example_event_of_another_kind_keeps_its_type() -> None:
    example = FIXTURES["event"]
    event = mapping.event_from(example)
    assert event.id == example["id"] and event.type == example["type"] and event.object_type == example["data"]["object"]["object"]
    subscription = mapping.event_from(stripe_event("customer.subscription.deleted", {"id": "sub_1", "object": "subscription"}))
    assert (subscription.type, subscription.object_type) == ("subscription.canceled", "subscription")
    failed_refund = mapping.event_from(stripe_event("refund.failed", {**FIXTURES["refund"], "status": "failed"}))
    assert failed_refund.type == "refund.failed"


def test_unsupported_is_refused_before_any_call() -> None:
    provider = StripeProvider("stripe", config(closed_port()))
    assert provider.capabilities.partial_refunds and provider.capabilities.off_session_charges
    with pytest.raises(NotSupported):
        provider.capabilities.require("provider_subscriptions")


# ---- end to end ------------------------------------------------------------------------------------


def add_stripe_provider(api: Api, admin_token: str, localstripe: LocalStripe) -> str:
    provider_id = "stripe_" + new_id("x")[-10:].lower()
    with api.client(admin_token) as admin:
        made = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": "stripe", "display_name": "Stripe (localstripe)",
            "config": {"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET, "api_base": localstripe.url,
                       "localstripe": True},
        })
    assert made.status_code == 201, made.text
    return provider_id


def test_an_order_is_paid_and_refunded_through_stripe(api: Api, engine: Engine, admin_token: str, localstripe: LocalStripe) -> None:
    from tests.test_checkout import checkout, customer, order, product

    provider_id = add_stripe_provider(api, admin_token, localstripe)
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 2500, currency="EUR"), 1))
    with api.client(ada.token) as client:
        paid = checkout(client, made["id"], token=localstripe.card(), provider_id=provider_id)
        assert paid.status_code == 200, paid.text
        payment = paid.json()["payment"]
        assert payment["status"] == "completed" and payment["provider_id"] == provider_id
    [intent] = localstripe.payment_intents_with("payment_id", payment["id"])
    assert intent["status"] == "succeeded" and intent["amount"] == made["total_cents"]
    assert len(localstripe.charges_of(intent["id"])) == 1
    with api.client(admin_token) as admin:
        part = admin.post(f"/v1/payments/{payment['id']}/refunds", json={"amount_cents": 1000})
        assert part.status_code == 201, part.text
        assert part.json()["status"] == "succeeded"
        rest = admin.post(f"/v1/payments/{payment['id']}/refunds", json={})
        assert rest.status_code == 201 and rest.json()["amount_cents"] == made["total_cents"] - 1000
    refunded = StripeProvider(provider_id, config(localstripe.url)).get_charge(intent["id"])
    assert refunded.amount_refunded == refunded.amount_captured == Money(made["total_cents"], "EUR")


def test_three_d_secure_and_a_decline_through_the_api_with_stripe(
    api: Api, engine: Engine, admin_token: str, localstripe: LocalStripe,
) -> None:
    from tests.test_checkout import checkout, customer, order, product
    from tests.test_organizations import assert_problem

    provider_id = add_stripe_provider(api, admin_token, localstripe)
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 1500, currency="EUR"), 1))
    with api.client(ada.token) as client:
        declined = checkout(client, made["id"], token=localstripe.card("4000000000000341"), provider_id=provider_id)
        assert assert_problem(declined, 402, "payment_declined")["decline_code"] == "generic_decline"
        waiting = checkout(client, made["id"], token=localstripe.card("4000002500003155"), provider_id=provider_id)
        assert waiting.status_code == 202, waiting.text
        payment = waiting.json()["payment"]
        assert payment["next_action"]["type"] == "use_stripe_sdk"
        [intent] = localstripe.payment_intents_with("payment_id", payment["id"])
        localstripe.authenticate(intent["id"])
        confirmed = client.post(f"/v1/payments/{payment['id']}/confirm")
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["order"]["status"] == "paid"
    assert len(localstripe.charges_of(intent["id"])) == 1


def add_stripe_provider_at(api: Api, admin_token: str, api_base: str) -> str:
    provider_id = "stripe_" + new_id("x")[-10:].lower()
    with api.client(admin_token) as admin:
        made = admin.post("/v1/payment-providers", json={
            "id": provider_id, "kind": "stripe", "display_name": "Stripe (localstripe)",
            "config": {"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET, "api_base": api_base, "localstripe": True},
        })
    assert made.status_code == 201, made.text
    return provider_id


def test_a_checkout_whose_stripe_answer_was_lost_is_finished_by_the_retry_with_one_charge(
    api: Api, engine: Engine, admin_token: str, localstripe: LocalStripe,
) -> None:
    from tests.test_checkout import checkout, customer, order, product
    from tests.test_organizations import assert_problem

    with losing_answers(localstripe.url) as proxy:
        provider_id = add_stripe_provider_at(api, admin_token, proxy.url)
        ada = customer(api, engine)
        made = order(api, ada.token, (product(engine, 3100, currency="EUR"), 1))
        token = localstripe.card()
        with api.client(ada.token) as client:
            proxy.lose = "/confirm"  # Stripe charges; Billfold never hears
            assert_problem(checkout(client, made["id"], token=token, provider_id=provider_id), 503, "provider_unavailable")
            [payment] = client.get(f"/v1/orders/{made['id']}").json()["payments"]
            assert payment["status"] == "pending" and proxy.lost
            retried = checkout(client, made["id"], token=token, provider_id=provider_id)
            assert retried.status_code == 200, retried.text
            assert retried.json()["payment"]["id"] == payment["id"] and retried.json()["order"]["status"] == "paid"
    [intent] = localstripe.payment_intents_with("payment_id", payment["id"])
    assert [c["status"] for c in localstripe.charges_of(intent["id"])] == ["succeeded"]


def test_a_lost_stripe_answer_is_settled_by_stripes_own_webhook(
    api: Api, engine: Engine, admin_token: str, localstripe: LocalStripe,
) -> None:
    from tests.test_checkout import checkout, customer, order, product
    from tests.test_checkout_recovery import payments_of
    from tests.test_organizations import assert_problem
    from tests.test_webhooks_processing import process

    with losing_answers(localstripe.url) as proxy:
        provider_id = add_stripe_provider_at(api, admin_token, proxy.url)
        endpoint = f"billfold-{provider_id}"
        localstripe.send_webhooks(endpoint, f"{api.url}/v1/webhooks/{provider_id}", WEBHOOK_SECRET, ["payment_intent.succeeded"])
        try:
            ada = customer(api, engine)
            made = order(api, ada.token, (product(engine, 4100, currency="EUR"), 1))
            with api.client(ada.token) as client:
                proxy.lose = "/confirm"
                assert_problem(checkout(client, made["id"], token=localstripe.card(), provider_id=provider_id),
                               503, "provider_unavailable")
            [payment] = payments_of(engine, made["id"])
            assert payment.status == "pending"
            [intent] = localstripe.payment_intents_with("payment_id", payment.id)
            deadline, stored = time.monotonic() + 15, None
            while stored is None and time.monotonic() < deadline:
                with engine.connect() as connection:
                    rows = connection.execute(sa.text(
                        "SELECT id, payload FROM payment_webhooks WHERE provider_id = :p AND event_type = 'charge.succeeded'"
                    ), {"p": provider_id}).all()
                stored = next((r.id for r in rows if intent["id"] in (r.payload if isinstance(r.payload, str) else json.dumps(r.payload))), None)
                time.sleep(0.2)
            assert stored, "localstripe's signed payment_intent.succeeded never arrived"
            assert process(engine, api.data_dir) >= 1
        finally:
            localstripe.send_webhooks(endpoint, closed_port() + "/", WEBHOOK_SECRET, ["ping.never"])
    [payment] = payments_of(engine, made["id"])
    assert payment.status == "completed" and payment.provider_payment_id == intent["id"]
    with engine.connect() as connection:
        note = connection.execute(sa.text("SELECT note FROM payment_webhooks WHERE id = :id"), {"id": stored}).scalar_one()
    assert payment.id in note and "completed" in note
    assert len(localstripe.charges_of(intent["id"])) == 1
