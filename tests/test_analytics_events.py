"""Analytics events (docs/analytics.md, "Events and cohorts"): purchases, refunds, subscription
changes, trials and memberships driven through the API with the billing clock write the events a
founder counts, in the transaction of the change; a refused or rolled-back change writes none."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.memberships import sweeps as memberships
from billfold.models import AnalyticsEvent, Payment, Refund, UserCohort
from billfold.payments.states import PAYMENT, REFUND
from tests import factories as make
from tests.accounts import Api
from tests.subscribing import Shop, shop  # noqa: F401  (fixture)
from tests.test_checkout import HOME, checkout, customer, order
from tests.test_memberships import membership_type, selling
from tests.test_organizations import add_member, assert_problem, create_organization, person

DAY = timedelta(days=1)


def recorded(engine: Engine, **where: Any) -> list[dict[str, Any]]:
    """The events (oldest first) whose columns equal ``where``, as dicts of the columns a test reads."""
    with session_factory(engine)() as session:
        rows = session.scalars(
            sa.select(AnalyticsEvent).filter_by(**where).order_by(AnalyticsEvent.created_at, AnalyticsEvent.event_type)
        ).all()
        return [
            {"type": r.event_type, "category": r.event_category, "user_id": r.user_id, "entity": (r.entity_type, r.entity_id),
             "revenue_cents": r.revenue_cents, "currency": r.currency, "properties": r.properties or {}, "session_id": r.session_id}
            for r in rows
        ]


def cohorts_of(engine: Engine, user_id: str) -> dict[str, date]:
    with session_factory(engine)() as session:
        return dict(session.execute(sa.select(UserCohort.cohort_type, UserCohort.cohort_month).where(UserCohort.user_id == user_id)).all())


def test_a_purchase_its_refunds_and_the_membership_it_sells_are_recorded_with_signed_revenue(
    frozen_clock: clock.FrozenClock, api: Api, engine: Engine, admin_token: str
) -> None:
    ada = customer(api, engine, "analytics")
    kind = membership_type(engine, "lifetime", None, ["vault"])
    made = order(api, ada.token, (selling(engine, kind), 1))
    with api.client(ada.token) as client:
        declined = checkout(client, made["id"], token="tok_sandbox_insufficient_funds")
        assert declined.status_code == 402, declined.text
        assert recorded(engine, user_id=ada.id) == [], "a declined payment is no revenue"
        paid = checkout(client, made["id"])
        assert paid.status_code == 200, paid.text
    payment = paid.json()["payment"]
    total = payment["amount_cents"]
    assert total == made["total_cents"] == 5880, "4900 and 20 % VAT"
    by_type = {e["type"]: e for e in recorded(engine, user_id=ada.id)}
    assert sorted(by_type) == ["membership_started", "payment_completed"]
    bought, started = by_type["payment_completed"], by_type["membership_started"]
    assert bought == {
        "type": "payment_completed", "category": "revenue", "user_id": ada.id, "entity": ("payment", payment["id"]),
        "revenue_cents": 5880, "currency": "USD", "session_id": None,
        "properties": {"provider_id": "sandbox", "order_id": made["id"]},
    }
    assert (started["type"], started["category"], started["revenue_cents"], started["currency"]) == ("membership_started", "engagement", 0, None)
    assert started["properties"] == {"membership_type_id": kind, "order_id": made["id"], "source": "order"}
    assert cohorts_of(engine, ada.id) == {"first_purchase": date(2026, 1, 1)}

    frozen_clock.advance(timedelta(hours=1))
    with api.client(admin_token) as admin:
        part = admin.post(f"/v1/payments/{payment['id']}/refunds", json={"amount_cents": 1000, "reason": "goodwill"})
        assert part.status_code == 201, part.text
        assert admin.post(f"/v1/payments/{payment['id']}/refunds", json={"amount_cents": 99999}).status_code == 422
        rest = admin.post(f"/v1/payments/{payment['id']}/refunds", json={"reason": "changed their mind"})
        assert rest.status_code == 201, rest.text
    refunds = recorded(engine, user_id=ada.id, event_type="refund_completed")
    assert [(r["entity"], r["revenue_cents"], r["currency"], r["properties"]["payment_id"]) for r in refunds] == [
        (("refund", part.json()["id"]), -1000, "USD", payment["id"]), (("refund", rest.json()["id"]), -4880, "USD", payment["id"]),
    ], "a refund's revenue is negative; the refused one wrote nothing"
    assert sum(e["revenue_cents"] for e in recorded(engine, user_id=ada.id)) == 0, "refunded in full: nothing earned"
    assert cohorts_of(engine, ada.id) == {"first_purchase": date(2026, 1, 1)}, "the cohort stays"


def test_an_organizations_purchase_has_no_user_and_names_the_organization(api: Api, engine: Engine) -> None:
    owner = person(engine, "owner")
    organization = create_organization(api, owner, "Counting House Ltd")
    buyer = customer(api, engine, "buyer")
    add_member(api, owner, organization, buyer, "billing")
    with api.client(owner.token) as client:
        assert client.post(f"/v1/organizations/{organization}/addresses", json=HOME).status_code == 201
    made = order(api, buyer.token, (selling(engine, membership_type(engine)), 1), organization_id=organization)
    with api.client(buyer.token) as client:
        paid = checkout(client, made["id"], token="tok_sandbox_visa")
        assert paid.status_code == 200, paid.text
    [bought] = recorded(engine, entity_id=paid.json()["payment"]["id"])
    assert (bought["type"], bought["user_id"], bought["properties"]["organization_id"]) == ("payment_completed", None, organization)
    assert cohorts_of(engine, buyer.id) == {} and cohorts_of(engine, owner.id) == {}, "cohorts are of users"


def test_a_trial_its_conversion_changes_of_plan_and_cancelling_are_recorded(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    ada = shop.customer("analyst")
    basic, pro = shop.product(1000, trial_days=14), shop.product(3000)
    sub = shop.subscribe(ada, basic)
    created, trial = recorded(shop.engine, user_id=ada.id)
    assert (created["type"], created["category"], created["entity"], created["currency"]) == (
        "subscription_created", "conversion", ("subscription", sub["id"]), "USD")
    assert created["properties"] == {"product_id": basic, "price_cents": 1000, "provider_id": "sandbox"}
    assert (trial["type"], trial["properties"]["trial_end"]) == ("trial_started", (clock.now() + 14 * DAY).isoformat())
    assert cohorts_of(shop.engine, ada.id) == {"first_subscription": date(2026, 1, 1)}

    frozen_clock.advance(14 * DAY)  # 2026-02-14: the trial ends and is paid
    shop.sweep("trials")
    [first] = shop.payments(sub["id"])
    [paid] = recorded(shop.engine, user_id=ada.id, event_type="payment_completed")
    assert (paid["entity"], paid["revenue_cents"], paid["properties"]) == (
        ("payment", first.id), 1000,
        {"provider_id": "sandbox", "subscription_id": sub["id"], "product_id": basic, "purpose": "trial_end"},
    )
    [converted] = recorded(shop.engine, user_id=ada.id, event_type="trial_converted")
    assert converted["properties"]["payment_id"] == first.id
    assert cohorts_of(shop.engine, ada.id) == {"first_subscription": date(2026, 1, 1), "first_purchase": date(2026, 2, 1)}

    frozen_clock.advance(7 * DAY)
    assert_problem(shop.client(ada.token).post(f"/v1/subscriptions/{sub['id']}/change", json={"quantity": 0}), 422, "invalid_input")
    shop.post(ada, sub["id"], "change", product_id=pro)  # 21 of 28 days left: 1500 charged now
    [up] = recorded(shop.engine, user_id=ada.id, event_type="subscription_upgraded")
    assert (up["revenue_cents"], up["properties"]) == (0, {
        "product_id": pro, "previous_product_id": basic, "amount_before_cents": 1000, "amount_after_cents": 3000,
        "from_quantity": 1, "to_quantity": 1, "net_cents": 1500, "provider_id": "sandbox",
    })
    proration = recorded(shop.engine, user_id=ada.id, event_type="payment_completed")[-1]
    assert (proration["revenue_cents"], proration["properties"]["purpose"]) == (1500, "change")
    shop.post(ada, sub["id"], "change", product_id=basic, quantity=2)
    [down] = recorded(shop.engine, user_id=ada.id, event_type="subscription_downgraded")
    assert (down["properties"]["amount_before_cents"], down["properties"]["amount_after_cents"]) == (3000, 2000)
    assert "net_cents" in down["properties"] and down["properties"]["net_cents"] < 0

    shop.post(ada, sub["id"], "cancel", at_period_end=False)
    [cancelled] = recorded(shop.engine, user_id=ada.id, event_type="subscription_cancelled")
    assert (cancelled["properties"]["reason"], cancelled["properties"]["previous_status"]) == ("cancelled_now", "active")
    kinds = [e["type"] for e in recorded(shop.engine, user_id=ada.id)]
    assert sorted(kinds) == sorted([
        "subscription_created", "trial_started", "payment_completed", "trial_converted", "subscription_upgraded",
        "payment_completed", "subscription_downgraded", "subscription_cancelled",
    ]), "and the refused change wrote nothing"


def test_a_subscription_paid_at_once_a_declined_upgrade_and_a_lapsed_membership(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    bob = shop.customer("bob")
    kind = membership_type(shop.engine)
    with transaction(session_factory(shop.engine)) as session:  # a plan that sells a membership
        make.provider(session)
        plan = make.product(session, price_cents=2800, billing_interval="monthly", metadata_={"membership_type_id": kind}).id
    sub = shop.subscribe(bob, plan)
    kinds = [e["type"] for e in recorded(shop.engine, user_id=bob.id)]
    assert sorted(kinds) == ["membership_started", "payment_completed", "subscription_created"], "no trial, so none started or converted"
    assert set(cohorts_of(shop.engine, bob.id)) == {"first_purchase", "first_subscription"}

    poor = shop.save_method(bob.token, "tok_sandbox_insufficient_funds")
    shop.post(bob, sub["id"], "change", payment_method_id=poor)
    frozen_clock.advance(7 * DAY)
    shop.post(bob, sub["id"], "change", 402, product_id=shop.product(5600))
    assert shop.get(bob, sub["id"])["product_id"] == plan, "declined: the plan stays"
    [up] = recorded(shop.engine, user_id=bob.id, event_type="subscription_upgraded")
    [reverted] = recorded(shop.engine, user_id=bob.id, event_type="subscription_change_reverted")
    assert (reverted["properties"]["product_id"], reverted["properties"]["price_cents"]) == (plan, 2800)
    assert len(recorded(shop.engine, user_id=bob.id, event_type="payment_completed")) == 1

    pass_ = order(shop.api, bob.token, (selling(shop.engine, membership_type(shop.engine, "fixed", 30)), 1))
    with shop.client(bob.token) as client:
        assert checkout(client, pass_["id"]).status_code == 200
    shop.post(bob, sub["id"], "cancel", at_period_end=True)
    frozen_clock.advance(30 * DAY)
    shop.sweep("renew")
    memberships.expire(shop.context)
    [ended] = recorded(shop.engine, user_id=bob.id, event_type="subscription_cancelled")
    assert ended["properties"]["reason"] == "period_end"
    [lapsed] = recorded(shop.engine, user_id=bob.id, event_type="membership_expired")
    assert lapsed["properties"]["order_id"] == pass_["id"], "the subscription's membership was cancelled with it, not expired"


def test_a_rolled_back_payment_writes_no_event_and_no_cohort(engine: Engine) -> None:
    with transaction(session_factory(engine)) as session:
        user = make.user(session)
        user_id, order_id = user.id, make.order(session, user=user, status="pending").id
        make.provider(session)
    sessions = session_factory(engine)
    for commit in (False, True):
        with sessions() as session:
            payment = Payment(user_id=user_id, order_id=order_id, provider_id="sandbox", amount_cents=700, currency="EUR", status="pending")
            session.add(payment)
            session.flush()
            PAYMENT.start(session, payment, "pending", by="test")
            PAYMENT.move(session, payment, "completed", by="test")
            if commit:
                session.commit()
            else:
                session.rollback()
                assert recorded(engine, user_id=user_id) == [] and cohorts_of(engine, user_id) == {}
    [bought] = recorded(engine, user_id=user_id)
    assert (bought["type"], bought["revenue_cents"], bought["currency"]) == ("payment_completed", 700, "EUR")
    assert cohorts_of(engine, user_id) == {"first_purchase": date(clock.now().year, clock.now().month, 1)}


@pytest.mark.every_database  # how the driver batches an executemany differs by database
def test_a_batch_of_payments_costs_one_insert_of_events_and_one_read_of_cohorts(engine: Engine) -> None:
    """The hot paths (a batch of renewals) pay for analytics per transaction, not per payment."""
    with transaction(session_factory(engine)) as session:
        users = [make.user(session) for _ in range(3)]
        orders = [(u.id, make.order(session, user=u, status="pending").id) for u in users for _ in range(10)]
        make.provider(session)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()[:3]))

    with session_factory(engine)() as session:
        payments = [Payment(id=new_id("pay"), user_id=u, order_id=o, provider_id="sandbox", amount_cents=100, currency="USD",
                            status="pending") for u, o in orders]
        session.add_all(payments)
        for payment in payments:
            PAYMENT.start(session, payment, "pending", by="test")
        session.flush()
        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            for payment in payments:
                PAYMENT.move(session, payment, "completed", by="test")
            session.commit()
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
    assert statements.count("INSERT INTO analytics_events") == 1, statements
    assert statements.count("SELECT user_cohorts.user_id, user_cohorts.cohort_type") == 1, statements
    assert len(recorded(engine, event_type="payment_completed", user_id=users[0].id)) == 10
    assert all(cohorts_of(engine, u.id) == {"first_purchase": date(clock.now().year, clock.now().month, 1)} for u in users)


def test_a_refund_that_fails_after_succeeding_gives_the_revenue_back_once(engine: Engine) -> None:
    with transaction(session_factory(engine)) as session:
        user = make.user(session)
        user_id, order_id = user.id, make.order(session, user=user, status="pending").id
        make.provider(session)
    with transaction(session_factory(engine)) as session:
        payment = Payment(id=new_id("pay"), user_id=user_id, order_id=order_id, provider_id="sandbox", amount_cents=900,
                          currency="GBP", status="pending")
        session.add(payment)
        PAYMENT.start(session, payment, "pending", by="test")
        PAYMENT.move(session, payment, "completed", by="test")
        session.flush()  # (no relationship orders the two inserts)
        refund = Refund(id=new_id("re"), payment_id=payment.id, provider_id="sandbox", amount_cents=900, currency="GBP", status="pending")
        session.add(refund)
        REFUND.start(session, refund, "pending", by="test")
        REFUND.move(session, refund, "succeeded", by="test")
        PAYMENT.move(session, payment, "refunded", by="test")
    with transaction(session_factory(engine)) as session:  # the provider says the refund failed after all
        refund, payment = session.get(Refund, refund.id), session.get(Payment, payment.id)
        REFUND.move(session, refund, "failed", by="test")
        PAYMENT.move(session, payment, "completed", by="test", reason="refund_failed")
    kinds = [(e["type"], e["revenue_cents"], e["currency"]) for e in recorded(engine, user_id=user_id)]
    assert sorted(kinds) == [("payment_completed", 900, "GBP"), ("refund_completed", -900, "GBP"), ("refund_reversed", 900, "GBP")]
