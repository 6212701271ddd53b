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
