"""Charges in two steps, as the Stripe and PayPal adapters make them: the provider's object is made
and its id stored on our payment (committed) before any money moves, then confirmed. A retry after
a lost answer fetches that object by the stored id and goes on with it, so it never depends on the
provider honouring an idempotency key. Run on the sandbox with ``two_step`` on, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from billfold.kit.db import session_factory
from billfold.models import PaymentProvider
from billfold.payments.details import PaymentDetails
from billfold.providers import registry
from billfold.providers.base import ChargeResult, ChargeStatus
from billfold.providers.errors import ProviderUnavailable
from billfold.providers.sandbox import SandboxProvider
from tests.accounts import Api
from tests.test_checkout import checkout, customer, events, order, product
from tests.test_checkout_recovery import later, payments_of, run_settle_sweep
from tests.test_organizations import assert_problem

TWO_STEP = "sandbox_two_step"
FLAKY = "sandbox_flaky_confirm"


class ConfirmNeverArrives(SandboxProvider):
    """The sandbox, but the first confirm of each charge is lost on the way to the provider (as if
    the process died between storing the object's id and confirming): nothing moves there."""

    lost: set[str] = set()

    def confirm(self, *, charge_id: str, idempotency_key: str) -> ChargeResult:
        if charge_id not in ConfirmNeverArrives.lost:
            ConfirmNeverArrives.lost.add(charge_id)
            raise ProviderUnavailable("the confirm never reached the provider")
        return super().confirm(charge_id=charge_id, idempotency_key=idempotency_key)


def _flaky(provider_id: str, config: Mapping[str, Any]) -> ConfirmNeverArrives:
    return ConfirmNeverArrives(provider_id, config)


@pytest.fixture
def providers(api: Api, engine: Engine) -> Iterator[dict[str, Path]]:
    """Two sandbox providers that charge in two steps, each with its own state file."""
    registry.register("sandbox_flaky", _flaky, replace=True)
    states = {pid: Path(api.data_dir) / f"{pid}.sqlite3" for pid in (TWO_STEP, FLAKY)}
    with session_factory(engine)() as session:
        for provider_id, kind in ((TWO_STEP, "sandbox"), (FLAKY, "sandbox_flaky")):
            config = {"kind": kind, "two_step": True, "state_path": str(states[provider_id])}
            row = session.get(PaymentProvider, provider_id)
            if row is None:
                session.add(PaymentProvider(id=provider_id, display_name=provider_id, config=config,
                                            supports_subscriptions=True, supports_saved_methods=True))
            else:
                row.config, row.is_active = config, True
        session.commit()
    yield states
    with session_factory(engine)() as session:  # other tests of the worker's database need not meet them
        for provider_id in (TWO_STEP, FLAKY):
            session.get(PaymentProvider, provider_id).is_active = False
        session.commit()
    registry.unregister("sandbox_flaky")


def charges_at(state: Path, payment_id: str) -> list[ChargeResult]:
    sandbox = SandboxProvider("x", {"state_path": str(state)})
    try:
        return [c for c in sandbox.list_charges() if c.metadata.get("payment_id") == payment_id]
    finally:
        sandbox.close()


def test_a_two_step_charge_pays_the_order_with_one_provider_object(api: Api, engine: Engine, providers: dict[str, Path]) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        paid = checkout(client, made["id"], token="tok_sandbox_visa", provider_id=TWO_STEP)
        assert paid.status_code == 200, paid.text
    [payment] = paid.json()["order"]["payments"]
    [charge] = charges_at(providers[TWO_STEP], payment["id"])
    assert paid.json()["order"]["status"] == "paid" and payment["status"] == "completed"
    assert charge.status == ChargeStatus.SUCCEEDED and payments_of(engine, made["id"])[0].provider_payment_id == charge.id


def test_a_decline_and_three_d_secure_work_in_two_steps(api: Api, engine: Engine, providers: dict[str, Path]) -> None:
    ada = customer(api, engine)
    item = product(engine)
    declined, secured = order(api, ada.token, (item, 1)), order(api, ada.token, (item, 1))
    with api.client(ada.token) as client:
        problem = assert_problem(checkout(client, declined["id"], token="tok_sandbox_insufficient_funds", provider_id=TWO_STEP),
                                 402, "payment_declined")
        assert problem["decline_code"] == "insufficient_funds"
        waiting = checkout(client, secured["id"], token="tok_sandbox_3ds_success", provider_id=TWO_STEP)
        assert waiting.status_code == 202, waiting.text
        payment = waiting.json()["payment"]
        confirmed = client.post(f"/v1/payments/{payment['id']}/confirm")
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["order"]["status"] == "paid"
    assert events(engine, payment["id"]) == ["payment.pending", "payment.waiting", "payment.completed"]
    assert [c.status for c in charges_at(providers[TWO_STEP], payment["id"])] == [ChargeStatus.SUCCEEDED]


def test_an_answer_lost_after_charging_is_found_by_the_id_stored_before_the_money_moved(
    api: Api, engine: Engine, providers: dict[str, Path]
) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        assert_problem(checkout(client, made["id"], token="tok_sandbox_timeout_after_success", provider_id=TWO_STEP),
                       503, "provider_unavailable")
    [payment] = payments_of(engine, made["id"])
    [charge] = charges_at(providers[TWO_STEP], payment.id)
    assert payment.status == "pending" and payment.provider_payment_id is None, "no answer was recorded"
    assert PaymentDetails.of(payment).provider_object_id == charge.id, "the id was stored before the charge"
    with later():
        assert run_settle_sweep(engine, api.data_dir) >= 1
    [payment] = payments_of(engine, made["id"])
    assert payment.status == "completed"
    assert len(charges_at(providers[TWO_STEP], payment.id)) == 1


def test_a_confirm_that_never_arrived_is_sent_again_for_the_same_object_and_charges_once(
    api: Api, engine: Engine, providers: dict[str, Path]
) -> None:
    ada = customer(api, engine)
    item = product(engine)
    retried, swept = order(api, ada.token, (item, 1)), order(api, ada.token, (item, 1))
    with api.client(ada.token) as client:
        for made in (retried, swept):
            assert_problem(checkout(client, made["id"], token="tok_sandbox_visa", provider_id=FLAKY), 503, "provider_unavailable")
            [payment] = payments_of(engine, made["id"])
            [created] = charges_at(providers[FLAKY], payment.id)
            assert (created.status, PaymentDetails.of(payment).provider_object_id) == (ChargeStatus.CREATED, created.id)
        # The customer tries again: the stored object is fetched and confirmed, not made again.
        again = checkout(client, retried["id"], token="tok_sandbox_visa", provider_id=FLAKY)
        assert again.status_code == 200, again.text
    # Nobody comes back for the other: the sweep confirms it.
    with later():
        assert run_settle_sweep(engine, api.data_dir) >= 1
    for made in (retried, swept):
        [payment] = payments_of(engine, made["id"])
        [charge] = charges_at(providers[FLAKY], payment.id)
        assert payment.status == "completed" and charge.status == ChargeStatus.SUCCEEDED
        assert charge.id == payment.provider_payment_id
