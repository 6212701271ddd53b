"""The sandbox provider: each test token's outcome, idempotency, 3-D Secure, capture, refunds,
restarts and listing. No database of Billfold's: the sandbox keeps its own state."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billfold.kit import clock
from billfold.kit.money import Money
from billfold.providers import (
    ChargeStatus,
    Declined,
    DeclineCode,
    IdempotencyMismatch,
    InvalidProviderRequest,
    NotSupported,
    ProviderAdapter,
    ProviderObjectNotFound,
    ProviderUnavailable,
    RefundStatus,
    adapter_for,
)
from billfold.providers.sandbox import TEST_CARDS, SandboxProvider

USD = lambda cents: Money(cents, "USD")  # noqa: E731


@pytest.fixture
def state_path(tmp_path: Path) -> str:
    return str(tmp_path / "sandbox.sqlite3")


@pytest.fixture
def sandbox(state_path: str) -> Iterator[SandboxProvider]:
    provider = SandboxProvider("sandbox", {"state_path": state_path})
    yield provider
    provider.close()


def saved_method(sandbox: SandboxProvider, token: str, key: str = "setup") -> tuple[str, str]:
    customer = sandbox.create_customer(email="ada@example.com", name="Ada", idempotency_key=f"{key}-customer")
    method = sandbox.attach_payment_method(customer_id=customer.id, token=token, idempotency_key=f"{key}-method")
    return customer.id, method.id


# ---- every token -------------------------------------------------------------------------------


def test_the_sandbox_is_a_provider_adapter_with_every_capability_it_can_serve(sandbox: SandboxProvider) -> None:
    assert isinstance(sandbox, ProviderAdapter)
    caps = sandbox.capabilities
    assert all([caps.saved_methods, caps.off_session_charges, caps.separate_capture, caps.partial_capture,
                caps.refunds, caps.partial_refunds, caps.customer_actions])
    assert caps.supports_currency("JPY") and caps.supports_currency("kwd") and not caps.supports_currency("XAU")
    assert "charge.succeeded" in caps.webhook_events


@pytest.mark.parametrize("token, brand, last4", [
    ("tok_sandbox_visa", "visa", "4242"), ("tok_sandbox_mastercard", "mastercard", "4444"),
    ("tok_sandbox_amex", "amex", "8431"),
])
def test_a_good_card_is_charged_in_full(sandbox: SandboxProvider, token: str, brand: str, last4: str) -> None:
    charge = sandbox.charge(amount=USD(1999), token=token, description="T-shirt", metadata={"order": "ord_1"},
                            idempotency_key="pay-1")
    assert charge.status is ChargeStatus.SUCCEEDED and charge.provider_status == "succeeded"
    assert charge.amount == charge.amount_captured == USD(1999)
    assert charge.amount_refunded == USD(0)
    assert charge.metadata == {"order": "ord_1"} and charge.description == "T-shirt"
    assert sandbox.get_charge(charge.id) == charge
    customer, method = saved_method(sandbox, token)
    details = sandbox.get_payment_method(method)
    assert (details.type, details.brand, details.last4, details.exp_month) == ("credit_card", brand, last4, 12)
    assert details.exp_year > clock.now().year


@pytest.mark.parametrize("token, code, hard", [
    ("tok_sandbox_decline", DeclineCode.GENERIC_DECLINE, False),
    ("tok_sandbox_insufficient_funds", DeclineCode.INSUFFICIENT_FUNDS, False),
    ("tok_sandbox_expired_card", DeclineCode.EXPIRED_CARD, True),
    ("tok_sandbox_lost_card", DeclineCode.LOST_CARD, True),
])
def test_a_declined_card_raises_declined_and_the_failed_charge_is_recorded(
    sandbox: SandboxProvider, token: str, code: DeclineCode, hard: bool
) -> None:
    with pytest.raises(Declined) as declined:
        sandbox.charge(amount=USD(500), token=token, idempotency_key="pay-1")
    error = declined.value
    assert (error.decline_code, error.hard, error.status, error.code) == (code, hard, 402, "payment_declined")
    assert error.charge is not None and error.charge.status is ChargeStatus.FAILED
    assert error.charge.failure_code == code and error.charge.amount_captured == USD(0)
    assert sandbox.get_charge(error.charge.id).status is ChargeStatus.FAILED
    assert error.to_problem()["decline_code"] == code


def test_a_saved_insufficient_funds_card_declines_every_off_session_renewal(sandbox: SandboxProvider) -> None:
    customer, method = saved_method(sandbox, "tok_sandbox_insufficient_funds")
    for attempt in range(3):
        with pytest.raises(Declined) as declined:
            sandbox.charge(amount=USD(1500), customer_id=customer, payment_method_id=method, off_session=True,
                           idempotency_key=f"renewal-sub_1-attempt-{attempt}")
        assert declined.value.decline_code is DeclineCode.INSUFFICIENT_FUNDS and not declined.value.hard
    assert [c.status for c in sandbox.list_charges()] == [ChargeStatus.FAILED] * 3


def test_a_saved_expired_card_looks_expired_and_declines_hard(sandbox: SandboxProvider) -> None:
    customer, method = saved_method(sandbox, "tok_sandbox_expired_card")
    assert sandbox.get_payment_method(method).exp_year < clock.now().year
    with pytest.raises(Declined) as declined:
        sandbox.charge(amount=USD(1500), payment_method_id=method, off_session=True, idempotency_key="renew")
    assert declined.value.hard


def test_an_unavailable_provider_records_nothing_and_the_key_stays_free(sandbox: SandboxProvider) -> None:
    with pytest.raises(ProviderUnavailable) as unavailable:
        sandbox.charge(amount=USD(700), token="tok_sandbox_unavailable", idempotency_key="pay-1")
    assert unavailable.value.status == 503
    assert sandbox.list_charges() == []
    # The key was never used: the same key with another card goes through.
    assert sandbox.charge(amount=USD(700), token="tok_sandbox_visa", idempotency_key="pay-1").status == "succeeded"


def test_a_timeout_after_success_is_found_by_the_retry_with_the_same_key(sandbox: SandboxProvider) -> None:
    with pytest.raises(ProviderUnavailable):
        sandbox.charge(amount=USD(4200), token="tok_sandbox_timeout_after_success", idempotency_key="pay-ord_9-1")
    [recorded] = sandbox.list_charges()
    assert recorded.status is ChargeStatus.SUCCEEDED  # it did happen
    retried = sandbox.charge(amount=USD(4200), token="tok_sandbox_timeout_after_success", idempotency_key="pay-ord_9-1")
    assert retried == recorded
    assert len(sandbox.list_charges()) == 1


def test_every_listed_token_is_accepted(sandbox: SandboxProvider) -> None:
    customer = sandbox.create_customer(idempotency_key="c").id
    for token in TEST_CARDS:
        assert sandbox.attach_payment_method(customer_id=customer, token=token, idempotency_key=token).last4


def test_an_unknown_token_or_a_card_number_is_refused(sandbox: SandboxProvider) -> None:
    for token in ("tok_visa", "4242424242424242"):
        with pytest.raises(InvalidProviderRequest) as refused:
            sandbox.charge(amount=USD(100), token=token, idempotency_key=f"k-{token}")
        assert refused.value.code == "unknown_token"


# ---- idempotency ---------------------------------------------------------------------------------


def test_the_same_key_and_parameters_replay_the_first_result(sandbox: SandboxProvider) -> None:
    first = sandbox.charge(amount=USD(1000), token="tok_sandbox_visa", idempotency_key="k")
    again = sandbox.charge(amount=USD(1000), token="tok_sandbox_visa", idempotency_key="k")
    assert again == first and len(sandbox.list_charges()) == 1


def test_a_decline_is_a_final_answer_for_its_key(sandbox: SandboxProvider) -> None:
    with pytest.raises(Declined) as first:
        sandbox.charge(amount=USD(1000), token="tok_sandbox_decline", idempotency_key="k")
    with pytest.raises(Declined) as again:
        sandbox.charge(amount=USD(1000), token="tok_sandbox_decline", idempotency_key="k")
    assert again.value.charge == first.value.charge and len(sandbox.list_charges()) == 1


@pytest.mark.parametrize("changes", [
    {"amount": USD(1001)}, {"amount": Money(1000, "EUR")}, {"token": "tok_sandbox_mastercard"},
    {"capture": False}, {"description": "other"}, {"metadata": {"a": "b"}},
])
def test_the_same_key_with_other_parameters_is_refused(sandbox: SandboxProvider, changes: dict) -> None:
    base = {"amount": USD(1000), "token": "tok_sandbox_visa", "idempotency_key": "k"}
    sandbox.charge(**base)
    with pytest.raises(IdempotencyMismatch) as mismatch:
        sandbox.charge(**{**base, **changes})
    assert isinstance(mismatch.value, InvalidProviderRequest) and mismatch.value.code == "idempotency_mismatch"
    assert len(sandbox.list_charges()) == 1


def test_keys_are_scoped_per_operation(sandbox: SandboxProvider) -> None:
    charge = sandbox.charge(amount=USD(1000), token="tok_sandbox_visa", idempotency_key="ord_1")
    refund = sandbox.refund(charge_id=charge.id, amount=USD(100), idempotency_key="ord_1")
    customer = sandbox.create_customer(email="x@example.com", idempotency_key="ord_1")
    assert refund.amount == USD(100) and customer.email == "x@example.com"


def test_replayed_refunds_and_customers_do_not_repeat(sandbox: SandboxProvider) -> None:
    charge = sandbox.charge(amount=USD(1000), token="tok_sandbox_visa", idempotency_key="c")
    refunds = [sandbox.refund(charge_id=charge.id, amount=USD(300), idempotency_key="r") for _ in range(3)]
    assert len({r.id for r in refunds}) == 1 and sandbox.get_charge(charge.id).amount_refunded == USD(300)
    customers = {sandbox.create_customer(email="a@example.com", idempotency_key="cu").id for _ in range(3)}
    assert len(customers) == 1


def test_an_empty_or_overlong_key_is_refused(sandbox: SandboxProvider) -> None:
    for key in ("", "k" * 256):
        with pytest.raises(InvalidProviderRequest) as refused:
            sandbox.charge(amount=USD(100), token="tok_sandbox_visa", idempotency_key=key)
        assert refused.value.code == "invalid_idempotency_key"


# ---- 3-D Secure ------------------------------------------------------------------------------------


def test_requires_action_then_confirm_succeeds(sandbox: SandboxProvider) -> None:
    pending = sandbox.charge(amount=USD(2500), token="tok_sandbox_3ds_success", idempotency_key="pay")
    assert pending.status is ChargeStatus.REQUIRES_ACTION and pending.provider_status == "requires_action"
    assert pending.next_action == {"type": "sandbox_authenticate", "charge_id": pending.id}
    assert pending.amount_captured == USD(0)
    confirmed = sandbox.confirm(charge_id=pending.id, idempotency_key="pay-confirm")
    assert confirmed.status is ChargeStatus.SUCCEEDED and confirmed.amount_captured == USD(2500)
    assert confirmed.next_action is None
    assert sandbox.confirm(charge_id=pending.id, idempotency_key="pay-confirm") == confirmed  # replay
    with pytest.raises(InvalidProviderRequest) as again:
        sandbox.confirm(charge_id=pending.id, idempotency_key="pay-confirm-2")
    assert again.value.code == "charge_not_confirmable"


def test_requires_action_then_confirm_fails(sandbox: SandboxProvider) -> None:
    pending = sandbox.charge(amount=USD(2500), token="tok_sandbox_3ds_fail", idempotency_key="pay")
    assert pending.status is ChargeStatus.REQUIRES_ACTION
    with pytest.raises(Declined) as declined:
        sandbox.confirm(charge_id=pending.id, idempotency_key="pay-confirm")
    assert declined.value.decline_code is DeclineCode.AUTHENTICATION_FAILED
    assert sandbox.get_charge(pending.id).status is ChargeStatus.FAILED
    with pytest.raises(Declined):  # the decline is replayed for the same key
        sandbox.confirm(charge_id=pending.id, idempotency_key="pay-confirm")


def test_a_card_needing_authentication_declines_off_session(sandbox: SandboxProvider) -> None:
    customer, method = saved_method(sandbox, "tok_sandbox_3ds_success")
    with pytest.raises(Declined) as declined:
        sandbox.charge(amount=USD(900), customer_id=customer, payment_method_id=method, off_session=True,
                       idempotency_key="renew")
    assert declined.value.decline_code is DeclineCode.AUTHENTICATION_REQUIRED and not declined.value.hard
    # Back on-session, the customer can authenticate.
    pending = sandbox.charge(amount=USD(900), customer_id=customer, payment_method_id=method, idempotency_key="r2")
    assert sandbox.confirm(charge_id=pending.id, idempotency_key="r2-confirm").status is ChargeStatus.SUCCEEDED


def test_a_charge_waiting_for_action_can_be_canceled(sandbox: SandboxProvider) -> None:
    pending = sandbox.charge(amount=USD(2500), token="tok_sandbox_3ds_success", idempotency_key="pay")
    assert sandbox.cancel(charge_id=pending.id, idempotency_key="cancel").status is ChargeStatus.CANCELED


def test_confirming_with_manual_capture_authorizes(sandbox: SandboxProvider) -> None:
    pending = sandbox.charge(amount=USD(2500), token="tok_sandbox_3ds_success", capture=False, idempotency_key="p")
    authorized = sandbox.confirm(charge_id=pending.id, idempotency_key="c")
    assert authorized.status is ChargeStatus.AUTHORIZED and authorized.amount_captured == USD(0)


# ---- capture and cancel ----------------------------------------------------------------------------


def test_authorize_then_capture_in_full(sandbox: SandboxProvider) -> None:
    held = sandbox.charge(amount=USD(5000), token="tok_sandbox_visa", capture=False, idempotency_key="auth")
    assert held.status is ChargeStatus.AUTHORIZED and held.provider_status == "requires_capture"
    assert held.amount_captured == USD(0)
    with pytest.raises(InvalidProviderRequest):
        sandbox.refund(charge_id=held.id, idempotency_key="too-early")
    captured = sandbox.capture(charge_id=held.id, idempotency_key="cap")
    assert captured.status is ChargeStatus.SUCCEEDED and captured.amount_captured == USD(5000)


def test_partial_capture_releases_the_rest_and_limits_refunds(sandbox: SandboxProvider) -> None:
    held = sandbox.charge(amount=USD(5000), token="tok_sandbox_visa", capture=False, idempotency_key="auth")
    with pytest.raises(InvalidProviderRequest) as too_much:
        sandbox.capture(charge_id=held.id, amount=USD(5001), idempotency_key="cap-1")
    assert too_much.value.code == "capture_exceeds_authorized"
    captured = sandbox.capture(charge_id=held.id, amount=USD(3000), idempotency_key="cap-2")
    assert captured.amount_captured == USD(3000) and captured.amount == USD(5000)
    with pytest.raises(InvalidProviderRequest) as over:
        sandbox.refund(charge_id=held.id, amount=USD(3001), idempotency_key="ref")
    assert over.value.code == "refund_exceeds_captured"
    with pytest.raises(InvalidProviderRequest) as twice:
        sandbox.capture(charge_id=held.id, idempotency_key="cap-3")
    assert twice.value.code == "charge_not_capturable"


def test_cancel_voids_an_authorization_but_not_a_captured_charge(sandbox: SandboxProvider) -> None:
    held = sandbox.charge(amount=USD(5000), token="tok_sandbox_visa", capture=False, idempotency_key="auth")
    voided = sandbox.cancel(charge_id=held.id, idempotency_key="void")
    assert voided.status is ChargeStatus.CANCELED and voided.provider_status == "canceled" and voided.is_final
    with pytest.raises(InvalidProviderRequest):
        sandbox.capture(charge_id=held.id, idempotency_key="cap")
    paid = sandbox.charge(amount=USD(5000), token="tok_sandbox_visa", idempotency_key="paid")
    with pytest.raises(InvalidProviderRequest) as refused:
        sandbox.cancel(charge_id=paid.id, idempotency_key="void-2")
    assert refused.value.code == "charge_not_cancelable"


def test_a_timed_out_authorization_is_recorded_as_authorized(sandbox: SandboxProvider) -> None:
    with pytest.raises(ProviderUnavailable):
        sandbox.charge(amount=USD(100), token="tok_sandbox_timeout_after_success", capture=False, idempotency_key="a")
    held = sandbox.charge(amount=USD(100), token="tok_sandbox_timeout_after_success", capture=False, idempotency_key="a")
    assert held.status is ChargeStatus.AUTHORIZED


# ---- refunds ---------------------------------------------------------------------------------------


def test_full_refund(sandbox: SandboxProvider) -> None:
    charge = sandbox.charge(amount=USD(1234), token="tok_sandbox_visa", idempotency_key="c")
    refund = sandbox.refund(charge_id=charge.id, reason="requested_by_customer", idempotency_key="r")
    assert refund.amount == USD(1234) and refund.status is RefundStatus.SUCCEEDED and refund.charge_id == charge.id
    assert sandbox.get_refund(refund.id) == refund
    fetched = sandbox.get_charge(charge.id)
    assert fetched.amount_refunded == USD(1234) and fetched.amount_refundable == USD(0)
    assert fetched.status is ChargeStatus.SUCCEEDED  # refunded money is shown by amount_refunded
    with pytest.raises(InvalidProviderRequest) as again:
        sandbox.refund(charge_id=charge.id, amount=USD(1), idempotency_key="r2")
    assert again.value.code == "charge_already_refunded"


def test_partial_refunds_add_up_and_over_refund_is_refused(sandbox: SandboxProvider) -> None:
    charge = sandbox.charge(amount=USD(1000), token="tok_sandbox_visa", idempotency_key="c")
    sandbox.refund(charge_id=charge.id, amount=USD(300), idempotency_key="r1")
    sandbox.refund(charge_id=charge.id, amount=USD(500), idempotency_key="r2")
    with pytest.raises(InvalidProviderRequest) as over:
        sandbox.refund(charge_id=charge.id, amount=USD(201), idempotency_key="r3")
    assert over.value.code == "refund_exceeds_captured"
    rest = sandbox.refund(charge_id=charge.id, idempotency_key="r4")  # no amount: whatever is left
    assert rest.amount == USD(200)
    assert sandbox.get_charge(charge.id).amount_refunded == USD(1000)
    assert [r.amount for r in sandbox.list_refunds_of(charge.id)] == [USD(300), USD(500), USD(200)]


def test_a_refund_refused_for_its_amount_keeps_its_key_free(sandbox: SandboxProvider) -> None:
    charge = sandbox.charge(amount=USD(1000), token="tok_sandbox_visa", idempotency_key="c")
    with pytest.raises(InvalidProviderRequest):
        sandbox.refund(charge_id=charge.id, amount=USD(1001), idempotency_key="r")
    with pytest.raises(InvalidProviderRequest) as mismatch:
        sandbox.refund(charge_id=charge.id, amount=Money(10, "EUR"), idempotency_key="r2")
    assert mismatch.value.code == "currency_mismatch"
    for bad in (USD(0), USD(-5)):
        with pytest.raises(InvalidProviderRequest):
            sandbox.refund(charge_id=charge.id, amount=bad, idempotency_key="r3")
    assert sandbox.refund(charge_id=charge.id, amount=USD(1000), idempotency_key="r").amount == USD(1000)


def test_a_refund_of_a_timeout_after_success_charge_is_made_then_times_out(sandbox: SandboxProvider) -> None:
    with pytest.raises(ProviderUnavailable):
        sandbox.charge(amount=USD(1000), token="tok_sandbox_timeout_after_success", idempotency_key="c")
    charge = sandbox.charge(amount=USD(1000), token="tok_sandbox_timeout_after_success", idempotency_key="c")
    with pytest.raises(ProviderUnavailable):
        sandbox.refund(charge_id=charge.id, amount=USD(400), reason="damaged", idempotency_key="r")
    [made] = sandbox.list_refunds_of(charge.id)
    assert made.amount == USD(400) and made.status is RefundStatus.SUCCEEDED, "it did happen"
    assert sandbox.get_refund(made.id) == made
    with pytest.raises(IdempotencyMismatch):  # the same key for another refund is refused, as real providers do
        sandbox.refund(charge_id=charge.id, amount=USD(400), reason="late", idempotency_key="r")
    assert sandbox.refund(charge_id=charge.id, amount=USD(400), reason="damaged", idempotency_key="r") == made
    assert sandbox.get_charge(charge.id).amount_refunded == USD(400)


def test_declined_and_unknown_charges_cannot_be_refunded(sandbox: SandboxProvider) -> None:
    with pytest.raises(Declined) as declined:
        sandbox.charge(amount=USD(1000), token="tok_sandbox_decline", idempotency_key="c")
    with pytest.raises(InvalidProviderRequest) as refused:
        sandbox.refund(charge_id=declined.value.charge.id, idempotency_key="r")
    assert refused.value.code == "charge_not_refundable"
    with pytest.raises(ProviderObjectNotFound) as missing:
        sandbox.refund(charge_id="ch_nope", idempotency_key="r2")
    assert missing.value.status == 404
    with pytest.raises(ProviderObjectNotFound):
        sandbox.get_charge("ch_nope")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(captured=st.integers(1, 10_000), asks=st.lists(st.one_of(st.none(), st.integers(-5, 12_000)), max_size=8))
def test_no_sequence_of_refunds_exceeds_what_was_captured(captured: int, asks: list[int | None]) -> None:
    sandbox = SandboxProvider("sandbox", {})  # in memory: a fresh provider per example
    charge = sandbox.charge(amount=Money(captured, "JPY"), token="tok_sandbox_visa", idempotency_key="c")
    refunded = 0
    for n, ask in enumerate(asks):
        try:
            refund = sandbox.refund(charge_id=charge.id, idempotency_key=f"r{n}",
                                    amount=None if ask is None else Money(ask, "JPY"))
        except InvalidProviderRequest:
            continue
        refunded += refund.amount.amount
        assert refund.amount.is_positive()
    assert refunded <= captured
    assert sandbox.get_charge(charge.id).amount_refunded == Money(refunded, "JPY")
    assert sum(r.amount.amount for r in sandbox.list_refunds_of(charge.id)) == refunded
    sandbox.close()


# ---- saved methods, customers --------------------------------------------------------------------


def test_a_saved_method_belongs_to_its_customer(sandbox: SandboxProvider) -> None:
    customer, method = saved_method(sandbox, "tok_sandbox_visa")
    other = sandbox.create_customer(idempotency_key="other").id
    with pytest.raises(InvalidProviderRequest) as refused:
        sandbox.charge(amount=USD(100), customer_id=other, payment_method_id=method, idempotency_key="k")
    assert refused.value.code == "payment_method_customer_mismatch"
    charge = sandbox.charge(amount=USD(100), payment_method_id=method, off_session=True, idempotency_key="k2")
    assert (charge.customer_id, charge.payment_method_id, charge.off_session) == (customer, method, True)


def test_a_detached_method_cannot_be_charged(sandbox: SandboxProvider) -> None:
    _, method = saved_method(sandbox, "tok_sandbox_visa")
    assert sandbox.detach_payment_method(payment_method_id=method, idempotency_key="d").detached
    with pytest.raises(InvalidProviderRequest) as refused:
        sandbox.charge(amount=USD(100), payment_method_id=method, off_session=True, idempotency_key="k")
    assert refused.value.code == "payment_method_detached"


def test_charge_needs_exactly_one_source_and_off_session_needs_a_saved_one(sandbox: SandboxProvider) -> None:
    _, method = saved_method(sandbox, "tok_sandbox_visa")
    for kwargs in ({}, {"token": "tok_sandbox_visa", "payment_method_id": method}):
        with pytest.raises(InvalidProviderRequest):
            sandbox.charge(amount=USD(100), idempotency_key="k", **kwargs)
    with pytest.raises(InvalidProviderRequest) as refused:
        sandbox.charge(amount=USD(100), token="tok_sandbox_visa", off_session=True, idempotency_key="k")
    assert refused.value.code == "off_session_needs_saved_method"
    with pytest.raises(InvalidProviderRequest):
        sandbox.charge(amount=USD(0), token="tok_sandbox_visa", idempotency_key="k")


# ---- capabilities ----------------------------------------------------------------------------------


def test_a_narrowed_sandbox_refuses_what_it_cannot_do_before_recording_anything() -> None:
    limited = SandboxProvider("limited", {"disable": ["partial_refunds", "separate_capture"], "currencies": ["USD"]})
    with pytest.raises(NotSupported) as currency:
        limited.charge(amount=Money(100, "EUR"), token="tok_sandbox_visa", idempotency_key="k")
    assert currency.value.status == 422 and currency.value.extra["capability"] == "currency"
    with pytest.raises(NotSupported):
        limited.charge(amount=USD(100), token="tok_sandbox_visa", capture=False, idempotency_key="k")
    charge = limited.charge(amount=USD(100), token="tok_sandbox_visa", idempotency_key="k")
    with pytest.raises(NotSupported):
        limited.refund(charge_id=charge.id, amount=USD(50), idempotency_key="r")
    assert limited.refund(charge_id=charge.id, idempotency_key="r").amount == USD(100)  # in full is fine
    assert len(limited.list_charges()) == 1


def test_unknown_capabilities_in_config_are_refused() -> None:
    with pytest.raises(ValueError):
        SandboxProvider("sandbox", {"disable": ["teleport"]})


# ---- state across restarts and periods -----------------------------------------------------------------


def test_state_survives_a_restart(state_path: str) -> None:
    before = SandboxProvider("sandbox", {"state_path": state_path})
    customer, method = saved_method(before, "tok_sandbox_visa")
    charge = before.charge(amount=USD(800), payment_method_id=method, off_session=True, idempotency_key="renew-1")
    before.refund(charge_id=charge.id, amount=USD(300), idempotency_key="refund-1")
    before.close()

    after = adapter_for("sandbox", {"state_path": state_path})
    assert isinstance(after, SandboxProvider)
    assert after.get_charge(charge.id).amount_refunded == USD(300)
    assert after.charge(amount=USD(800), payment_method_id=method, off_session=True, idempotency_key="renew-1") \
        == charge  # the idempotency record survived too
    with pytest.raises(InvalidProviderRequest) as over:
        after.refund(charge_id=charge.id, amount=USD(501), idempotency_key="refund-2")
    assert over.value.code == "refund_exceeds_captured"
    assert len(after.list_charges()) == 1 and after.get_customer(customer).email == "ada@example.com"


def test_charges_and_refunds_are_listed_by_period(sandbox: SandboxProvider, frozen_clock: clock.FrozenClock) -> None:
    start = frozen_clock.now()
    first = sandbox.charge(amount=USD(100), token="tok_sandbox_visa", idempotency_key="a")
    frozen_clock.advance("1d")
    second = sandbox.charge(amount=USD(200), token="tok_sandbox_visa", idempotency_key="b")
    refund = sandbox.refund(charge_id=first.id, amount=USD(50), idempotency_key="r")
    frozen_clock.advance("1d")
    third = sandbox.charge(amount=USD(300), token="tok_sandbox_visa", idempotency_key="c")

    day2 = start + timedelta(days=1)
    assert [c.id for c in sandbox.list_charges(start, day2)] == [first.id]
    assert [c.id for c in sandbox.list_charges(day2, day2 + timedelta(days=1))] == [second.id]
    assert [c.id for c in sandbox.list_charges(day2)] == [second.id, third.id]
    assert [c.id for c in sandbox.list_charges()] == [first.id, second.id, third.id]
    assert [r.id for r in sandbox.list_refunds(day2, day2 + timedelta(days=1))] == [refund.id]
    assert sandbox.list_refunds(start, day2) == []
    assert first.created == start and third.created == start + timedelta(days=2)


def test_times_are_the_clocks_even_when_it_is_moved(sandbox: SandboxProvider, frozen_clock: clock.FrozenClock) -> None:
    frozen_clock.set(datetime(2030, 5, 1, 12, tzinfo=clock.UTC))
    charge = sandbox.charge(amount=USD(100), token="tok_sandbox_visa", idempotency_key="a")
    assert charge.created == datetime(2030, 5, 1, 12, tzinfo=clock.UTC)
