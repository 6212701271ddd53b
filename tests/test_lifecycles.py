"""Whole lifecycles driven as an operator drives a sandbox installation: BILLFOLD_SANDBOX=true, the
database's billing clock moved forward over HTTP (``POST /v1/admin/clock/advance``) or with
``billfold clock advance`` run as a command, and the worker catching up everything that became due
after each day of it. Customers act over the HTTP API; the tests look at what a customer or the
merchant would notice: statuses and dates, invoices, payments, emails, entitlements.

The installation runs on its database clock (``billing_clock``), whose real-time base is held still
for the test: time moves only when the test moves it, so "one second before the end" is exactly
that however long a step takes on a busy machine (real time would slip by under the assertions)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts.security import Security
from billfold.api import make_mailer
from billfold.config import Settings
from billfold.kit import clock
from billfold import mailer
from billfold.kit.db import session_factory, transaction
from billfold.kit.sweeps import Context
from billfold.models import MembershipType, Payment, Product, Subscription, UserMembership
from billfold.subscriptions.periods import add_months
from tests import factories as make
from tests.accounts import Api
from tests.cli import run
from tests.conftest import MigratedDatabases
from tests.server import serving
from tests.subscribing import Customer, Shop, when
from tests.test_checkout import checkout, order

DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
STATUSES = ("subscription.trialing", "subscription.active", "subscription.past_due", "subscription.cancelled")
DECLINED = "Your payment of {} did not go through"


@pytest.fixture
def engine(migrated: MigratedDatabases, backend: str) -> Engine:
    """A database of this module's own: moving its clock forward leaves other tests' rows (and
    their time) alone, and no other test's leftovers fall due here."""
    return migrated.engine(backend, "lifecycles")


@dataclass
class Sandbox(Shop):
    """A sandbox installation served over HTTP, with the shop's admin who moves its clock."""

    admin_token: str = ""
    billing_clock: clock.DatabaseClock | None = None

    def advance(self, by: str) -> dict[str, Any]:
        """``POST /v1/admin/clock/advance``: time moves, and every sweep catches up before the answer."""
        with self.client(self.admin_token) as client:
            answer = client.post("/v1/admin/clock/advance", json={"by": by}, timeout=300)
        assert answer.status_code == 200, answer.text
        moved = answer.json()
        assert when(moved["now"]) == clock.now(), "the API and this process keep one time"
        return moved

    def advance_to(self, moment: datetime) -> None:
        """Move the clock to exactly ``moment``: whole days, then the seconds left."""
        left = moment - clock.now()
        assert left >= SECOND, f"{moment} is not ahead of {clock.now()}"
        if left.days:
            self.advance(f"{left.days}d")
        if left.seconds:
            self.advance(f"{left.seconds}s")
        assert clock.now() == moment

    def entitled(self, customer: Customer, feature: str) -> bool:
        with self.client(customer.token) as client:
            answer = client.get(f"/v1/me/entitlements/{feature}")
        assert answer.status_code == 200, answer.text
        return answer.json()["allowed"]

    def memberships(self, customer: Customer) -> list[dict[str, Any]]:
        with self.client(customer.token) as client:
            answer = client.get("/v1/me/memberships")
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    def membership_type(self, duration_type: str, days: int | None, feature: str) -> str:
        with transaction(session_factory(self.engine)) as session:
            made = MembershipType(name=f"{duration_type} {feature}", duration_type=duration_type, duration_days=days,
                                  price_cents=1500, features=[feature])
            session.add(made)
            session.flush()
            return made.id

    def selling(self, product_id: str, membership_type_id: str) -> str:
        with transaction(session_factory(self.engine)) as session:
            session.get(Product, product_id).metadata_ = {"membership_type_id": membership_type_id}
        return product_id

    def statuses(self, subscription_id: str) -> list[str]:
        return [e.split(".")[1] for e in self.events(subscription_id) if e in STATUSES]


def sandbox_installation(engine: Engine, tmp_path: Path, **settings: Any) -> Iterator[Sandbox]:
    base = clock.FrozenClock(clock.SystemClock().now().replace(microsecond=0))
    billing_clock = clock.DatabaseClock(engine, real=base)
    with clock.using(billing_clock), serving(
        engine, tmp_path, sandbox=True, sign_in_attempts_per_address=1000, session_days=3650, **settings
    ) as url:
        configured = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path,
                              sandbox=True, **settings)
        sessions = session_factory(engine)
        mailer.deliver_after_commit(sessions, make_mailer(configured))
        shop = Sandbox(Api(url, tmp_path), engine, Context(sessions, configured, Security.from_settings(configured)),
                       billing_clock=billing_clock)
        shop.admin_token = shop.admin()
        try:
            yield shop
        finally:
            # Leave nothing due for the next test, and the database's clock at real time.
            with transaction(sessions) as session:
                session.execute(sa.update(Payment).where(Payment.subscription_id.is_not(None), Payment.status == "pending").values(status="failed"))
                session.execute(sa.update(Subscription).where(Subscription.status != "cancelled").values(status="cancelled"))
                session.execute(sa.update(UserMembership).where(UserMembership.status != "cancelled").values(status="cancelled"))
            with engine.begin() as connection:
                connection.execute(sa.text("UPDATE billing_clock SET offset_seconds = 0 WHERE id = 1"))
    assert not isinstance(clock.get_clock(), clock.DatabaseClock), "the process's clock is put back"


@pytest.fixture
def sandbox(engine: Engine, tmp_path: Path) -> Iterator[Sandbox]:
    yield from sandbox_installation(engine, tmp_path)


@pytest.fixture
def patient_sandbox(engine: Engine, tmp_path: Path) -> Iterator[Sandbox]:
    """A shop that leaves an unpaid subscription past due after the last retry, with ten days' grace."""
    yield from sandbox_installation(engine, tmp_path, dunning_final_action="leave_past_due", membership_grace_days=10)


def prorated(unit_cents: int, remaining: timedelta, period: timedelta) -> int:
    """What the docs promise: unit × remaining / period, rounded half up to the cent."""
    return math.floor(Fraction(unit_cents) * Fraction(int(remaining.total_seconds()), int(period.total_seconds())) + Fraction(1, 2))


def test_a_trial_is_charged_at_its_end_upgraded_fails_to_renew_recovers_in_dunning_and_renews_on_time(sandbox: Sandbox) -> None:
    ada = sandbox.customer("ada")
    basic, pro = sandbox.product(1000, trial_days=14), sandbox.product(3000)
    sub = sandbox.subscribe(ada, basic)
    trial_end = clock.now() + 14 * DAY
    assert sub["status"] == "trialing" and when(sub["trial_end"]) == trial_end
    assert sandbox.invoices(sub["id"]) == [] and sandbox.charges(sub["id"]) == []

    moved = sandbox.advance("13d")
    assert moved["done"]["subscriptions.trials"] == 0 and sandbox.get(ada, sub["id"])["status"] == "trialing"
    moved = sandbox.advance("1d")  # the trial ends: the first period is charged off-session
    assert moved["steps"] == 1 and moved["done"]["subscriptions.trials"] == 1
    sub = sandbox.get(ada, sub["id"])
    first_end = add_months(trial_end, 1)
    assert sub["status"] == "active"
    assert (when(sub["current_period_start"]), when(sub["current_period_end"])) == (trial_end, first_end)
    [first] = sandbox.invoices(sub["id"])
    assert (first.status, first.total_cents) == ("paid", 1000)

    sandbox.advance("7d")  # mid-period: the upgrade is prorated to the second
    changed = sandbox.post(ada, sub["id"], "change", product_id=pro)
    period, remaining = first_end - trial_end, first_end - clock.now()
    credit, charge = -prorated(1000, remaining, period), prorated(3000, remaining, period)
    assert changed["proration"]["credit_cents"] == credit and changed["proration"]["charge_cents"] == charge
    assert changed["subscription"]["product_id"] == pro and changed["subscription"]["price_cents"] == 3000
    upgrade = sandbox.invoices(sub["id"])[-1]
    assert (upgrade.id, upgrade.status, upgrade.total_cents) == (changed["invoice_id"], "paid", credit + charge)

    poor = sandbox.save_method(ada.token, "tok_sandbox_insufficient_funds")  # a card that declines from now on
    sandbox.post(ada, sub["id"], "change", payment_method_id=poor)
    sandbox.advance_to(first_end - SECOND)
    assert sandbox.get(ada, sub["id"])["status"] == "active" and len(sandbox.invoices(sub["id"])) == 2
    moved = sandbox.advance("1s")  # the period ends: the renewal is declined
    assert moved["done"]["subscriptions.renew"] == 1
    failed_at, second_end = first_end, add_months(trial_end, 2)
    sub = sandbox.get(ada, sub["id"])
    assert sub["status"] == "past_due" and when(sub["next_retry_at"]) == failed_at + 3 * DAY
    assert (when(sub["current_period_start"]), when(sub["current_period_end"])) == (first_end, second_end)
    renewal = sandbox.invoices(sub["id"])[-1]
    assert (renewal.status, renewal.total_cents, sub["outstanding_invoice_id"]) == ("open", 3000, renewal.id)
    assert sandbox.mails(ada.email).count(DECLINED.format("$30.00")) == 1

    moved = sandbox.advance("2d")
    assert moved["done"]["subscriptions.dunning"] == 0, "nothing before day 3"
    moved = sandbox.advance("1d")  # day 3: the first retry, declined
    assert moved["done"]["subscriptions.dunning"] == 1
    assert when(sandbox.get(ada, sub["id"])["next_retry_at"]) == failed_at + 5 * DAY
    moved = sandbox.advance("2d")  # day 5: the second retry, declined
    assert moved["done"]["subscriptions.dunning"] == 1
    sub = sandbox.get(ada, sub["id"])
    assert sub["status"] == "past_due" and when(sub["next_retry_at"]) == failed_at + 7 * DAY
    assert sandbox.mails(ada.email).count(DECLINED.format("$30.00")) == 3
    assert [p.status for p in sandbox.payments(sub["id"])].count("failed") == 3

    sandbox.post(ada, sub["id"], "change", payment_method_id=ada.card)  # fixed: the next retry is due at once
    moved = sandbox.advance("1m")
    assert moved["done"]["subscriptions.dunning"] == 1
    sub = sandbox.get(ada, sub["id"])
    assert (sub["status"], sub["outstanding_invoice_id"], sub["next_retry_at"]) == ("active", None, None)
    assert [i.status for i in sandbox.invoices(sub["id"])] == ["paid", "paid", "paid"]
    assert sandbox.statuses(sub["id"]) == ["trialing", "active", "past_due", "active"]
    assert sorted(c.amount.amount for c in sandbox.charges(sub["id"]) if c.status == "succeeded") == [1000, credit + charge, 3000]

    sandbox.advance_to(second_end - SECOND)  # the next renewal comes on the anchor's day, not later
    assert len(sandbox.invoices(sub["id"])) == 3
    moved = sandbox.advance("1s")
    assert moved["done"]["subscriptions.renew"] == 1
    sub = sandbox.get(ada, sub["id"])
    assert sub["status"] == "active"
    assert (when(sub["current_period_start"]), when(sub["current_period_end"])) == (second_end, add_months(trial_end, 3))
    latest = sandbox.invoices(sub["id"])[-1]
    assert (latest.status, latest.total_cents) == ("paid", 3000)
    assert sandbox.mails(ada.email).count(DECLINED.format("$30.00")) == 3, "no more dunning emails"


def test_without_recovery_the_last_retry_cancels_the_subscription_and_its_membership_ends_with_the_grace(sandbox: Sandbox) -> None:
    bob = sandbox.customer("bob")
    feature = f"reports-{bob.id[-6:].lower()}"
    plan = sandbox.selling(sandbox.product(1200), sandbox.membership_type("recurring", 30, feature))
    sub = sandbox.subscribe(bob, plan)
    paid_end = when(sub["current_period_end"])
    assert sub["status"] == "active" and paid_end == add_months(clock.now(), 1)
    assert sandbox.entitled(bob, feature)
    sandbox.post(bob, sub["id"], "change", payment_method_id=sandbox.save_method(bob.token, "tok_sandbox_insufficient_funds"))

    sandbox.advance_to(paid_end)  # the renewal is declined
    sub = sandbox.get(bob, sub["id"])
    assert sub["status"] == "past_due"
    for day in (3, 5):
        moved = sandbox.advance("2d" if day == 5 else "3d")
        assert moved["done"]["subscriptions.dunning"] == 1
        assert sandbox.get(bob, sub["id"])["status"] == "past_due"
        assert sandbox.entitled(bob, feature), f"within the grace on day {day}"
    sandbox.advance_to(paid_end + 7 * DAY - SECOND)
    assert sandbox.get(bob, sub["id"])["status"] == "past_due"
    assert sandbox.entitled(bob, feature), "the last second of the grace"
    [membership] = sandbox.memberships(bob)
    assert membership["status"] == "active" and when(membership["until"]) == paid_end + 7 * DAY

    moved = sandbox.advance("1s")  # day 7: the last retry is declined, and the final action applies
    # The grace ends on the same second: the worker stores the membership expired, then cancelled.
    assert moved["done"]["subscriptions.dunning"] == 1 and moved["done"]["memberships.expire"] >= 1
    sub = sandbox.get(bob, sub["id"])
    assert sub["status"] == "cancelled" and when(sub["cancelled_at"]) == paid_end + 7 * DAY and sub["next_retry_at"] is None
    assert [i.status for i in sandbox.invoices(sub["id"])] == ["paid", "uncollectible"]
    assert sandbox.statuses(sub["id"]) == ["trialing", "active", "past_due", "cancelled"]
    mails = sandbox.mails(bob.email)
    assert mails.count(DECLINED.format("$12.00")) == 3 and mails[-1] == "Your subscription has been cancelled"
    assert not sandbox.entitled(bob, feature), "the period paid for ended, and so did the grace"
    [membership] = sandbox.memberships(bob)
    assert (membership["status"], membership["grants"]) == ("cancelled", False)

    moved = sandbox.advance("60d")
    assert moved["done"]["subscriptions.renew"] == moved["done"]["subscriptions.dunning"] == 0
    assert len(sandbox.invoices(sub["id"])) == 2, "a cancelled subscription is never billed again"
    assert not sandbox.entitled(bob, feature)


def test_a_subscription_cancelled_at_period_end_stays_active_until_then_and_the_command_line_clock_ends_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    cy = sandbox.customer("cy")
    sub = sandbox.subscribe(cy, sandbox.product(800))
    period_end = when(sub["current_period_end"])
    cancelled = sandbox.post(cy, sub["id"], "cancel", at_period_end=True)["subscription"]
    assert cancelled["status"] == "active" and cancelled["cancel_at_period_end"] is True

    sandbox.advance_to(period_end - SECOND)
    sub = sandbox.get(cy, sub["id"])
    assert sub["status"] == "active" and sub["cancelled_at"] is None, "paid for until the period ends"

    # The operator moves the clock from a shell, against the same database, while the API serves.
    (tmp_path / "shell").mkdir()
    (tmp_path / "shell" / ".env").write_text(f"BILLFOLD_SANDBOX=true\nBILLFOLD_DATA_DIR={tmp_path}\n")
    result = run("clock", "advance", "30d", database_url=sandbox.engine.url.render_as_string(hide_password=False),
                 cwd=tmp_path / "shell")
    assert result.code == 0, result
    assert "Clock moved 30d ahead in 30 steps" in result.stdout
    assert re.search(r"^  subscriptions\.renew +1$", result.stdout, re.M), "cancelled, not renewed, at the period's end"
    assert sandbox.billing_clock is not None
    sandbox.billing_clock.refresh()  # this process's clock would see the new offset within a second anyway
    assert clock.now() == period_end - SECOND + 30 * DAY

    sub = sandbox.get(cy, sub["id"])
    assert sub["status"] == "cancelled" and when(sub["cancelled_at"]) == period_end
    assert sandbox.statuses(sub["id"]) == ["trialing", "active", "cancelled"]
    assert len(sandbox.invoices(sub["id"])) == 1 and len(sandbox.payments(sub["id"])) == 1, "no further invoice"
    assert len(sandbox.charges(sub["id"])) == 1


def test_a_fixed_membership_bought_by_order_expires_on_the_second(sandbox: Sandbox) -> None:
    dee = sandbox.customer("dee")
    feature = f"exports-{dee.id[-6:].lower()}"
    fixed = sandbox.membership_type("fixed", 30, feature)
    with transaction(session_factory(sandbox.engine)) as session:
        make.provider(session)
        pass_id = make.product(session, product_type="digital", is_recurring=False, billing_interval=None, price_cents=4900,
                               metadata_={"membership_type_id": fixed}).id
    made = order(sandbox.api, dee.token, (pass_id, 1))
    with sandbox.client(dee.token) as client:
        assert checkout(client, made["id"]).status_code == 200
    bought_at = clock.now()
    [membership] = sandbox.memberships(dee)
    end = bought_at + 30 * DAY
    assert (membership["order_id"], membership["status"], when(membership["end_date"])) == (made["id"], "active", end)

    sandbox.advance_to(end - SECOND)
    assert sandbox.entitled(dee, feature), "one second before its end"
    [membership] = sandbox.memberships(dee)
    assert (membership["status"], membership["grants"]) == ("active", True)

    moved = sandbox.advance("1s")
    assert moved["done"]["memberships.expire"] == 1
    assert not sandbox.entitled(dee, feature), "the end is exclusive"
    [membership] = sandbox.memberships(dee)
    assert (membership["status"], membership["grants"]) == ("expired", False), "the worker stored it"


def test_a_membership_following_a_subscription_cancelled_at_period_end_ends_on_the_second(sandbox: Sandbox) -> None:
    eve = sandbox.customer("eve")
    feature = f"seats-{eve.id[-6:].lower()}"
    plan = sandbox.selling(sandbox.product(1500, trial_days=14), sandbox.membership_type("recurring", 30, feature))
    sub = sandbox.subscribe(eve, plan)
    assert sub["status"] == "trialing" and sandbox.entitled(eve, feature), "entitled in the trial"
    sandbox.advance("14d")
    sub = sandbox.get(eve, sub["id"])
    period_end = when(sub["current_period_end"])
    assert sub["status"] == "active" and sandbox.entitled(eve, feature)
    sandbox.post(eve, sub["id"], "cancel", at_period_end=True)

    sandbox.advance_to(period_end - SECOND)
    assert sandbox.entitled(eve, feature), "paid until the period ends"
    [membership] = sandbox.memberships(eve)
    assert (membership["status"], membership["grants"]) == ("active", True)

    moved = sandbox.advance("1s")
    assert moved["done"]["subscriptions.renew"] == 1 and moved["done"]["memberships.expire"] == 1
    assert sandbox.get(eve, sub["id"])["status"] == "cancelled"
    assert not sandbox.entitled(eve, feature), "no grace after a cancellation"
    [membership] = sandbox.memberships(eve)
    assert (membership["status"], membership["grants"], when(membership["end_date"])) == ("cancelled", False, period_end)
    assert len(sandbox.invoices(sub["id"])) == 1


def test_a_membership_of_an_unpaid_subscription_expires_when_the_grace_ends_and_comes_back_when_it_pays(
    patient_sandbox: Sandbox,
) -> None:
    shop = patient_sandbox
    fay = shop.customer("fay")
    feature = f"api-{fay.id[-6:].lower()}"
    plan = shop.selling(shop.product(2000), shop.membership_type("recurring", 30, feature))
    sub = shop.subscribe(fay, plan)
    paid_end = when(sub["current_period_end"])
    shop.post(fay, sub["id"], "change", payment_method_id=shop.save_method(fay.token, "tok_sandbox_insufficient_funds"))

    shop.advance_to(paid_end)  # the renewal is declined; retries on days 3, 5 and 7 are declined too
    shop.advance("7d")
    sub = shop.get(fay, sub["id"])
    assert (sub["status"], sub["next_retry_at"]) == ("past_due", None), "left past due after the last retry"
    assert [i.status for i in shop.invoices(sub["id"])] == ["paid", "uncollectible"]
    assert shop.mails(fay.email)[-1] == "Your subscription is unpaid"
    assert shop.entitled(fay, feature), "within the ten days' grace"

    shop.advance_to(paid_end + 10 * DAY - SECOND)
    assert shop.entitled(fay, feature), "the last second of the grace"
    moved = shop.advance("1s")
    assert moved["done"]["memberships.expire"] == 1
    assert not shop.entitled(fay, feature), "the grace is over"
    [membership] = shop.memberships(fay)
    assert (membership["status"], membership["grants"]) == ("expired", False)

    shop.post(fay, sub["id"], "change", payment_method_id=fay.card)  # the customer pays after all
    moved = shop.advance("1m")
    assert moved["done"]["subscriptions.dunning"] == 1 and moved["done"]["memberships.expire"] == 1
    sub = shop.get(fay, sub["id"])
    assert (sub["status"], sub["outstanding_invoice_id"]) == ("active", None)
    assert [i.status for i in shop.invoices(sub["id"])] == ["paid", "paid"]
    assert shop.entitled(fay, feature)
    [membership] = shop.memberships(fay)
    assert (membership["status"], when(membership["end_date"])) == ("active", when(sub["current_period_end"]))


def test_a_declined_first_charge_grants_no_membership(sandbox: Sandbox) -> None:
    gus = sandbox.customer("gus", token="tok_sandbox_insufficient_funds")
    feature = f"export-{gus.id[-6:].lower()}"
    plan = sandbox.selling(sandbox.product(900), sandbox.membership_type("recurring", 30, feature))
    with sandbox.client(gus.token) as client:
        refused = client.post("/v1/subscriptions", json={"product_id": plan})
    assert refused.status_code == 402, refused.text
    assert sandbox.get(gus, refused.json()["subscription_id"])["status"] == "cancelled"
    assert not sandbox.entitled(gus, feature), "nothing was paid"
    sandbox.advance("1d")
    [membership] = sandbox.memberships(gus)
    assert (membership["status"], membership["grants"]) == ("cancelled", False)
