"""The provider registry, capabilities as data, and the normalised errors."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from billfold.kit.errors import BillfoldError, ConfigurationError
from billfold.kit.money import Money
from billfold.providers import (
    Capabilities,
    ChargeResult,
    ChargeStatus,
    Declined,
    DeclineCode,
    InvalidProviderRequest,
    NotSupported,
    ProviderUnavailable,
    WebhookSignatureInvalid,
    adapter_for,
    register,
    registered_kinds,
)
from billfold.providers import registry
from billfold.providers.sandbox import SandboxProvider


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    kinds: list[str] = []
    yield kinds
    for kind in kinds:
        registry.unregister(kind)


def test_the_sandbox_is_built_in_and_chosen_by_id_or_by_config_kind() -> None:
    assert "sandbox" in registered_kinds()
    by_id = adapter_for("sandbox", {})
    by_kind = adapter_for("test_shop_sandbox", {"kind": "sandbox"})
    assert isinstance(by_id, SandboxProvider) and isinstance(by_kind, SandboxProvider)
    assert by_kind.provider_id == "test_shop_sandbox" and by_kind.kind == "sandbox"


def test_an_unknown_kind_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as refused:
        adapter_for("stripe_eu", {"kind": "carrier_pigeon"})
    assert "carrier_pigeon" in refused.value.detail and "sandbox" in refused.value.detail


def test_a_registered_factory_gets_the_id_and_a_plain_config(cleanup: list[str]) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def factory(provider_id: str, config: Mapping[str, Any]) -> SandboxProvider:
        seen.append((provider_id, dict(config)))
        return SandboxProvider(provider_id, config)

    register("fake_bank", factory)
    cleanup.append("fake_bank")
    adapter = adapter_for("bank_1", {"kind": "fake_bank", "webhook_secret": None})
    assert seen == [("bank_1", {"kind": "fake_bank", "webhook_secret": None})]
    assert adapter.provider_id == "bank_1" and "fake_bank" in registered_kinds()
    with pytest.raises(ValueError):
        register("fake_bank", factory)
    register("fake_bank", factory, replace=True)
    with pytest.raises(ValueError):
        register("Not A Kind", factory)


def test_capabilities_refuse_a_missing_feature_by_name() -> None:
    caps = Capabilities(refunds=True, currencies=frozenset({"USD"}))
    caps.require("refunds")
    with pytest.raises(NotSupported) as refused:
        caps.require("partial_refunds", "Authorize.net")
    assert refused.value.extra == {"capability": "partial_refunds"} and "Authorize.net" in refused.value.detail
    with pytest.raises(ValueError):
        caps.require("teleport")
    assert caps.supports_currency("usd") and not caps.supports_currency("EUR")
    assert Capabilities().supports_currency("EUR")  # None: every currency


def test_errors_are_billfold_errors_with_stable_codes_and_statuses() -> None:
    cases = [
        (Declined("no", DeclineCode.INSUFFICIENT_FUNDS), 402, "payment_declined"),
        (ProviderUnavailable("timeout"), 503, "provider_unavailable"),
        (InvalidProviderRequest("bad"), 400, "invalid_provider_request"),
        (InvalidProviderRequest("bad", code="refund_exceeds_captured"), 400, "refund_exceeds_captured"),
        (NotSupported("no"), 422, "not_supported"),
        (WebhookSignatureInvalid("no"), 400, "webhook_signature_invalid"),
    ]
    for error, status, code in cases:
        assert isinstance(error, BillfoldError)
        assert (error.status, error.code, error.to_problem()["code"]) == (status, code, code)
    assert InvalidProviderRequest.code == "invalid_provider_request"  # an instance code leaves the class alone


def test_a_decline_says_whether_a_retry_can_help() -> None:
    assert Declined("x", "insufficient_funds").hard is False
    assert Declined("x", "expired_card").hard is True
    assert Declined("x", "something_new_from_the_bank").decline_code is DeclineCode.GENERIC_DECLINE


def test_results_round_trip_through_their_dicts() -> None:
    sandbox = SandboxProvider("sandbox", {})
    customer = sandbox.create_customer(email="a@example.com", name="A", metadata={"user": "usr_1"}, idempotency_key="c")
    method = sandbox.attach_payment_method(customer_id=customer.id, token="tok_sandbox_visa", idempotency_key="m")
    charge = sandbox.charge(amount=Money(150, "KWD"), payment_method_id=method.id, idempotency_key="p")
    refund = sandbox.refund(charge_id=charge.id, amount=Money(1, "KWD"), idempotency_key="r")
    for result in (customer, method, charge, refund):
        assert type(result).from_dict(result.to_dict()) == result
    assert ChargeResult.from_dict(charge.to_dict()).status is ChargeStatus.SUCCEEDED
    assert "4242424242424242" not in str(method.to_dict())
