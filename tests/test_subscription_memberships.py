"""A plan that sells a membership type: subscribing grants the membership, which follows the
subscription (entitled in the trial, while active and until a cancelled subscription's paid period ends)."""

from __future__ import annotations

from datetime import datetime, timedelta

from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.models import MembershipType, Product
from tests.subscribing import Shop, shop  # noqa: F401  (fixture)


def _plan_selling_membership(shop: Shop, feature: str) -> str:
    product_id = shop.product(1500, trial_days=14)
    with transaction(session_factory(shop.engine)) as session:
        kind = MembershipType(name="Pro", duration_type="recurring", duration_days=30, price_cents=1500, features=[feature])
        session.add(kind)
        session.flush()
        session.get(Product, product_id).metadata_ = {"membership_type_id": kind.id}
    return product_id


def test_subscribing_to_a_plan_grants_its_membership_until_the_cancelled_period_ends(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    pat = shop.customer("pat")
    feature = f"reports-{pat.id[-6:].lower()}"
    sub = shop.subscribe(pat, _plan_selling_membership(shop, feature))
    assert sub["status"] == "trialing"
    with shop.client(pat.token) as client:
        assert client.get(f"/v1/me/entitlements/{feature}").json()["allowed"] is True
        [membership] = client.get("/v1/me/memberships").json()["data"]
        assert membership["subscription_id"] == sub["id"]
    frozen_clock.advance(timedelta(days=15))
    shop.sweep("trials")
    assert shop.get(pat, sub["id"])["status"] == "active"
    with shop.client(pat.token) as client:
        assert client.get(f"/v1/me/entitlements/{feature}").json()["allowed"] is True
    shop.post(pat, sub["id"], "cancel", at_period_end=True)
    with shop.client(pat.token) as client:
        assert client.get(f"/v1/me/entitlements/{feature}").json()["allowed"] is True, "paid until the period ends"
    frozen_clock.set(clock.ensure_utc(datetime.fromisoformat(shop.get(pat, sub["id"])["current_period_end"])))
    shop.sweep("renew")
    assert shop.get(pat, sub["id"])["status"] == "cancelled"
    with shop.client(pat.token) as client:
        assert client.get(f"/v1/me/entitlements/{feature}").json()["allowed"] is False


def test_cancelling_now_ends_the_membership_now_with_or_without_a_refund(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    admin_token = shop.admin()
    for name, refund in (("rui", False), ("noa", True)):
        person = shop.customer(name)
        feature = f"exports-{person.id[-6:].lower()}"
        sub = shop.subscribe(person, _plan_selling_membership(shop, feature))
        frozen_clock.advance(timedelta(days=15))
        shop.sweep("trials")
        frozen_clock.advance(timedelta(days=3))
        assert shop.get(person, sub["id"])["status"] == "active"
        with shop.client(admin_token if refund else person.token) as client:
            done = client.post(f"/v1/subscriptions/{sub['id']}/cancel", json={"at_period_end": False, "refund": refund})
        assert done.status_code == 200, done.text
        cancelled = done.json()["subscription"]
        assert cancelled["status"] == "cancelled"
        assert clock.ensure_utc(datetime.fromisoformat(cancelled["current_period_end"])) == clock.now(), "the period ends now"
        assert (done.json()["refund_cents"] > 0) == refund
        with shop.client(person.token) as client:
            assert client.get(f"/v1/me/entitlements/{feature}").json()["allowed"] is False, name
            [membership] = client.get("/v1/me/memberships").json()["data"]
        assert (membership["current_status"], membership["grants"]) == ("cancelled", False)
