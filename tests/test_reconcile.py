"""``billfold reconcile`` through the real command, against a real database and the provider's fake:
a checkout or refund whose answer (and webhook) was lost is settled through the engine and a second
run agrees; what no one can safely repair (a charge of no one's, amounts changed on either side, a
charge the provider no longer has or failed) is reported with exit 1 and changes nothing;
--dry-run changes nothing; bad input or a provider that cannot be read is one line and exit 2;
--json parses.

Each test has a ``World``: a provider of its own (so the window holds only the test's objects), a
way to pay through it, to act at the provider behind Billfold's back, and to alter either side's
records. Other providers' fakes join by adding a maker to ``WORLDS``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.kit.money import Money
from billfold.models import Order, Payment, PaymentEvent, PaymentProvider, PaymentWebhook, Refund
from billfold.providers.base import ChargeResult, WebhookEvent
from billfold.providers.sandbox import SandboxProvider
from tests import cli
from tests import factories as make
from tests.accounts import Api
from tests.test_checkout import checkout, customer, order, product
from tests.test_organizations import assert_problem

SLOW = "tok_sandbox_timeout_after_success"  # the provider acts, then its answer is lost


@dataclass
class World:
    """One provider and its fake, as a reconciliation test needs them."""

    api: Api
    engine: Engine
    provider_id: str
    since: str  # the window's start: a minute before the world began, by the Billfold clock
    adapter: Callable[[], SandboxProvider]
    alter_charge: Callable[[str, dict[str, object]], None]  # change the provider's record of a charge
    forget_charge: Callable[[str], None]  # the provider loses a charge
    events_about: Callable[[str], list[WebhookEvent]]  # the provider's events about an object

    def lose_webhooks(self, object_id: str) -> int:
        """Deliver the provider's events about ``object_id`` to Billfold's inbox, then delete the
        stored deliveries before any is processed (a lost webhook); how many were lost."""
        stored = []
        for event in self.events_about(object_id):
            body, headers = self.adapter().build_webhook(event)
            with httpx.Client(base_url=self.api.url, timeout=30) as client:
                answer = client.post(f"/v1/webhooks/{self.provider_id}", content=body,
                                     headers={**headers, "content-type": "application/json"})
            assert answer.status_code == 200, answer.text
            stored.append(answer.json()["id"])
        with transaction(session_factory(self.engine)) as session:
            deleted = session.execute(sa.delete(PaymentWebhook).where(PaymentWebhook.id.in_(stored))).rowcount
        assert deleted == len(stored) > 0
        return deleted

    def pay(self, token: str = "tok_sandbox_visa", price: int = 1000, *, retry: bool = False) -> tuple[str, str]:
        """Check out an order of ``price`` through this provider: (order id, payment id). A token
        whose answer is lost leaves the payment pending (503), as a customer who gave up would,
        unless ``retry``: the customer's retry then completes it."""
        buyer = customer(self.api, self.engine)
        made = order(self.api, buyer.token, (product(self.engine, price), 1))
        with self.api.client(buyer.token) as client:
            answer = checkout(client, made["id"], token=token, provider_id=self.provider_id)
            if retry and answer.status_code == 503:
                answer = checkout(client, made["id"], token=token, provider_id=self.provider_id)
        assert answer.status_code in ((200,) if retry else (200, 503)), answer.text
        [payment] = payments_of(self.engine, made["id"])
        return made["id"], payment.id

    def charge_behind_our_back(self, cents: int, **metadata: str) -> ChargeResult:
        return self.adapter().charge(amount=Money(cents, "USD"), idempotency_key=new_id("dash"),
                                     token="tok_sandbox_visa", metadata=metadata)

    def reconcile(self, *args: str) -> cli.Result:
        return cli.run("reconcile", "--provider", self.provider_id, "--since", self.since, *args,
                       database_url=url(self.engine), settings={"BILLFOLD_DATA_DIR": str(self.api.data_dir)})

    def report(self, *args: str) -> tuple[int, dict]:
        result = self.reconcile("--json", *args)
        assert result.code in (0, 1), result
        return result.code, json.loads(result.stdout)


def url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def sandbox_world(api: Api, engine: Engine, tmp_path: Path) -> World:
    provider_id = "rc_" + new_id("x")[-14:].lower()  # the random end of the id: its start is the time
    state = tmp_path / f"{provider_id}.sqlite3"
    with transaction(session_factory(engine)) as session:
        session.add(PaymentProvider(id=provider_id, display_name="Reconciled sandbox",
                                    config={"kind": "sandbox", "state_path": str(state)}))

    def fake() -> SandboxProvider:
        return SandboxProvider(provider_id, {"state_path": str(state)})

    def edit(statement: str, *params: object) -> None:
        with sqlite3.connect(state) as db:
            assert db.execute(statement, params).rowcount == 1

    def alter(charge_id: str, values: dict[str, object]) -> None:
        for column, value in values.items():
            edit(f"UPDATE charges SET {column} = ? WHERE id = ?", value, charge_id)  # noqa: S608

    since = (clock.now() - timedelta(minutes=1)).isoformat()
    return World(api, engine, provider_id, since, fake, alter,
                 lambda charge_id: edit("DELETE FROM charges WHERE id = ?", charge_id),
                 lambda object_id: fake().list_events(object_id=object_id))


WORLDS: dict[str, Callable[[Api, Engine, Path], World]] = {"sandbox": sandbox_world}


@pytest.fixture(params=sorted(WORLDS))
def world(request: pytest.FixtureRequest, api: Api, engine: Engine, tmp_path: Path) -> World:
    return WORLDS[request.param](api, engine, tmp_path)


def payments_of(engine: Engine, order_id: str) -> list[Payment]:
    with session_factory(engine)() as session:
        return list(session.scalars(sa.select(Payment).where(Payment.order_id == order_id).order_by(Payment.id)))


def row(engine: Engine, model: type, row_id: str) -> object:
    with session_factory(engine)() as session:
        found = session.get(model, row_id)
        session.expunge_all()
        return found


def reconciled(engine: Engine, entity_id: str) -> list[dict]:
    with session_factory(engine)() as session:
        return [e.data or {} for e in session.scalars(sa.select(PaymentEvent).where(
            PaymentEvent.entity_id == entity_id, PaymentEvent.event_type.like("%.reconciled")))]


def sql(engine: Engine, statement: str, **params: object) -> None:
    with transaction(session_factory(engine)) as session:
        assert session.execute(sa.text(statement), params).rowcount == 1


@pytest.mark.every_database
def test_a_checkout_whose_answer_and_webhook_were_lost_is_repaired_and_a_second_run_agrees(world: World) -> None:
    order_id, payment_id = world.pay(SLOW)  # charged at the provider; Billfold heard nothing
    [charge] = world.adapter().list_charges()
    assert world.lose_webhooks(charge.id) >= 1  # and the webhooks that would have told it were lost
    assert row(world.engine, Payment, payment_id).status == "pending"
    dry = world.reconcile("--dry-run")
    assert dry.code == 1, dry
    assert "repairable" in dry.stdout and payment_id in dry.stdout and charge.id in dry.stdout
    assert "dry run: nothing changed" in dry.stdout
    assert row(world.engine, Payment, payment_id).status == "pending", "--dry-run changes nothing"
    assert reconciled(world.engine, payment_id) == []

    first = world.reconcile()
    assert first.code == 0, first
    assert f"repaired      missing_ours   charge {payment_id} / {charge.id}" in first.stdout
    assert "All agree." in first.stdout
    payment = row(world.engine, Payment, payment_id)
    assert (payment.status, payment.provider_payment_id) == ("completed", charge.id)
    assert row(world.engine, Order, order_id).status == "paid"
    [audited] = reconciled(world.engine, payment_id)
    assert audited["provider_object_id"] == charge.id and audited["finding"] == "missing_ours"

    code, again = world.report()
    assert code == 0 and again["all_agree"] and again["findings"] == []
    assert again["counts"]["agreed"] == 1 and again["checked"] == {"charges": 1, "refunds": 0}


def test_a_payment_recorded_failed_that_the_provider_completed_is_completed_by_a_late_success(world: World) -> None:
    order_id, payment_id = world.pay()
    # As if the charge had been given up on (failed, the order payable again) before it succeeded.
    sql(world.engine, "UPDATE payments SET status = 'failed', completed_at = NULL WHERE id = :id", id=payment_id)
    sql(world.engine, "UPDATE orders SET status = 'pending', completed_at = NULL WHERE id = :id", id=order_id)
    code, report = world.report("--until", (clock.now() + timedelta(minutes=1)).isoformat())
    assert code == 0, report["findings"]
    [finding] = report["findings"]
    assert (finding["kind"], finding["ours"], finding["action"]) == ("status", payment_id, "repaired")
    assert row(world.engine, Payment, payment_id).status == "completed"
    assert row(world.engine, Order, order_id).status == "paid"


def test_a_repair_the_provider_cannot_make_now_is_left_for_the_next_run(world: World) -> None:
    _, payment_id = world.pay(SLOW)
    with transaction(session_factory(world.engine)) as session:  # switched off: listed, but not asked to settle
        session.get_one(PaymentProvider, world.provider_id).is_active = False
    code, report = world.report()
    assert code == 1
    [finding] = report["findings"]
    assert (finding["kind"], finding["ours"], finding["action"]) == ("missing_ours", payment_id, "repair_failed")
    assert "not active" in finding["detail"]
    assert row(world.engine, Payment, payment_id).status == "pending"
    with transaction(session_factory(world.engine)) as session:
        session.get_one(PaymentProvider, world.provider_id).is_active = True
    assert world.reconcile().code == 0
    assert row(world.engine, Payment, payment_id).status == "completed"


def test_a_charge_naming_no_payment_of_ours_is_reported_and_changes_nothing(world: World) -> None:
    _, payment_id = world.pay()
    stranger = world.charge_behind_our_back(700)
    impostor = world.charge_behind_our_back(800, payment_id="pay_not_billfolds")
    code, report = world.report()
    assert code == 1 and not report["all_agree"]
    assert report["counts"]["unknown"] == 2 and report["counts"]["agreed"] == 1
    found = {f["theirs"]: f for f in report["findings"]}
    assert set(found) == {stranger.id, impostor.id}
    assert all(f["kind"] == "unknown" and f["action"] == "reported" and f["ours"] is None for f in found.values())
    assert "pay_not_billfolds" in found[impostor.id]["detail"]
    assert row(world.engine, Payment, payment_id).status == "completed"
    plain = world.reconcile()
    assert plain.code == 1 and "2 disagreements left for a person." in plain.stdout


def test_amounts_and_states_changed_on_either_side_are_reported_and_nothing_is_repaired(world: World) -> None:
    _, ours_changed = world.pay(price=1000)  # 1200 with the buyer's 20 % VAT
    _, theirs_changed = world.pay(price=2000)
    _, theirs_failed = world.pay(price=3000)
    _, theirs_lost = world.pay(price=4000)
    sql(world.engine, "UPDATE payments SET amount_cents = 1300 WHERE id = :id", id=ours_changed)
    charges = {c.metadata["payment_id"]: c.id for c in world.adapter().list_charges()}
    world.alter_charge(charges[theirs_changed], {"amount": 2500, "amount_captured": 2500})
    world.alter_charge(charges[theirs_failed], {"status": "failed", "provider_status": "declined"})
    world.forget_charge(charges[theirs_lost])
    code, report = world.report()
    assert code == 1, report
    kinds = {(f["ours"], f["kind"], f["action"]) for f in report["findings"]}
    assert kinds == {
        (ours_changed, "amount", "reported"), (theirs_changed, "amount", "reported"),
        (theirs_failed, "status", "reported"), (theirs_lost, "missing_theirs", "reported"),
    }
    assert report["counts"] | {"agreed": 0} == {"agreed": 0, "repaired": 0, "missing_ours": 0, "unknown": 0,
                                                "missing_theirs": 1, "amount": 2, "status": 1, "refunded": 0}
    with session_factory(world.engine)() as session:
        rows = {p.id: (p.status, p.amount_cents) for p in session.scalars(sa.select(Payment).where(
            Payment.id.in_([ours_changed, theirs_changed, theirs_failed, theirs_lost])))}
    assert rows == {ours_changed: ("completed", 1300), theirs_changed: ("completed", 2400),
                    theirs_failed: ("completed", 3600), theirs_lost: ("completed", 4800)}
    assert all(reconciled(world.engine, p) == [] for p in rows)


@pytest.mark.every_database
def test_a_refund_whose_answer_and_webhook_were_lost_is_repaired(world: World, admin_token: str) -> None:
    order_id, payment_id = world.pay(SLOW, price=1500, retry=True)  # a charge whose refund's answer is lost too
    with world.api.client(admin_token) as admin:
        lost = admin.post(f"/v1/payments/{payment_id}/refunds", json={"reason": "answer lost"})
        refund_id = assert_problem(lost, 503, "provider_unavailable")["refund_id"]
    [made] = world.adapter().list_refunds()
    assert world.lose_webhooks(made.id) >= 1
    assert row(world.engine, Refund, refund_id).status == "pending"
    code, report = world.report()
    assert code == 0, report["findings"]
    [finding] = report["findings"]
    assert (finding["kind"], finding["object"], finding["ours"], finding["theirs"], finding["action"]) == (
        "missing_ours", "refund", refund_id, made.id, "repaired")
    refund = row(world.engine, Refund, refund_id)
    assert (refund.status, refund.provider_refund_id) == ("succeeded", made.id)
    assert row(world.engine, Payment, payment_id).status == "refunded"
    assert row(world.engine, Order, order_id).status == "refunded"
    assert [e["finding"] for e in reconciled(world.engine, refund_id)] == ["missing_ours"]
    code, again = world.report()
    assert code == 0 and again["findings"] == [] and again["counts"]["agreed"] == 2


def test_bad_input_is_one_line_and_exit_2_and_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    with transaction(session_factory(engine)) as session:
        provider_id = make.provider(session).id
    with session_factory(engine)() as session:
        before = session.scalars(sa.select(sa.func.count()).select_from(PaymentEvent)).one()
    settings = {"BILLFOLD_DATA_DIR": str(tmp_path)}
    bad_date = cli.run("reconcile", "--provider", "sandbox", "--since", "last tuesday", database_url=url(engine), settings=settings)
    assert bad_date.code == 2
    cli.assert_one_line_error(bad_date, "--since 'last tuesday' is not a date")
    unknown = cli.run("reconcile", "--provider", "no_such_provider", "--since", "7d", database_url=url(engine), settings=settings)
    assert unknown.code == 2
    cli.assert_one_line_error(unknown, "no payment provider no_such_provider")
    empty = cli.run("reconcile", "--provider", provider_id, "--since", "2026-12-01", "--until", "2026-11-01",
                    database_url=url(engine), settings=settings)
    assert empty.code == 2
    cli.assert_one_line_error(empty, "the window is empty")
    with transaction(session_factory(engine)) as session:  # a provider that cannot be reached
        broken = new_id("rc").lower()[:20]
        session.add(PaymentProvider(id=broken, display_name="Broken sandbox",
                                    config={"kind": "sandbox", "state_path": str(tmp_path / "no" / "such" / "dir" / "x.db")}))
    unreachable = cli.run("reconcile", "--provider", broken, "--since", "1d", database_url=url(engine), settings=settings)
    assert unreachable.code == 2
    cli.assert_one_line_error(unreachable, broken)
    with session_factory(engine)() as session:
        assert session.scalars(sa.select(sa.func.count()).select_from(PaymentEvent)).one() == before
