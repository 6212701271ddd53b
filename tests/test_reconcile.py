"""``billfold reconcile`` through the real command, against a real database and each provider's fake
(the sandbox, localstripe, the PayPal and Authorize.net fakes): a checkout or refund whose answer
(and webhook) was lost is settled through the engine and a second run agrees; what no one can
safely repair (a charge of no one's, amounts changed on either side, a charge the provider no
longer has or failed) is reported with exit 1 and changes nothing; --dry-run changes nothing; bad
input or a provider that cannot be read is one line and exit 2; --json parses.

Each test has a ``World``: a provider of its own, configured through the admin API (so the window
holds only the test's objects: every world but the sandbox starts its own fake), a way to pay
through it, to lose the provider's next answer, to act at the provider behind Billfold's back, and
to alter either side's records. Other providers' fakes join by adding a maker to ``WORLDS``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.kit.money import Money
from billfold.models import Order, Payment, PaymentEvent, PaymentProvider, PaymentWebhook, Refund
from billfold.providers.authorizenet import AuthorizeNetProvider, opaque_token, sign_webhook
from billfold.providers.base import ChargeResult, ChargeStatus, ProviderAdapter
from billfold.providers.paypal import PayPalProvider
from billfold.providers.sandbox import SandboxProvider
from billfold.providers.stripe import StripeProvider
from tests import authorizenet_fake, cli
from tests import factories as make
from tests.accounts import Api
from tests.paypal_fake import Fault, PayPalFake, serving
from tests.stripe_fake import SECRET_KEY, losing_answers, running_localstripe
from tests.test_checkout import checkout, customer, order, product
from tests.test_organizations import assert_problem

# stripe-python's HTTPX client hands its form body to httpx as data=, which httpx deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

SLOW = "tok_sandbox_timeout_after_success"  # the sandbox acts, then its answer is lost (every time)
Delivery = tuple[bytes, dict[str, str]]


@dataclass
class World:
    """One provider and its fake, as a reconciliation test needs them."""

    api: Api
    engine: Engine
    provider_id: str
    since: str  # the window's start: a minute before the world began, by the Billfold clock
    adapter: Callable[[], ProviderAdapter]  # talks to the fake directly (never through a losing proxy)
    token: Callable[[], str | None]  # what a customer checks out with (None: the buyer approves at the provider)
    approve: Callable[[str], None]  # the buyer approves the provider's object (PayPal)
    lose_next: Callable[[str], None]  # the next "charge" or "refund" is made, and its answer lost
    charge_behind_our_back: Callable[..., ChargeResult]  # (cents, **metadata): made at the provider itself
    alter_charge: Callable[..., None]  # (charge id, amount=cents | failed=True): the provider's record changes
    forget_charge: Callable[[str], None]  # the provider loses a charge
    deliveries_about: Callable[[str], list[Delivery]]  # the provider's webhooks about an object, signed
    settle: Callable[[], None] = lambda: None  # the provider settles what it charged (before refunding)
    slow_token: str | None = None  # a token whose every answer is lost (the sandbox's way of lose_next)
    cannot_alter: str | None = None  # why the provider's records cannot be altered or lost, if they cannot
    fake: Any = None  # the fake itself, for a provider's own test

    def lose_webhooks(self, object_id: str) -> int:
        """Deliver the provider's webhooks about ``object_id`` to Billfold's inbox, then delete the
        stored deliveries before any is processed (a lost webhook); how many were lost."""
        stored = []
        for body, headers in self.deliveries_about(object_id):
            with httpx.Client(base_url=self.api.url, timeout=30) as client:
                answer = client.post(f"/v1/webhooks/{self.provider_id}", content=body,
                                     headers={**headers, "content-type": "application/json"})
            assert answer.status_code == 200, answer.text
            stored.append(answer.json()["id"])
        with transaction(session_factory(self.engine)) as session:
            deleted = session.execute(sa.delete(PaymentWebhook).where(PaymentWebhook.id.in_(stored))).rowcount
        assert deleted == len(stored) > 0
        return deleted

    def pay(self, price: int = 1000, *, lose_answer: bool = False, retry: bool = False) -> tuple[str, str]:
        """Check out an order of ``price`` through this provider: (order id, payment id). With
        ``lose_answer`` the provider charges and its answer is lost, so the payment stays pending
        (503), as a customer who gave up would leave it, unless ``retry``: the customer's retry
        then completes it. A provider the buyer approves at is approved, then confirmed."""
        buyer = customer(self.api, self.engine)
        made = order(self.api, buyer.token, (product(self.engine, price), 1))
        token = self.slow_token if lose_answer and self.slow_token else self.token()
        body: dict[str, Any] = {"provider_id": self.provider_id, **({"token": token} if token else {})}
        with self.api.client(buyer.token) as client:
            if token is None:  # the buyer approves at the provider; the shop then confirms
                waiting = checkout(client, made["id"], **body)
                assert waiting.status_code == 202, waiting.text
                self.approve(waiting.json()["payment"]["provider_payment_id"])
                go: Callable[[], httpx.Response] = lambda: client.post(
                    f"/v1/payments/{waiting.json()['payment']['id']}/confirm")
            else:
                go = lambda: checkout(client, made["id"], **body)  # noqa: E731
            if lose_answer:
                self.lose_next("charge")
            answer = go()
            if retry and answer.status_code == 503:
                answer = go()
        assert answer.status_code in ((200,) if retry or not lose_answer else (503,)), answer.text
        [payment] = payments_of(self.engine, made["id"])
        return made["id"], payment.id

    @property
    def start(self) -> datetime:
        return datetime.fromisoformat(self.since)

    def reconcile(self, *args: str) -> cli.Result:
        return cli.run("reconcile", "--provider", self.provider_id, "--since", self.since, *args,
                       database_url=url(self.engine), settings={"BILLFOLD_DATA_DIR": str(self.api.data_dir)})

    def report(self, *args: str) -> tuple[int, dict]:
        result = self.reconcile("--json", *args)
        assert result.code in (0, 1), result
        return result.code, json.loads(result.stdout)


def url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def started() -> str:
    return (clock.now() - timedelta(minutes=1)).isoformat()


def configure(api: Api, admin_token: str, kind: str, config: dict[str, Any]) -> str:
    """A provider of ``kind`` made through the admin API, as an operator makes one."""
    provider_id = f"rc_{kind[:6]}_" + new_id("x")[-10:].lower()
    with api.client(admin_token) as admin:
        made = admin.post("/v1/payment-providers", json={"id": provider_id, "kind": kind,
                                                         "display_name": f"Reconciled {kind}", "config": config})
    assert made.status_code == 201, made.text
    return provider_id


def no_approval(object_id: str) -> None:
    raise AssertionError(f"nothing waits for the buyer's approval here ({object_id})")


# ---- the sandbox ------------------------------------------------------------------------------------


@contextmanager
def sandbox_world(api: Api, engine: Engine, tmp_path: Path, admin_token: str) -> Iterator[World]:
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

    def alter(charge_id: str, *, amount: int | None = None, failed: bool = False) -> None:
        values: dict[str, object] = {"amount": amount, "amount_captured": amount} if amount is not None else {}
        values |= {"status": "failed", "provider_status": "declined"} if failed else {}
        for column, value in values.items():
            edit(f"UPDATE charges SET {column} = ? WHERE id = ?", value, charge_id)  # noqa: S608

    def behind(cents: int, **metadata: str) -> ChargeResult:
        return fake().charge(amount=Money(cents, "USD"), idempotency_key=new_id("dash"), token="tok_sandbox_visa",
                             metadata=metadata)

    def deliveries(object_id: str) -> list[Delivery]:
        return [fake().build_webhook(event) for event in fake().list_events(object_id=object_id)]

    yield World(api, engine, provider_id, started(), fake, lambda: "tok_sandbox_visa", no_approval,
                lambda what: None, behind, alter, lambda charge_id: edit("DELETE FROM charges WHERE id = ?", charge_id),
                deliveries, slow_token=SLOW)


# ---- Stripe, against localstripe ---------------------------------------------------------------------

STRIPE_WEBHOOK_SECRET = "whsec_billfold_reconcile_0123456789abcdef"


@contextmanager
def stripe_world(api: Api, engine: Engine, tmp_path: Path, admin_token: str) -> Iterator[World]:
    """localstripe of its own (it cannot be emptied), reached by Billfold through a proxy that can
    lose an answer; the test's own calls go to localstripe directly."""
    with running_localstripe(tmp_path / "localstripe.log") as server, losing_answers(server.url) as proxy:
        config = {"secret_key": SECRET_KEY, "webhook_secret": STRIPE_WEBHOOK_SECRET, "localstripe": True}
        provider_id = configure(api, admin_token, "stripe", {**config, "api_base": proxy.url})
        direct = StripeProvider(provider_id, {**config, "api_base": server.url})

        def lose_next(what: str) -> None:  # the PaymentIntent's confirmation, or the refund's creation
            proxy.lose, proxy.lose_method = {"charge": ("/confirm", "POST"), "refund": ("/v1/refunds", "POST")}[what]

        def behind(cents: int, **metadata: str) -> ChargeResult:
            return direct.charge(amount=Money(cents, "USD"), idempotency_key=new_id("dash"), token=server.card(),
                                 metadata=metadata)

        def cannot_alter(charge_id: str, **changes: object) -> None:
            raise AssertionError("localstripe cannot alter or forget a PaymentIntent")

        def deliveries(object_id: str) -> list[Delivery]:
            if object_id.startswith("pi_"):
                kind, obj = "payment_intent.succeeded", server.get(f"/v1/payment_intents/{object_id}")
            else:
                kind, obj = "refund.created", server.get(f"/v1/refunds/{object_id}")
            event = {"id": "evt_" + new_id("x")[-16:], "object": "event", "type": kind, "api_version": "2024-06-20",
                     "created": int(clock.now().timestamp()), "data": {"object": obj}, "livemode": False}
            return [direct.build_webhook(event)]

        try:
            yield World(api, engine, provider_id, started(), lambda: direct, server.card, no_approval, lose_next,
                        behind, cannot_alter, cannot_alter, deliveries,
                        cannot_alter="localstripe (a process of its own, like Stripe) has no way to change a succeeded "
                                     "PaymentIntent's amount or status, nor to delete one")
        finally:
            direct.close()


# ---- PayPal, against its contract-checked fake ----------------------------------------------------------

PAYPAL = {"client_id": "AbFakeClientId0123", "client_secret": "EKfake-client-secret-never-shown-0123456789",
          "webhook_id": "1JE4291016473214C"}


@contextmanager
def paypal_world(api: Api, engine: Engine, tmp_path: Path, admin_token: str) -> Iterator[World]:
    """The PayPal fake of its own; Billfold gives up on an answer after 1 s, a lost one comes after 1.5 s."""
    fake = PayPalFake(PAYPAL["client_id"], PAYPAL["client_secret"], PAYPAL["webhook_id"], hang_seconds=1.5)
    with serving(fake):
        config = {**PAYPAL, "api_base": fake.url, "timeout_seconds": 1}
        provider_id = configure(api, admin_token, "paypal", config)
        direct = PayPalProvider(provider_id, {**config, "timeout_seconds": 10})

        def approve(order_id: str) -> None:
            with httpx.Client(base_url=fake.url, timeout=10) as hooks:
                hooks.post(f"/_fake/orders/{order_id}/approve", json={}).raise_for_status()

        def lose_next(what: str) -> None:
            fake.state.faults.append(Fault("timeout", {"charge": "/capture", "refund": "/refund"}[what]))

        def behind(cents: int, **metadata: str) -> ChargeResult:
            key = new_id("dash")
            made = direct.create_charge(amount=Money(cents, "USD"), idempotency_key=key, metadata=metadata)
            approve(made.id)
            return direct.confirm(charge_id=made.id, idempotency_key=key)

        def alter(order_id: str, *, amount: int | None = None, failed: bool = False) -> None:
            unit = fake.state.orders[order_id].order["purchase_units"][0]
            [capture] = unit["payments"]["captures"]
            if amount is not None:
                for money in (unit["amount"], capture["amount"]):
                    money["value"] = str(Decimal(amount) / 100)
            if failed:
                capture["status"] = "DECLINED"

        def forget(order_id: str) -> None:
            record = fake.state.orders.pop(order_id)
            for capture in record.order["purchase_units"][0]["payments"]["captures"]:
                del fake.state.captures[capture["id"]]
            fake.state.transactions[:] = [t for t in fake.state.transactions if t["paypal_reference_id"] != order_id]

        def deliveries(object_id: str) -> list[Delivery]:
            if object_id in fake.state.refunds:
                return [fake.build_webhook("PAYMENT.CAPTURE.REFUNDED", fake.state.refunds[object_id], "refund")]
            record = fake.state.orders[object_id]
            capture = record.order["purchase_units"][0]["payments"]["captures"][-1]
            return [fake.build_webhook("PAYMENT.CAPTURE.COMPLETED", fake._capture_out(record, capture))]  # noqa: SLF001

        try:
            yield World(api, engine, provider_id, started(), lambda: direct, lambda: None, approve, lose_next,
                        behind, alter, forget, deliveries, fake=fake)
        finally:
            direct.close()
        assert fake.state.violations == [], "no request or answer broke PayPal's documents"


# ---- Authorize.net, against its fake --------------------------------------------------------------------

ANET = {"api_login_id": "fake-login-4Xc9", "transaction_key": "tk-9f8e7d6c5b4a3210",
        "signature_key": "5B7C0A3E9F1D2C4B6A8E0F1D3C5B7A9E" * 4}


@contextmanager
def authorizenet_world(api: Api, engine: Engine, tmp_path: Path, admin_token: str) -> Iterator[World]:
    """The Authorize.net fake of its own; Billfold gives up on an answer after 0.5 s, a lost one
    comes after 1 s. Charges are settled before a refund (an unsettled one is only voided)."""
    with authorizenet_fake.running(ANET["api_login_id"], ANET["transaction_key"], ANET["signature_key"],
                                   stall_seconds=1.0) as fake:
        config = {**ANET, "api_base": fake.api_base, "timeout_seconds": 0.5}
        provider_id = configure(api, admin_token, "authorizenet", config)
        direct = AuthorizeNetProvider(provider_id, {**config, "timeout_seconds": 10})

        def lose_next(what: str) -> None:  # charges and refunds are both createTransactionRequest
            with fake._lock:  # noqa: SLF001
                fake.failures.append(("timeout", "after", "createTransactionRequest"))

        def behind(cents: int, **metadata: str) -> ChargeResult:
            return direct.charge(amount=Money(cents, "USD"), idempotency_key=new_id("dash"),
                                 token=opaque_token("approve"), metadata=metadata)

        def alter(trans_id: str, *, amount: int | None = None, failed: bool = False) -> None:
            with fake._lock:  # noqa: SLF001
                record = fake.transactions[trans_id]
                if amount is not None:
                    record["authAmount"] = record["settleAmount"] = Decimal(amount) / 100
                if failed:
                    record.update(transactionStatus="declined", responseCode=2, responseReasonCode=2)

        def forget(trans_id: str) -> None:
            with fake._lock:  # noqa: SLF001
                del fake.transactions[trans_id]

        def deliveries(trans_id: str) -> list[Delivery]:
            found = []
            for event in [e for e in fake.events if e["payload"].get("id") == trans_id]:
                body = authorizenet_fake._dumps(event)[len(authorizenet_fake.BOM):]  # noqa: SLF001
                found.append((body, {"X-ANET-Signature": sign_webhook(body, ANET["signature_key"])}))
            return found

        def settle() -> None:
            httpx.post(fake.url + "/_fake/settle", timeout=10).raise_for_status()

        yield World(api, engine, provider_id, started(), lambda: direct, lambda: opaque_token("approve"),
                    no_approval, lose_next, behind, alter, forget, deliveries, settle)


WORLDS: dict[str, Callable[[Api, Engine, Path, str], AbstractContextManager[World]]] = {
    "sandbox": sandbox_world, "stripe": stripe_world, "paypal": paypal_world, "authorizenet": authorizenet_world,
}


# Billfold's own SQL of a repair on every database, with the sandbox; each real provider's fake on
# the one database its test's name picks (what differs there is the provider, not the database).
ON_EVERY_DATABASE = pytest.mark.parametrize(
    "world", [pytest.param(name, marks=pytest.mark.every_database) if name == "sandbox" else name for name in sorted(WORLDS)],
    indirect=True,
)


@pytest.fixture(params=sorted(WORLDS))
def world(request: pytest.FixtureRequest, api: Api, engine: Engine, tmp_path: Path, admin_token: str) -> Iterator[World]:
    with WORLDS[request.param](api, engine, tmp_path, admin_token) as made:
        yield made


def payments_of(engine: Engine, order_id: str) -> list[Payment]:
    with session_factory(engine)() as session:
        return list(session.scalars(sa.select(Payment).where(Payment.order_id == order_id).order_by(Payment.id)))


def row(engine: Engine, model: type, row_id: str) -> Any:
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


@ON_EVERY_DATABASE
def test_a_checkout_whose_answer_and_webhook_were_lost_is_repaired_and_a_second_run_agrees(world: World) -> None:
    order_id, payment_id = world.pay(lose_answer=True)  # charged at the provider; Billfold heard nothing
    [charge] = world.adapter().list_charges(world.start)
    assert world.lose_webhooks(charge.id) >= 1  # and the webhooks that would have told it were lost
    pending = row(world.engine, Payment, payment_id)
    assert pending.status == "pending"
    # Never heard of the charge, unless the provider's object was made (and its id kept) before the
    # money moved and only the capture's answer was lost (PayPal's approved order): then the states differ.
    kind = "missing_ours" if pending.provider_payment_id is None else "status"
    dry = world.reconcile("--dry-run")
    assert dry.code == 1, dry
    assert "repairable" in dry.stdout and payment_id in dry.stdout and charge.id in dry.stdout
    assert "dry run: nothing changed" in dry.stdout
    assert row(world.engine, Payment, payment_id).status == "pending", "--dry-run changes nothing"
    assert reconciled(world.engine, payment_id) == []

    first = world.reconcile()
    assert first.code == 0, first
    assert f"repaired      {kind:<14} charge {payment_id} / {charge.id}" in first.stdout
    assert "All agree." in first.stdout
    payment = row(world.engine, Payment, payment_id)
    assert (payment.status, payment.provider_payment_id) == ("completed", charge.id)
    assert row(world.engine, Order, order_id).status == "paid"
    [audited] = reconciled(world.engine, payment_id)
    assert audited["provider_object_id"] == charge.id and audited["finding"] == kind

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
    _, payment_id = world.pay(lose_answer=True)
    with transaction(session_factory(world.engine)) as session:  # switched off: listed, but not asked to settle
        session.get_one(PaymentProvider, world.provider_id).is_active = False
    code, report = world.report()
    assert code == 1
    [finding] = report["findings"]
    kind = "missing_ours" if row(world.engine, Payment, payment_id).provider_payment_id is None else "status"
    assert (finding["kind"], finding["ours"], finding["action"]) == (kind, payment_id, "repair_failed")
    assert "not active" in finding["detail"]
    assert row(world.engine, Payment, payment_id).status == "pending"
    with transaction(session_factory(world.engine)) as session:
        session.get_one(PaymentProvider, world.provider_id).is_active = True
    assert world.reconcile().code == 0
    assert row(world.engine, Payment, payment_id).status == "completed"


def test_a_charge_naming_no_payment_of_ours_is_reported_and_changes_nothing(world: World) -> None:
    _, payment_id = world.pay()
    stranger = world.charge_behind_our_back(700)  # made in the provider's dashboard, say
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
    if world.cannot_alter:
        pytest.skip(world.cannot_alter)
    _, ours_changed = world.pay(price=1000)  # 1200 with the buyer's 20 % VAT
    _, theirs_changed = world.pay(price=2000)
    _, theirs_failed = world.pay(price=3000)
    _, theirs_lost = world.pay(price=4000)
    sql(world.engine, "UPDATE payments SET amount_cents = 1300 WHERE id = :id", id=ours_changed)
    charges = {c.metadata["payment_id"]: c.id for c in world.adapter().list_charges(world.start)}
    world.alter_charge(charges[theirs_changed], amount=2500)
    world.alter_charge(charges[theirs_failed], failed=True)
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


@ON_EVERY_DATABASE
def test_a_refund_whose_answer_and_webhook_were_lost_is_repaired(world: World, admin_token: str) -> None:
    # Paid (the sandbox: with a token whose every answer is lost, the customer's retry completing it).
    order_id, payment_id = world.pay(price=1500, lose_answer=world.slow_token is not None, retry=True)
    world.settle()
    world.lose_next("refund")
    with world.api.client(admin_token) as admin:
        lost = admin.post(f"/v1/payments/{payment_id}/refunds", json={"reason": "answer lost"})
        refund_id = assert_problem(lost, 503, "provider_unavailable")["refund_id"]
    [made] = world.adapter().list_refunds(world.start)
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
        broken = "rc_" + new_id("x")[-14:].lower()
        session.add(PaymentProvider(id=broken, display_name="Broken sandbox",
                                    config={"kind": "sandbox", "state_path": str(tmp_path / "no" / "such" / "dir" / "x.db")}))
    unreachable = cli.run("reconcile", "--provider", broken, "--since", "1d", database_url=url(engine), settings=settings)
    assert unreachable.code == 2
    cli.assert_one_line_error(unreachable, broken)
    with session_factory(engine)() as session:
        assert session.scalars(sa.select(sa.func.count()).select_from(PaymentEvent)).one() == before


def test_a_payment_refunded_in_full_agrees(world: World, admin_token: str) -> None:
    """Refunded through Billfold, nothing lost: the provider's charge and refund agree with ours
    (Authorize.net voids a charge not yet settled: its refund is the void, its charge canceled)."""
    order_id, payment_id = world.pay(price=900)
    with world.api.client(admin_token) as admin:
        refunded = admin.post(f"/v1/payments/{payment_id}/refunds", json={"reason": "changed their mind"})
    assert refunded.status_code == 201, refunded.text
    assert row(world.engine, Order, order_id).status == "refunded"
    code, report = world.report()
    assert code == 0 and report["findings"] == [], report["findings"]
    assert report["counts"]["agreed"] == 2


def test_paypal_lists_only_money_that_moved_and_may_lag(api: Api, engine: Engine, tmp_path: Path, admin_token: str) -> None:
    """PayPal's Transaction Search lists captures and refunds only, and may lag (docs/operations.md):
    an order the buyer never approved is not listed, a payment waiting for the buyer is no
    disagreement, and a capture not listed yet is looked up by its order: not missing_theirs."""
    with paypal_world(api, engine, tmp_path, admin_token) as world:
        world.pay()
        world.fake.state.transactions.clear()  # Transaction Search has not caught up with that capture yet
        code, report = world.report()
        assert code == 0 and report["checked"] == {"charges": 0, "refunds": 0}, report["findings"]
        assert report["counts"]["agreed"] == 1

        buyer = customer(api, engine)
        made = order(api, buyer.token, (product(engine, 1000), 1))
        with api.client(buyer.token) as client:
            waiting = checkout(client, made["id"], provider_id=world.provider_id)
        assert waiting.status_code == 202, waiting.text
        order_id = waiting.json()["payment"]["provider_payment_id"]
        assert world.adapter().get_charge(order_id).status == ChargeStatus.REQUIRES_ACTION  # PayPal has it
        assert world.adapter().list_charges(world.start) == []  # but lists no money moved
        code, report = world.report()
        assert code == 0 and report["checked"] == {"charges": 0, "refunds": 0} and report["findings"] == []
        assert report["counts"]["agreed"] == 1
