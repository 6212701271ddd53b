"""Routing rules and failover between providers (docs/payments.md#routing): which rule a payment
follows, the admin API for rules, and a payment whose provider cannot be reached (the request never
sent: ``ProviderUnavailable.sent`` False) going to the next provider where the customer has a saved
method, over real HTTP and the real renewal sweep, with two sandbox providers of their own state.
A payment whose outcome is unknown (the request was sent) never goes elsewhere."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts.access import Owner
from billfold.accounts.security import Security
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.kit.sweeps import Context
from billfold.models import Address, Invoice, Payment, PaymentEvent, RoutingRule, Subscription, SubscriptionBilling, User
from billfold.payments import methods
from billfold.payments.details import PaymentDetails
from billfold.payments.routing import Facts, matches, pick_rule
from billfold.providers.base import ChargeStatus
from billfold.providers.sandbox import SandboxProvider
from billfold.subscriptions import sweeps
from tests import factories as make
from tests.accounts import Api
from tests.test_checkout import customer, order, product
from tests.test_checkout_recovery import later, run_settle_sweep
from tests.test_organizations import assert_problem

A, B = "route_a", "route_b"
CURRENCY = "CHF"  # the rules of these tests name it, so the other tests' payments (USD, EUR) route as before


@pytest.fixture(autouse=True)
def no_rules(engine: Engine) -> Iterator[None]:
    """The test databases are shared by the tests of a worker: no rule outlives its test."""
    with transaction(session_factory(engine)) as session:
        session.execute(sa.delete(RoutingRule))
    yield
    with transaction(session_factory(engine)) as session:
        session.execute(sa.delete(RoutingRule))


def state_path(api: Api, provider_id: str) -> str:
    return str(Path(api.data_dir) / f"{provider_id}.sqlite3")


def sandbox_provider(admin: httpx.Client, api: Api, provider_id: str, *, down: bool = False) -> None:
    """A sandbox provider of its own state file, active, switched down or up through the API."""
    config: dict[str, Any] = {"state_path": state_path(api, provider_id), "down": down}
    made = admin.post("/v1/payment-providers", json={"id": provider_id, "kind": "sandbox", "display_name": provider_id, "config": config})
    if made.status_code == 409:  # made by an earlier test on this database
        made = admin.patch(f"/v1/payment-providers/{provider_id}", json={"is_active": True, "config": config})
    assert made.status_code in (200, 201), made.text
    assert made.json()["config"]["down"] is down


def provider_charges(api: Api, provider_id: str) -> list[Any]:
    """What the provider itself has charged (read from its state, not through Billfold)."""
    sandbox = SandboxProvider(provider_id, {"state_path": state_path(api, provider_id)})
    try:
        return sandbox.list_charges()
    finally:
        sandbox.close()


def rule(**values: Any) -> RoutingRule:
    return RoutingRule(id=new_id("rr"), **{"position": 0, "weight": 1, "is_active": True, "provider_ids": [A], **values})


# Which rule a payment follows


def test_a_rule_matches_on_currency_country_amount_bounds_and_product_type() -> None:
    facts = Facts("EUR", 5000, "DE", frozenset({"digital"}), "ord_1")
    assert matches(rule(), facts), "a rule without conditions matches everything"
    assert matches(rule(currency="EUR", country="DE", product_type="digital", min_amount_cents=5000, max_amount_cents=5000), facts)
    assert not matches(rule(currency="USD"), facts)
    assert not matches(rule(country="FR"), facts)
    assert not matches(rule(country="DE"), Facts("EUR", 5000, None, frozenset(), "k")), "no known country: no country rule"
    assert not matches(rule(currency="EUR", min_amount_cents=5001), facts)
    assert not matches(rule(currency="EUR", max_amount_cents=4999), facts)
    assert not matches(rule(product_type="physical"), facts)
    assert matches(rule(product_type="physical"), Facts("EUR", 5000, "DE", frozenset({"digital", "physical"}), "k")), "a mixed order"


def test_the_lowest_position_wins_and_rules_of_one_position_split_by_weight_the_same_way_for_each_key() -> None:
    first, second, fallback = rule(position=1, weight=3, provider_ids=[A, B]), rule(position=1, weight=1, provider_ids=[B, A]), rule(position=0, currency="USD")
    rules = sorted([first, second, fallback], key=lambda r: (r.position, r.id))
    usd = Facts("USD", 100, None, frozenset(), "ord_x")
    assert pick_rule(rules, usd) is fallback, "position 0 first, when it matches"
    picks = Counter(pick_rule(rules, Facts("EUR", 100, None, frozenset(), f"inv_{n}")).id for n in range(4000))  # type: ignore[union-attr]
    assert abs(picks[first.id] / 4000 - 0.75) < 0.03 and picks[first.id] + picks[second.id] == 4000, picks
    assert {pick_rule(rules, Facts("EUR", 100, None, frozenset(), "inv_7")).id for _ in range(20)} == {pick_rule(rules, Facts("EUR", 100, None, frozenset(), "inv_7")).id}  # type: ignore[union-attr]
    assert pick_rule([rule(weight=0), rule(weight=0)], usd) is not None, "all weights 0: the first, not nothing"
    assert pick_rule([rule(currency="GBP")], usd) is None, "no rule matches: the default order"


# The admin API


def test_the_admin_api_checks_rules_names_the_field_and_previews_the_routing(api: Api, engine: Engine, admin_token: str) -> None:
    buyer = customer(api, engine, "ruler")
    with api.client(admin_token) as admin:
        sandbox_provider(admin, api, A)
        sandbox_provider(admin, api, B)
        good = {"currency": CURRENCY, "min_amount_cents": 1000, "max_amount_cents": 50000, "provider_ids": [A, B], "weight": 2}
        assert_problem(admin.post("/v1/routing-rules", json={**good, "provider_ids": [A, "no_such_provider"]}), 422, "invalid_routing_rule", "provider_ids[1]")
        assert_problem(admin.post("/v1/routing-rules", json={**good, "weight": -1}), 422, "invalid_input", "weight")
        assert_problem(admin.post("/v1/routing-rules", json={**good, "currency": None}), 422, "invalid_routing_rule", "currency")
        assert_problem(admin.post("/v1/routing-rules", json={**good, "max_amount_cents": 999}), 422, "invalid_routing_rule", "max_amount_cents")
        assert_problem(admin.post("/v1/routing-rules", json={**good, "provider_ids": []}), 422, "invalid_input", "provider_ids")
        assert_problem(admin.post("/v1/routing-rules", json={**good, "colour": "red"}), 422, "invalid_input", "colour")
        assert admin.get("/v1/routing-rules").json() == [], "nothing refused was stored"

        made = admin.post("/v1/routing-rules", json={**good, "country": "CH", "name": "Swiss francs"})
        assert made.status_code == 201, made.text
        rule_id = made.json()["id"]
        assert made.json()["provider_ids"] == [A, B] and made.json()["is_active"] is True
        preview = admin.get("/v1/routing-rules/preview", params={"currency": CURRENCY, "amount": 2000, "country": "CH"})
        assert preview.status_code == 200, preview.text
        assert preview.json() == {"rule_id": rule_id, "provider_ids": [A, B], "usable_provider_ids": [A, B]}
        elsewhere = admin.get("/v1/routing-rules/preview", params={"currency": CURRENCY, "amount": 2000, "country": "AT"}).json()
        assert elsewhere["rule_id"] is None

        changed = admin.patch(f"/v1/routing-rules/{rule_id}", json={"country": None, "provider_ids": [B, A]})
        assert changed.status_code == 200, changed.text
        assert (changed.json()["country"], changed.json()["provider_ids"], changed.json()["weight"]) == (None, [B, A], 2)
        assert_problem(admin.patch(f"/v1/routing-rules/{rule_id}", json={"min_amount_cents": 60000}), 422, "invalid_routing_rule", "max_amount_cents")
        assert_problem(admin.patch(f"/v1/routing-rules/{rule_id}", json={"weight": None}), 422, "invalid_input", "weight")
        assert admin.get(f"/v1/routing-rules/{rule_id}").json()["min_amount_cents"] == 1000, "a refused change changes nothing"

        with api.client(buyer.token) as client:
            assert_problem(client.get("/v1/routing-rules"), 403, "forbidden")
            assert_problem(client.post("/v1/routing-rules", json=good), 403, "forbidden")
            assert_problem(client.delete(f"/v1/routing-rules/{rule_id}"), 403, "forbidden")

        assert admin.delete(f"/v1/routing-rules/{rule_id}").status_code == 204
        assert_problem(admin.get(f"/v1/routing-rules/{rule_id}"), 404, "not_found")


# Failover at checkout


def save(api: Api, token: str, provider_id: str, card: str = "tok_sandbox_visa") -> str:
    with api.client(token) as client:
        saved = client.post("/v1/me/payment-methods", json={"provider_id": provider_id, "token": card})
    assert saved.status_code == 201, saved.text
    return saved.json()["id"]


def payments_of(engine: Engine, order_id: str) -> list[Payment]:
    with session_factory(engine)() as session:
        return list(session.scalars(sa.select(Payment).where(Payment.order_id == order_id).order_by(Payment.created_at, Payment.id)))


def charged(api: Api, provider_id: str, payment_id: str) -> list[Any]:
    return [c for c in provider_charges(api, provider_id) if (c.metadata or {}).get("payment_id") == payment_id]


def test_a_checkout_whose_provider_is_down_is_paid_through_the_next_provider_with_a_saved_method(
    api: Api, engine: Engine, admin_token: str
) -> None:
    buyer = customer(api, engine, "failover")
    item = product(engine, 2500, CURRENCY)
    with api.client(admin_token) as admin:
        sandbox_provider(admin, api, A)
        sandbox_provider(admin, api, B)
        assert admin.post("/v1/routing-rules", json={"currency": CURRENCY, "provider_ids": [A, B]}).status_code == 201
        on_a, on_b = save(api, buyer.token, A), save(api, buyer.token, B)
        sandbox_provider(admin, api, A, down=True)
        try:
            with api.client(buyer.token) as client:
                made = order(api, buyer.token, (item, 1))
                key = {"Idempotency-Key": new_id("k")}
                paid = client.post(f"/v1/orders/{made['id']}/checkout", json={"payment_method_id": on_a}, headers=key)
                assert paid.status_code == 200, paid.text
                assert paid.json()["order"]["status"] == "paid" and paid.json()["payment"]["provider_id"] == B
                again = client.post(f"/v1/orders/{made['id']}/checkout", json={"payment_method_id": on_a}, headers=key)
                assert (again.status_code, again.json()) == (200, paid.json()), "the key answers the payment that paid"

                # A one-time token belongs to its provider: it cannot go elsewhere; the problem names
                # the providers tried, and nothing was charged.
                other = order(api, buyer.token, (item, 1))
                refused = assert_problem(client.post(f"/v1/orders/{other['id']}/checkout", json={"token": "tok_sandbox_visa"}), 503, "provider_unavailable")
                assert refused["providers_tried"] == [A] and A in refused["detail"]
        finally:
            sandbox_provider(admin, api, A)
    first, second = payments_of(engine, made["id"])
    assert (first.provider_id, first.payment_method_id, first.status) == (A, on_a, "failed")
    assert PaymentDetails.of(first).failure == "provider_unavailable"
    assert (second.provider_id, second.payment_method_id, second.status) == (B, on_b, "completed")
    with session_factory(engine)() as session:
        recorded = session.scalars(sa.select(PaymentEvent).where(PaymentEvent.entity_id == first.id).order_by(PaymentEvent.created_at, PaymentEvent.id)).all()
    assert [e.event_type for e in recorded][-1].endswith("failed") and "provider_unavailable" in str(recorded[-1].data), "the attempt is recorded"
    assert charged(api, A, first.id) == [] and len(charged(api, B, second.id)) == 1, "one charge, at the provider that was up"
    [pending] = payments_of(engine, other["id"])
    assert pending.status == "pending" and charged(api, A, pending.id) == [], "the token's payment waits; nothing was charged"


def test_a_token_checkout_goes_to_the_first_usable_provider_of_the_matching_rule(api: Api, engine: Engine, admin_token: str) -> None:
    buyer = customer(api, engine, "routed")  # billed in GB
    item = product(engine, 900, CURRENCY)
    with api.client(admin_token) as admin:
        sandbox_provider(admin, api, A)
        sandbox_provider(admin, api, B)
        for rule_body in (
            {"currency": CURRENCY, "country": "GB", "provider_ids": [B, A], "position": 1},
            {"currency": CURRENCY, "country": "FR", "provider_ids": [A], "position": 0},  # first, but not for GB
            {"currency": CURRENCY, "max_amount_cents": 899, "provider_ids": [A], "position": 0},  # too small a payment
        ):
            assert admin.post("/v1/routing-rules", json=rule_body).status_code == 201
    made = order(api, buyer.token, (item, 1))
    with api.client(buyer.token) as client:
        paid = client.post(f"/v1/orders/{made['id']}/checkout", json={"token": "tok_sandbox_visa"})
    assert paid.status_code == 200, paid.text
    payment = paid.json()["payment"]
    assert payment["provider_id"] == B and len(charged(api, B, payment["id"])) == 1 and charged(api, A, payment["id"]) == []


def test_a_charge_whose_outcome_is_unknown_never_goes_to_another_provider(api: Api, engine: Engine, admin_token: str) -> None:
    buyer = customer(api, engine, "unknown")
    item = product(engine, 1500, CURRENCY)
    with api.client(admin_token) as admin:
        sandbox_provider(admin, api, A)
        sandbox_provider(admin, api, B)
        assert admin.post("/v1/routing-rules", json={"currency": CURRENCY, "provider_ids": [A, B]}).status_code == 201
    slow = save(api, buyer.token, A, "tok_sandbox_timeout_after_success")
    save(api, buyer.token, B)
    made = order(api, buyer.token, (item, 1))
    with api.client(buyer.token) as client:
        assert_problem(client.post(f"/v1/orders/{made['id']}/checkout", json={"payment_method_id": slow}), 503, "provider_unavailable")
        [payment] = payments_of(engine, made["id"])
        assert (payment.provider_id, payment.status) == (A, "pending"), "sent, outcome unknown: it stays, on its provider"
        with later():
            assert run_settle_sweep(engine, api.data_dir) >= 1
        assert client.get(f"/v1/orders/{made['id']}").json()["status"] == "paid"
    [payment] = payments_of(engine, made["id"])
    assert (payment.provider_id, payment.status) == (A, "completed")
    assert len(charged(api, A, payment.id)) == 1 and not [c for c in provider_charges(api, B) if (c.metadata or {}).get("order_id") == made["id"]]


# Failover of renewals


RENEWALS, CUSTOMERS, BATCH = 1000, 25, sweeps.BATCH


def seed_renewals(
    engine: Engine, settings: Settings, tag: str, renewals: int = RENEWALS, people_count: int = CUSTOMERS,
    card_at_a: str = "tok_sandbox_visa",
) -> list[str]:
    """``people_count`` people with a saved card at A (their subscriptions' method) and at B, and
    ``renewals`` monthly subscriptions in CHF among them, all due now."""
    security = Security.from_settings(settings)
    sessions = session_factory(engine)
    now = clock.now()
    with transaction(sessions) as session:
        product_id = make.product(session, price_cents=1200, currency=CURRENCY, billing_interval="monthly").id
    people: list[tuple[str, str]] = []
    for n in range(people_count):
        with transaction(sessions) as session:
            user = User(name="Renewing", last_name=str(n), email=f"renew.{tag}.{n}@example.com", user_type="individual", is_verified=True)
            session.add(user)
            session.flush()
            session.add(Address(user_id=user.id, address_type="both", is_default=True, name="Renewing", line1="1 Bahnhofstrasse",
                                city="Zurich", postal_code="8001", country="CH"))
            owner = Owner.user(user.id)
            on_a = methods.save_method(session, security, owner, token=card_at_a, provider_id=A, make_default=True)
            methods.save_method(session, security, owner, token="tok_sandbox_mastercard", provider_id=B)
            people.append((user.id, on_a.id))
    start = now - timedelta(days=31)
    subscriptions, billing = [], []
    for n in range(renewals):
        user_id, method_id = people[n % people_count]
        subscription_id = new_id("sub")
        subscriptions.append({
            "id": subscription_id, "user_id": user_id, "product_id": product_id, "payment_method_id": method_id,
            "provider_id": A, "status": "active", "current_period_start": start, "current_period_end": now - timedelta(seconds=1 + n),
            "cancel_at_period_end": False, "price_cents": 1200, "currency": CURRENCY,
            "metadata": {"billing_interval": "monthly", "billing_country": "CH"}, "created_at": start, "updated_at": start,
        })
        billing.append({"subscription_id": subscription_id, "quantity": 1, "credit_cents": 0, "billing_anchor": start, "period_index": 0,
                        "retries_done": 0, "created_at": start, "updated_at": start})
    with engine.begin() as connection:
        connection.execute(sa.insert(Subscription.__table__), subscriptions)
        connection.execute(sa.insert(SubscriptionBilling.__table__), billing)
    return [s["id"] for s in subscriptions]


@pytest.mark.slow
@pytest.mark.every_database
def test_a_thousand_renewals_with_one_provider_down_for_part_of_the_run_are_each_paid_once(
    api: Api, engine: Engine, admin_token: str
) -> None:
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=api.data_dir)
    context = Context(session_factory(engine), settings, Security.from_settings(settings))
    with api.client(admin_token) as admin:
        sandbox_provider(admin, api, A)
        sandbox_provider(admin, api, B)
        assert admin.post("/v1/routing-rules", json={"currency": CURRENCY, "provider_ids": [A, B]}).status_code == 201
        mine = set(seed_renewals(engine, settings, new_id("t").lower()))
        started = time.perf_counter()
        renewed = 0
        try:
            while renewed < RENEWALS * 3 // 10:  # A up for the first 300 or so
                renewed += sweeps.renew_due_subscriptions(context)
            sandbox_provider(admin, api, A, down=True)
            while renewed < RENEWALS * 7 // 10:  # A down for the next 400
                renewed += sweeps.renew_due_subscriptions(context)
            sandbox_provider(admin, api, A)
            while moved := sweeps.renew_due_subscriptions(context):
                renewed += moved
        finally:
            sandbox_provider(admin, api, A)
        elapsed = time.perf_counter() - started

    with session_factory(engine)() as session:
        subscriptions = session.scalars(sa.select(Subscription).where(Subscription.id.in_(mine))).all()
        invoices = session.scalars(sa.select(Invoice).where(Invoice.subscription_id.in_(mine))).all()
        payments = session.scalars(sa.select(Payment).where(Payment.subscription_id.in_(mine))).all()
        periods = dict(session.execute(sa.select(SubscriptionBilling.subscription_id, SubscriptionBilling.period_index).where(SubscriptionBilling.subscription_id.in_(mine))).all())
    assert len(subscriptions) == RENEWALS and {s.status for s in subscriptions} == {"active"}, Counter(s.status for s in subscriptions)
    assert set(periods.values()) == {1}, "every subscription renewed once: none lost, none twice"
    assert len(invoices) == RENEWALS and {i.status for i in invoices} == {"paid"}, Counter(i.status for i in invoices)
    by_invoice: dict[str, list[Payment]] = {}
    for payment in payments:
        by_invoice.setdefault(PaymentDetails.of(payment).invoice_id or "", []).append(payment)
    assert set(by_invoice) == {i.id for i in invoices}
    for invoice_id, tries in by_invoice.items():
        assert [p.status for p in tries].count("completed") == 1, (invoice_id, [(p.provider_id, p.status) for p in tries])
        for failed in (p for p in tries if p.status != "completed"):
            assert (failed.status, failed.provider_id, PaymentDetails.of(failed).failure) == ("failed", A, "provider_unavailable")
    completed = {p.id: p for p in payments if p.status == "completed"}
    failed_over = [p for p in payments if p.status == "failed"]
    through_b = [p for p in completed.values() if p.provider_id == B]
    assert len(failed_over) == len(through_b) and 300 <= len(through_b) <= 500, (len(failed_over), len(through_b))

    # The providers' own books match ours one to one: every completed payment charged once, at its
    # provider, for its amount; nothing charged for a failed-over attempt.
    for provider_id in (A, B):
        theirs = [c for c in provider_charges(api, provider_id) if (c.metadata or {}).get("subscription_id") in mine]
        ours = {p.id for p in completed.values() if p.provider_id == provider_id}
        assert sorted(c.metadata["payment_id"] for c in theirs) == sorted(ours), provider_id
        assert {(c.status, c.amount.amount) for c in theirs} == {(ChargeStatus.SUCCEEDED, 1200)}
        assert {completed[c.metadata["payment_id"]].provider_payment_id for c in theirs} == {c.id for c in theirs}
    print(f"\n{RENEWALS} renewals, {len(through_b)} failed over, in {elapsed:.1f} s ({RENEWALS / elapsed:.0f}/s) on {engine.dialect.name}")


def test_a_dunning_retry_whose_provider_is_down_is_paid_through_the_next_provider(api: Api, engine: Engine, admin_token: str) -> None:
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=api.data_dir)
    context = Context(session_factory(engine), settings, Security.from_settings(settings))
    with api.client(admin_token) as admin:
        sandbox_provider(admin, api, A)
        sandbox_provider(admin, api, B)
        assert admin.post("/v1/routing-rules", json={"currency": CURRENCY, "provider_ids": [A, B]}).status_code == 201
        [mine] = seed_renewals(engine, settings, new_id("t").lower(), 1, 1, card_at_a="tok_sandbox_insufficient_funds")
        while sweeps.renew_due_subscriptions(context):
            pass
        with session_factory(engine)() as session:
            assert session.get(Subscription, mine).status == "past_due", "declined at A: dunning"  # type: ignore[union-attr]
        sandbox_provider(admin, api, A, down=True)
        try:
            with later(timedelta(days=4)):  # the first retry is due 3 days after the failure
                while sweeps.retry_past_due_subscriptions(context):
                    pass
        finally:
            sandbox_provider(admin, api, A)
    with session_factory(engine)() as session:
        subscription = session.get(Subscription, mine)
        [invoice] = session.scalars(sa.select(Invoice).where(Invoice.subscription_id == mine)).all()
        tries = session.scalars(sa.select(Payment).where(Payment.subscription_id == mine).order_by(Payment.created_at, Payment.id)).all()
    assert subscription is not None and (subscription.status, invoice.status) == ("active", "paid")
    assert [(p.provider_id, p.status, PaymentDetails.of(p).purpose) for p in tries] == [
        (A, "failed", "renewal"), (A, "failed", "retry"), (B, "completed", "retry"),
    ]
    assert PaymentDetails.of(tries[1]).failure == "provider_unavailable"
    assert [c.metadata["payment_id"] for c in provider_charges(api, B) if c.metadata.get("subscription_id") == mine] == [tries[2].id]


def test_a_trial_without_a_payment_method_is_routed_by_the_rules(api: Api, engine: Engine, admin_token: str) -> None:
    buyer = customer(api, engine, "trialist")
    with transaction(session_factory(engine)) as session:
        trial = make.product(session, price_cents=700, currency=CURRENCY, billing_interval="monthly", trial_days=14).id
    with api.client(admin_token) as admin:
        sandbox_provider(admin, api, A)
        sandbox_provider(admin, api, B)
        assert admin.post("/v1/routing-rules", json={"product_type": "subscription", "currency": CURRENCY, "provider_ids": [B]}).status_code == 201
    with api.client(buyer.token) as client:
        made = client.post("/v1/subscriptions", json={"product_id": trial})
    assert made.status_code == 201, made.text
    with session_factory(engine)() as session:
        subscription = session.get(Subscription, made.json()["id"])
    assert subscription is not None and (subscription.status, subscription.provider_id) == ("trialing", B)
