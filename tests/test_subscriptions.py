"""Subscriptions over real HTTP on each database, with the sandbox provider and the frozen clock:
the customer acts through the API, the worker by its sweeps, called directly."""

from __future__ import annotations

from datetime import timedelta

from billfold.kit import clock
from billfold.subscriptions.periods import add_months
from tests.subscribing import SWEEPS, Shop, shop, when  # noqa: F401  (fixture)
from tests.test_organizations import assert_problem

DAY = timedelta(days=1)
STATUSES = ("subscription.trialing", "subscription.active", "subscription.past_due", "subscription.cancelled")


def statuses(shop: Shop, subscription_id: str) -> list[str]:
    return [e.split(".")[1] for e in shop.events(subscription_id) if e in STATUSES]


def test_a_trial_becomes_active_is_upgraded_fails_to_renew_is_retried_and_recovers(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    ada = shop.customer("ada")
    basic, pro = shop.product(1000, trial_days=14), shop.product(3000)
    sub = shop.subscribe(ada, basic)
    assert sub["status"] == "trialing" and when(sub["trial_end"]) == clock.now() + 14 * DAY
    assert shop.invoices(sub["id"]) == [] and shop.charges(sub["id"]) == []

    frozen_clock.advance(14 * DAY)  # 2026-02-14 09:30: the trial ends
    shop.sweep("trials")
    sub = shop.get(ada, sub["id"])
    assert sub["status"] == "active"
    assert (when(sub["current_period_start"]), when(sub["current_period_end"])) == (clock.now(), clock.now() + 28 * DAY)
    [first] = shop.invoices(sub["id"])
    assert (first.status, first.total_cents) == ("paid", 1000)

    frozen_clock.advance(7 * DAY)  # 21 of the period's 28 days left: −750 + 2250
    changed = shop.post(ada, sub["id"], "change", product_id=pro)
    assert changed["proration"] | {"remaining_seconds": 0, "period_seconds": 0} == {
        "credit_cents": -750, "charge_cents": 2250, "net_cents": 1500, "remaining_seconds": 0, "period_seconds": 0
    }
    assert changed["subscription"]["price_cents"] == 3000 and changed["subscription"]["product_id"] == pro
    upgrade = shop.invoices(sub["id"])[-1]
    assert (upgrade.id, upgrade.status, upgrade.total_cents) == (changed["invoice_id"], "paid", 1500)

    poor = shop.save_method(ada.token, "tok_sandbox_insufficient_funds")
    shop.post(ada, sub["id"], "change", payment_method_id=poor)
    frozen_clock.advance(21 * DAY)  # 2026-03-14 09:30: the period ends; the renewal is declined
    failed_at = clock.now()
    shop.sweep("renew")
    sub = shop.get(ada, sub["id"])
    assert sub["status"] == "past_due" and when(sub["next_retry_at"]) == failed_at + 3 * DAY
    renewal = shop.invoices(sub["id"])[-1]
    assert (renewal.status, renewal.total_cents, sub["outstanding_invoice_id"]) == ("open", 3000, renewal.id)
    assert when(sub["current_period_end"]) == when("2026-04-14T09:30:00Z"), "the period moves on; its invoice waits"

    frozen_clock.advance(2 * DAY)
    assert shop.sweep("dunning") == 0, "nothing before day 3"
    frozen_clock.advance(DAY)  # day 3
    assert shop.sweep("dunning") == 1
    assert when(shop.get(ada, sub["id"])["next_retry_at"]) == failed_at + 5 * DAY
    frozen_clock.advance(2 * DAY)  # day 5
    assert shop.sweep("dunning") == 1
    sub = shop.get(ada, sub["id"])
    assert sub["status"] == "past_due" and when(sub["next_retry_at"]) == failed_at + 7 * DAY

    shop.post(ada, sub["id"], "change", payment_method_id=ada.card)  # fixed: retried at once
    assert shop.sweep("dunning") == 1
    sub = shop.get(ada, sub["id"])
    assert (sub["status"], sub["outstanding_invoice_id"], sub["next_retry_at"]) == ("active", None, None)
    assert [i.status for i in shop.invoices(sub["id"])] == ["paid", "paid", "paid"]
    assert statuses(shop, sub["id"]) == ["trialing", "active", "past_due", "active"]
    succeeded = [c.amount.amount for c in shop.charges(sub["id"]) if c.status == "succeeded"]
    assert sorted(succeeded) == [1000, 1500, 3000]
    assert len([p for p in shop.payments(sub["id"]) if p.status == "failed"]) == 3
    assert shop.mails(ada.email).count("Your payment of $30.00 did not go through") == 3


def test_the_subscription_is_cancelled_after_the_final_retry(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    bob = shop.customer("bob")
    sub = shop.subscribe(bob, shop.product(1200))
    assert sub["status"] == "active" and when(sub["current_period_end"]) == when("2026-02-28T09:30:00Z")
    shop.post(bob, sub["id"], "change", payment_method_id=shop.save_method(bob.token, "tok_sandbox_insufficient_funds"))
    frozen_clock.set(when("2026-02-28T09:30:00Z"))
    shop.sweep("renew")
    for day in (3, 5):
        frozen_clock.set(when("2026-02-28T09:30:00Z") + day * DAY)
        assert shop.sweep("dunning") == 1
        assert shop.get(bob, sub["id"])["status"] == "past_due"
    frozen_clock.set(when("2026-02-28T09:30:00Z") + 7 * DAY)
    assert shop.sweep("dunning") == 1
    sub = shop.get(bob, sub["id"])
    assert sub["status"] == "cancelled" and sub["cancelled_at"]
    assert [i.status for i in shop.invoices(sub["id"])] == ["paid", "uncollectible"]
    assert statuses(shop, sub["id"]) == ["trialing", "active", "past_due", "cancelled"]
    assert shop.mails(bob.email)[-1] == "Your subscription has been cancelled"
    frozen_clock.advance(60 * DAY)
    shop.sweep("renew"), shop.sweep("dunning")
    assert len(shop.invoices(sub["id"])) == 2, "a cancelled subscription is never billed again"


def test_a_hard_decline_is_not_retried(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    cy = shop.customer("cy")
    sub = shop.subscribe(cy, shop.product(900))
    shop.post(cy, sub["id"], "change", payment_method_id=shop.save_method(cy.token, "tok_sandbox_expired_card"))
    frozen_clock.set(when(sub["current_period_end"]))
    shop.sweep("renew")
    sub = shop.get(cy, sub["id"])
    assert sub["status"] == "cancelled" and sub["next_retry_at"] is None
    assert [i.status for i in shop.invoices(sub["id"])] == ["paid", "uncollectible"]
    assert len(shop.payments(sub["id"])) == 2


def test_a_declined_first_charge_answers_402_and_leaves_nothing_active_or_owed(shop: Shop) -> None:
    dee = shop.customer("dee", token="tok_sandbox_insufficient_funds")
    problem = assert_problem(
        shop.client(dee.token).post("/v1/subscriptions", json={"product_id": shop.product(500)}), 402, "payment_declined"
    )
    assert problem["decline_code"] == "insufficient_funds"
    sub = shop.get(dee, problem["subscription_id"])
    assert sub["status"] == "cancelled"
    assert [i.status for i in shop.invoices(sub["id"])] == ["void"]
    assert statuses(shop, sub["id"]) == ["trialing", "cancelled"], "never active"


def test_monthly_periods_keep_the_anchor_day_from_31_january(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    eve = shop.customer("eve")
    sub = shop.subscribe(eve, shop.product(700))  # 2026-01-31 09:30
    ends = [sub["current_period_end"]]
    for _ in range(3):
        frozen_clock.set(when(ends[-1]))
        shop.sweep("renew")
        ends.append(shop.get(eve, sub["id"])["current_period_end"])
    assert [when(e).date().isoformat() for e in ends] == ["2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31"]
    assert [i.total_cents for i in shop.invoices(sub["id"])] == [700] * 4


def test_cancel_at_period_end_can_be_undone_and_otherwise_ends_the_subscription(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    fay = shop.customer("fay")
    sub = shop.subscribe(fay, shop.product(800))
    assert shop.post(fay, sub["id"], "cancel", at_period_end=True)["subscription"]["cancel_at_period_end"] is True
    assert shop.post(fay, sub["id"], "resume")["cancel_at_period_end"] is False
    shop.post(fay, sub["id"], "cancel", at_period_end=True)
    frozen_clock.set(when(sub["current_period_end"]) - timedelta(seconds=1))
    shop.sweep("renew")
    assert shop.get(fay, sub["id"])["status"] == "active", "still paid for until the period ends"
    frozen_clock.advance(timedelta(seconds=1))
    late = shop.client(fay.token).post(f"/v1/subscriptions/{sub['id']}/resume", json={})
    assert_problem(late, 409, "subscription_not_changeable")  # the period has ended; the worker has not run yet
    shop.sweep("renew")
    sub = shop.get(fay, sub["id"])
    assert sub["status"] == "cancelled" and len(shop.invoices(sub["id"])) == 1
    assert_problem(shop.client(fay.token).post(f"/v1/subscriptions/{sub['id']}/resume", json={}), 409, "subscription_not_changeable")


def test_a_paused_subscription_is_not_renewed_and_restarts_when_unpaused(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    gus = shop.customer("gus")
    sub = shop.subscribe(gus, shop.product(600))
    assert shop.post(gus, sub["id"], "pause")["paused"] is True
    frozen_clock.set(when(sub["current_period_end"]) + 40 * DAY)
    shop.sweep("renew")
    assert len(shop.invoices(sub["id"])) == 1 and shop.get(gus, sub["id"])["status"] == "active"
    resumed_at = clock.now()
    assert shop.post(gus, sub["id"], "unpause")["paused"] is False
    shop.sweep("renew")
    sub = shop.get(gus, sub["id"])
    assert (when(sub["current_period_start"]), when(sub["current_period_end"])) == (resumed_at, add_months(resumed_at, 1))
    assert [i.status for i in shop.invoices(sub["id"])] == ["paid", "paid"]


def test_a_downgrade_becomes_credit_on_the_next_invoice(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    hal = shop.customer("hal")
    pro, basic = shop.product(3000), shop.product(1000)
    sub = shop.subscribe(hal, pro)  # period of 28 days
    frozen_clock.advance(14 * DAY)
    changed = shop.post(hal, sub["id"], "change", product_id=basic, quantity=2)
    assert (changed["proration"]["credit_cents"], changed["proration"]["charge_cents"]) == (-1500, 1000)
    assert changed["invoice_id"] is None and changed["subscription"]["credit_cents"] == 500
    frozen_clock.set(when(sub["current_period_end"]))
    shop.sweep("renew")
    renewal = shop.invoices(sub["id"])[-1]
    assert (renewal.total_cents, renewal.status) == (2000 - 500, "paid")
    assert shop.get(hal, sub["id"])["credit_cents"] == 0


def test_the_renewal_sweep_run_again_at_the_same_moment_does_nothing(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    ivy = shop.customer("ivy")
    sub = shop.subscribe(ivy, shop.product(1100))
    frozen_clock.set(when(sub["current_period_end"]))
    assert shop.sweep("renew") >= 1
    assert SWEEPS["renew"](shop.context) == 0
    assert len(shop.invoices(sub["id"])) == 2
    assert len([c for c in shop.charges(sub["id"]) if c.status == "succeeded"]) == 2


def test_a_catalog_price_change_reaches_a_subscription_only_by_migration(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    admin_token = shop.admin()
    from billfold.kit.db import session_factory, transaction
    from billfold.models import Product

    jo = shop.customer("jo")
    plan = shop.product(1000)
    sub = shop.subscribe(jo, plan)
    with transaction(session_factory(shop.engine)) as session:
        session.get(Product, plan).price_cents = 1500  # type: ignore[union-attr]
    frozen_clock.set(when(sub["current_period_end"]))
    shop.sweep("renew")
    assert shop.invoices(sub["id"])[-1].total_cents == 1000, "the price agreed to"
    assert_problem(shop.client(jo.token).post(f"/v1/subscriptions/{sub['id']}/migrate-price", json={}), 403, "forbidden")
    with shop.client(admin_token) as admin:
        assert admin.post(f"/v1/subscriptions/{sub['id']}/migrate-price", json={}).json()["price_cents"] == 1500
    frozen_clock.set(when(shop.get(jo, sub["id"])["current_period_end"]))
    shop.sweep("renew")
    assert shop.invoices(sub["id"])[-1].total_cents == 1500


def test_cancelling_now_with_a_refund_gives_back_the_unused_time(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    admin_token = shop.admin()
    kim = shop.customer("kim")
    sub = shop.subscribe(kim, shop.product(2800))  # 28 days
    frozen_clock.advance(7 * DAY)
    assert_problem(shop.client(kim.token).post(f"/v1/subscriptions/{sub['id']}/cancel", json={"at_period_end": False, "refund": True}), 403, "forbidden")
    with shop.client(admin_token) as admin:
        done = admin.post(f"/v1/subscriptions/{sub['id']}/cancel", json={"at_period_end": False, "refund": True})
    assert done.status_code == 200, done.text
    assert done.json()["refund_cents"] == 2100 and done.json()["subscription"]["status"] == "cancelled"
    [payment] = shop.payments(sub["id"])
    with shop.client(admin_token) as admin:
        assert admin.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == "cancelled"
    from billfold.kit.db import session_factory
    from billfold.payments.refunds import refunded_cents

    with session_factory(shop.engine)() as session:
        assert refunded_cents(session, payment.id) == 2100


def test_an_idempotency_key_makes_one_subscription(shop: Shop) -> None:
    lu = shop.customer("lu")
    plan = shop.product(1300)
    with shop.client(lu.token) as client:
        first = client.post("/v1/subscriptions", json={"product_id": plan}, headers={"Idempotency-Key": "sub-once-1"})
        again = client.post("/v1/subscriptions", json={"product_id": plan}, headers={"Idempotency-Key": "sub-once-1"})
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        mine = client.get("/v1/subscriptions", params={"limit": 100}).json()["data"]
    assert [s["id"] for s in mine if s["product_id"] == plan] == [first.json()["id"]]
    assert len(shop.charges(first.json()["id"])) == 1


def test_cancelling_with_a_refund_whose_answer_was_lost_is_finished_by_its_retry(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    """The cancellation is kept; the retry with the same key finishes the refund instead of
    answering 409 for a subscription cancelled already, and the answer says how the refund went."""
    from billfold.payments.engine import STALE_AFTER

    admin_token = shop.admin()
    kim = shop.customer("kim")
    sub = shop.subscribe(kim, shop.product(2800))  # 28 days
    slow = shop.save_method(kim.token, "tok_sandbox_timeout_after_success")  # its refunds' answers are lost too
    shop.post(kim, sub["id"], "change", payment_method_id=slow)
    frozen_clock.set(when(sub["current_period_end"]))
    shop.sweep("renew")
    frozen_clock.advance(STALE_AFTER + timedelta(minutes=1))
    shop.sweep("renew")  # the renewal's lost answer, asked again
    assert [p.status for p in shop.payments(sub["id"])] == ["completed", "completed"]
    frozen_clock.advance(7 * DAY - STALE_AFTER - timedelta(minutes=1))
    body, key = {"at_period_end": False, "refund": True}, {"Idempotency-Key": "cancel-lost-refund"}
    with shop.client(admin_token) as admin:
        lost = admin.post(f"/v1/subscriptions/{sub['id']}/cancel", json=body, headers=key)
        assert lost.status_code == 503 and lost.headers["Retry-After"], lost.text
        assert admin.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == "cancelled"
        done = admin.post(f"/v1/subscriptions/{sub['id']}/cancel", json=body, headers=key)
    assert done.status_code == 200, done.text
    assert done.json()["refund_status"] == "succeeded" and 2000 < done.json()["refund_cents"] < 2200, "21 of 28 days"
    assert done.json()["subscription"]["status"] == "cancelled"
    from billfold.kit.db import session_factory
    from billfold.payments.refunds import refunded_cents

    with session_factory(shop.engine)() as session:
        assert refunded_cents(session, shop.payments(sub["id"])[-1].id) == done.json()["refund_cents"], "refunded once"


def test_a_subscription_without_a_billing_row_is_listed_and_refused_changes_not_a_500(api, engine, admin_token) -> None:
    """Rows written straight into the spec's table (an import) have no billing row of Billfold's:
    they are shown, and a change answers 409 saying why (the fuzzer met one and got 500s)."""
    from billfold.kit.db import session_factory, transaction
    from billfold.kit.ids import new_id
    from tests import factories as make

    with transaction(session_factory(engine)) as session:
        subscription_id = make.subscription(session, user=make.user(session)).id
    with api.client(admin_token) as admin:
        listed = admin.get("/v1/subscriptions", params={"limit": 100})
        assert listed.status_code == 200, listed.text
        one = admin.get(f"/v1/subscriptions/{subscription_id}")
        changes = [
            admin.post(f"/v1/subscriptions/{subscription_id}/{action}", json=body, headers={"Idempotency-Key": new_id("key")})
            for action, body in (("cancel", {}), ("pause", None), ("resume", None), ("unpause", None), ("migrate-price", {}),
                                 ("change", {"quantity": 2}))
        ]
    assert one.status_code == 200, one.text
    assert (one.json()["quantity"], one.json()["credit_cents"]) == (1, 0)
    for answer in changes:
        assert answer.status_code == 409, (answer.request.url, answer.text)
        assert "no billing record" in answer.json()["detail"]


def test_a_batch_of_renewals_charges_at_once_and_each_subscription_once(shop: Shop, frozen_clock: clock.FrozenClock) -> None:
    """With the provider 200 ms away, the renewal sweep's calls for a batch overlap (the sandbox
    counts its calls in flight), and each renewal is still charged once, under its own key."""
    from dataclasses import replace

    from billfold.accounts.security import Security
    from billfold.kit.db import reading
    from billfold.payments import provider_config

    plan = shop.product(900)
    ada = shop.customer("overlap")
    subs = [shop.subscribe(ada, plan)["id"] for _ in range(6)]
    frozen_clock.set(when(shop.get(ada, subs[0])["current_period_end"]))
    settings = shop.context.settings.model_copy(update={"sandbox_latency_ms": 200, "provider_calls_at_once": 16})
    context = replace(shop.context, settings=settings, security=Security.from_settings(settings))

    assert SWEEPS["renew"](context) == 6, "one batch"

    with reading(context.sessions) as session:
        sandbox = provider_config.adapter_for_provider(session, context.security, "sandbox")
    assert sandbox.most_calls_in_flight >= 4, f"the batch's 6 charges overlapped: {sandbox.most_calls_in_flight} at most at once"
    for sub in subs:
        assert [p.status for p in shop.payments(sub)] == ["completed", "completed"]
        assert [i.status for i in shop.invoices(sub)] == ["paid", "paid"]
        assert [c.status for c in shop.charges(sub)] == ["succeeded", "succeeded"], "charged once a period"
