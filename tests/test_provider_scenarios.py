"""Every sandbox scenario of the checkout and renewal tests, run against each real adapter through
Billfold (issue 12): Stripe against localstripe, PayPal against its contract-checked fake,
Authorize.net against its fake, each configured through the admin API (tests/provider_worlds.py).

All through Billfold's HTTP API and its worker sweeps; what the provider did is read from the
provider's own books (the fake, or the adapter's get_charge / list_refunds), never only our rows.
Where a provider has no counterpart of a scenario the test is skipped, saying why."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.kit.money import Money
from billfold.models import User
from billfold.accounts.sessions import open_session
from billfold.providers.base import ChargeStatus
from tests.accounts import Api
from tests.provider_worlds import (  # noqa: F401  (fixtures)
    GENERIC,
    GOOD,
    INSUFFICIENT,
    PROVIDERS,
    PayPalWorld,
    StripeWorld,
    World,
    make_world,
    scenario_authorizenet,
    scenario_localstripe,
    scenario_paypal,
    scenario_stripe_proxy,
)
from tests.subscribing import US_HOME, Customer, Shop, shop, when  # noqa: F401  (fixture)
from tests.test_checkout import customer, order, product
from tests.test_checkout_recovery import later, run_settle_sweep
from tests.test_organizations import assert_problem

# stripe-python's HTTPX client hands its form body to httpx as data=, which httpx deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture(params=PROVIDERS)
def world_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def world(world_name: str, api: Api, admin_token: str, request: pytest.FixtureRequest) -> World:
    """The provider, configured in the worker's served Billfold through POST /v1/payment-providers."""
    return make_world(world_name, api, admin_token, request)


def payments(client: httpx.Client, order_id: str) -> list[dict[str, Any]]:
    return list(client.get(f"/v1/orders/{order_id}").json()["payments"])


def captured(world: World, payment_list: list[dict[str, Any]]) -> list[str]:
    return [c for p in payment_list for c in world.captures(p["id"])]


# ---- 1. paid, then refunded in part and in full ------------------------------------------------------


def test_an_order_is_paid_once_and_refunded_in_part_and_in_full(world: World, api: Api, engine: Engine, admin_token: str) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 2500), 1))
    total = made["total_cents"]
    with api.client(ada.token) as client:
        paid = world.checkout(client, made["id"])
    assert paid.status_code == 200, paid.text
    payment = paid.json()["payment"]
    assert payment["status"] == "completed" and payment["provider_id"] == world.provider_id
    assert paid.json()["order"]["status"] == "paid"
    assert len(world.captures(payment["id"])) == 1, "one capture at the provider"

    world.before_refunds()
    with api.client(admin_token) as admin:
        part = admin.post(f"/v1/payments/{payment['id']}/refunds", json={"amount_cents": 1000})
        assert part.status_code == 201, part.text
        assert part.json()["status"] == "succeeded"
        rest = admin.post(f"/v1/payments/{payment['id']}/refunds", json={})
        assert rest.status_code == 201, rest.text
        assert (rest.json()["status"], rest.json()["amount_cents"]) == ("succeeded", total - 1000)
        done = admin.get(f"/v1/orders/{made['id']}").json()
        assert (done["status"], done["refunded_cents"]) == ("refunded", total)
        assert_problem(admin.post(f"/v1/payments/{payment['id']}/refunds", json={}), 422, "invalid_amount")

    adapter = world.adapter()
    charge = adapter.get_charge(payment["provider_payment_id"])
    assert charge.amount_captured == charge.amount_refunded == Money(total, world.currency), "the provider's books agree"
    refunds = [r for r in adapter.list_refunds(clock.now() - timedelta(days=1)) if r.charge_id == charge.id]
    assert sorted(r.amount.amount for r in refunds) == sorted([1000, total - 1000])
    assert len(world.captures(payment["id"])) == 1


# ---- 2. declines ------------------------------------------------------------------------------------


@pytest.mark.parametrize("decline", [GENERIC, INSUFFICIENT])
def test_a_decline_answers_402_with_its_code_and_the_order_is_paid_with_a_good_source(
    world: World, api: Api, engine: Engine, decline: str,
) -> None:
    world.skip_unless(decline)
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 1500), 1))
    with api.client(ada.token) as client:
        declined = world.checkout(client, made["id"], decline)
        assert assert_problem(declined, 402, "payment_declined")["decline_code"] == decline
        assert client.get(f"/v1/orders/{made['id']}").json()["status"] == "pending", "still payable"
        paid = world.checkout(client, made["id"])
        assert paid.status_code == 200, paid.text
    failed, completed = paid.json()["order"]["payments"]
    assert (failed["status"], completed["status"], paid.json()["order"]["status"]) == ("failed", "completed", "paid")
    assert world.captures(failed["id"]) == [], "the declined payment moved no money"
    assert len(world.captures(completed["id"])) == 1


# ---- 3. 3-D Secure / the buyer's approval -------------------------------------------------------------


def test_a_payment_waits_for_the_customer_then_confirms(world: World, api: Api, engine: Engine) -> None:
    world.skip_unless("3ds")
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 4200), 1))
    with api.client(ada.token) as client:
        waiting = world.start_waiting(client, made["id"])
        assert waiting.status_code == 202, waiting.text
        payment = waiting.json()["payment"]
        assert payment["status"] == "pending" and payment["next_action"], payment
        assert world.captures(payment["id"]) == [], "nothing moves before the customer acts"
        assert_problem(client.post(f"/v1/orders/{made['id']}/cancel", json={}), 409, "payment_in_progress")
        world.customer_acts(payment)
        confirmed = client.post(f"/v1/payments/{payment['id']}/confirm")
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["order"]["status"] == "paid" and confirmed.json()["payment"]["status"] == "completed"
    assert len(world.captures(payment["id"])) == 1


# ---- 4. the provider's answer lost after it did the work ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("finisher", ["retry", "sweep"])
def test_an_answer_lost_after_the_charge_is_settled_with_exactly_one_charge(
    world: World, api: Api, engine: Engine, finisher: str, request: pytest.FixtureRequest,
) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 3100), 1))
    with api.client(ada.token) as client:
        with world.losing_the_next_answer():
            assert_problem(world.checkout(client, made["id"]), 503, "provider_unavailable")
        [payment] = payments(client, made["id"])
        assert payment["status"] == "pending"
        assert len(world.captures(payment["id"])) == 1, "the provider charged; Billfold never heard"
        if finisher == "retry":
            again = world.retry(client, made["id"], payment)
            assert again.status_code == 200, again.text
            assert again.json()["payment"]["id"] == payment["id"]
        else:
            with later():
                assert run_settle_sweep(engine, api.data_dir) >= 1
        after = client.get(f"/v1/orders/{made['id']}").json()
    assert after["status"] == "paid"
    [settled] = after["payments"]
    assert settled["status"] == "completed" and settled["id"] == payment["id"]
    assert len(world.captures(payment["id"])) == 1 and world.attempts(payment["id"]) == 1, "exactly one charge"
    assert world.adapter().get_charge(settled["provider_payment_id"]).status is ChargeStatus.SUCCEEDED


# ---- 5. the provider down -----------------------------------------------------------------------------


def test_a_provider_that_is_down_charges_nothing_and_paying_works_once_it_is_back(
    world: World, api: Api, engine: Engine,
) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine, 2700), 1))
    with api.client(ada.token) as client:
        with world.down():
            assert_problem(world.checkout(client, made["id"]), 503, "provider_unavailable")
            tried = payments(client, made["id"])
            assert tried and all(p["provider_id"] == world.provider_id for p in tried)
            assert [world.attempts(p["id"]) for p in tried] == [0] * len(tried), "nothing reached the provider"
        assert client.get(f"/v1/orders/{made['id']}").json()["status"] == "pending"
        paid = world.checkout(client, made["id"])
        assert paid.status_code == 200, paid.text
        assert paid.json()["order"]["status"] == "paid"
        every = payments(client, made["id"])
    assert len(captured(world, every)) == 1, "one charge in all"
    assert [p["status"] for p in every][-1] == "completed"


# ---- 6. renewals --------------------------------------------------------------------------------------


def subscriber(shop: Shop, label: str) -> Customer:
    """A customer with an address and no saved method yet."""
    with transaction(session_factory(shop.engine)) as session:
        user = User(name=label.title(), last_name="Tester", email=f"{label}.{new_id('p').lower()}@example.com",
                    user_type="individual", is_verified=True)
        session.add(user)
        session.flush()
        _, bearer = open_session(session, user, transport="bearer", address=None, user_agent="tests", days=3650)
        user_id, email = user.id, user.email
    with shop.client(bearer) as client:
        assert client.post("/v1/me/addresses", json=US_HOME).status_code == 201
    return Customer(user_id, email, bearer, "")


def save(shop: Shop, someone: Customer, provider_id: str, token: str) -> dict[str, Any]:
    with shop.client(someone.token) as client:
        saved = client.post("/v1/me/payment-methods", json={"provider_id": provider_id, "token": token})
    assert saved.status_code == 201, saved.text
    return dict(saved.json())


@pytest.mark.slow
def test_a_subscription_renews_off_session_and_a_declined_renewal_goes_past_due(
    world_name: str, shop: Shop, frozen_clock: clock.FrozenClock, request: pytest.FixtureRequest,
) -> None:
    world = make_world(world_name, shop.api, shop.admin(), request)
    grace = subscriber(shop, f"renews{world_name}")
    good = save(shop, grace, world.provider_id, world.saved_token(GOOD))
    sub = shop.subscribe(grace, shop.product(1500), payment_method_id=good["id"])
    assert sub["status"] == "active" and sub["provider_id"] == world.provider_id
    [first] = shop.payments(sub["id"])
    assert first.status == "completed" and len(world.captures(first.id)) == 1

    frozen_clock.set(when(sub["current_period_end"]))
    assert shop.sweep("renew") >= 1
    first_paid, renewal = shop.payments(sub["id"])
    assert renewal.status == "completed" and [i.status for i in shop.invoices(sub["id"])] == ["paid", "paid"]
    assert len(world.captures(renewal.id)) == 1 and world.attempts(renewal.id) == 1, "one off-session charge"
    charge = world.adapter().get_charge(renewal.provider_payment_id)
    assert charge.status is ChargeStatus.SUCCEEDED and charge.amount_captured == Money(renewal.amount_cents, renewal.currency)
    assert charge.payment_method_id == good["provider_payment_method_id"], "charged to the saved method"
    if isinstance(world, StripeWorld):  # the others keep no off-session mark at the provider to read back
        assert charge.off_session and not world.adapter().get_charge(first.provider_payment_id).off_session
    assert shop.get(grace, sub["id"])["status"] == "active"

    bad = save(shop, grace, world.provider_id, world.saved_token(GENERIC))
    if isinstance(world, PayPalWorld):
        world.decline_saved(bad["provider_payment_method_id"])
    shop.post(grace, sub["id"], "change", payment_method_id=bad["id"])
    frozen_clock.set(when(shop.get(grace, sub["id"])["current_period_end"]))
    assert shop.sweep("renew") >= 1
    sub = shop.get(grace, sub["id"])
    assert sub["status"] == "past_due" and sub["next_retry_at"]
    declined = shop.payments(sub["id"])[-1]
    assert declined.status == "failed" and declined.id not in (first_paid.id, renewal.id)
    assert [i.status for i in shop.invoices(sub["id"])] == ["paid", "paid", "open"]
    assert world.captures(declined.id) == [], "no money moved"
    assert world.attempts(declined.id) == 1, "declined by the provider itself, not refused before asking"
