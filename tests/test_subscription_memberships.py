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


def _membership_and_answer(shop: Shop, person: object, feature: str) -> tuple[dict, dict]:
    with shop.client(person.token) as client:  # type: ignore[attr-defined]
        [membership] = client.get("/v1/me/memberships").json()["data"]
        answer = client.get(f"/v1/me/entitlements/{feature}").json()
    return membership, answer


def test_cancelled_at_period_end_the_membership_ends_with_the_period_no_grace_and_no_renewal(
    shop: Shop, frozen_clock: clock.FrozenClock
) -> None:
    kim = shop.customer("kim")
    feature = f"ledger-{kim.id[-6:].lower()}"
    sub = shop.subscribe(kim, _plan_selling_membership(shop, feature))
    frozen_clock.advance(timedelta(days=15))
    shop.sweep("trials")
    membership, answer = _membership_and_answer(shop, kim, feature)
    end = clock.ensure_utc(datetime.fromisoformat(shop.get(kim, sub["id"])["current_period_end"]))
    assert membership["auto_renew"] is True
    assert clock.ensure_utc(datetime.fromisoformat(answer["until"])) == end + timedelta(days=7), "a renewing one keeps the grace"
    cancelled = shop.post(kim, sub["id"], "cancel", at_period_end=True)
    assert cancelled["subscription"]["cancel_at_period_end"] is True
    membership, answer = _membership_and_answer(shop, kim, feature)
    assert membership["auto_renew"] is False, "it will not renew"
    assert answer["allowed"] is True
    assert clock.ensure_utc(datetime.fromisoformat(answer["until"])) == end, "access ends with the period paid for"
    assert clock.ensure_utc(datetime.fromisoformat(membership["until"])) == end
    frozen_clock.set(end)  # before the renewal sweep has cancelled it
    membership, answer = _membership_and_answer(shop, kim, feature)
    assert answer["allowed"] is False and membership["grants"] is False
    frozen_clock.set(end - timedelta(seconds=1))
    shop.post(kim, sub["id"], "resume")
    membership, answer = _membership_and_answer(shop, kim, feature)
    assert membership["auto_renew"] is True
    assert clock.ensure_utc(datetime.fromisoformat(answer["until"])) == end + timedelta(days=7)


def test_a_trial_without_a_payment_method_grants_until_the_trial_ends(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    lee = shop.customer("lee")
    with shop.client(lee.token) as client:
        assert client.delete(f"/v1/me/payment-methods/{lee.card}").status_code == 204
    feature = f"atlas-{lee.id[-6:].lower()}"
    sub = shop.subscribe(lee, _plan_selling_membership(shop, feature))
    assert sub["status"] == "trialing" and sub["payment_method_id"] is None
    trial_end = clock.ensure_utc(datetime.fromisoformat(sub["trial_end"]))
    membership, answer = _membership_and_answer(shop, lee, feature)
    assert answer["allowed"] is True
    assert clock.ensure_utc(datetime.fromisoformat(answer["until"])) == trial_end, "nothing will be charged: no grace"
    assert membership["auto_renew"] is False
    frozen_clock.set(trial_end)
    assert _membership_and_answer(shop, lee, feature)[1]["allowed"] is False, "not a second past the trial"
    frozen_clock.set(trial_end - timedelta(days=1))
    shop.save_method(lee.token, "tok_sandbox_visa")  # a card to charge: the trial's end will renew it
    membership, answer = _membership_and_answer(shop, lee, feature)
    assert membership["auto_renew"] is True
    assert clock.ensure_utc(datetime.fromisoformat(answer["until"])) == trial_end + timedelta(days=7)


def test_a_refund_on_cancelling_now_issues_a_credit_note_against_the_period_invoice(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    admin_token = shop.admin()
    mo = shop.customer("mo")
    sub = shop.subscribe(mo, _plan_selling_membership(shop, f"maps-{mo.id[-6:].lower()}"))
    frozen_clock.advance(timedelta(days=15))
    shop.sweep("trials")
    frozen_clock.advance(timedelta(days=3))
    with shop.client(admin_token) as client:
        done = client.post(f"/v1/subscriptions/{sub['id']}/cancel", json={"at_period_end": False, "refund": True})
    assert done.status_code == 200, done.text
    refunded = done.json()["refund_cents"]
    assert refunded > 0
    with shop.client(mo.token) as client:
        [invoice] = client.get("/v1/invoices", params={"subscription_id": sub["id"]}).json()["data"]
        [note] = client.get("/v1/credit-notes", params={"invoice_id": invoice["id"]}).json()["data"]
    assert (invoice["status"], invoice["credited_cents"], invoice["credit_status"]) == ("paid", refunded, "partially_credited")
    assert (note["amount_cents"], note["refund_id"], note["invoice_number"]) == (refunded, done.json()["refund_id"], invoice["invoice_number"])
