"""Webhooks out, to the merchant's systems, over real HTTP: an admin registers an endpoint (its
secret shown once), an order paid through the sandbox checkout is POSTed to it by the
``webhooks.deliver`` sweep, signed the Standard Webhooks way; an endpoint that answers 500 is tried
again on the backoff schedule with every attempt recorded; 410 disables it; an entity's events
arrive in order; private, loopback and link-local targets are refused at registration and at
delivery; a delivery can be sent again; an endpoint that keeps failing is disabled and the admins
are emailed; and a change rolled back tells nothing.

The receiver is a small HTTP server on a free loopback port that records what it is sent and
answers the statuses a test scripts. The Billfold these tests speak to is their own, with loopback
targets allowed (``webhook_targets_allow``); the shared server, which allows none, shows the refusals."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from standardwebhooks import Webhook

from billfold import worker
from billfold.accounts.security import Security
from billfold.audit import audit
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit import sweeps as registry
from billfold.kit.db import session_factory, transaction
from billfold.models import Order, Payment, Subscription, WebhookDelivery, WebhookDeliveryAttempt
from billfold.notify import endpoints, outbox
from billfold.notify.delivery import SCHEDULE
from billfold.orders.states import ORDER
from billfold.providers import standard_webhooks
from tests import subscribing
from tests.accounts import Api
from tests.server import serving
from tests.test_checkout import checkout, customer, order, product
from tests.test_organizations import Person, assert_problem, person

ALLOW = ["loopback"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """What was POSTed to it, and the statuses it answers next (then ``default``)."""

    url: str
    received: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    default: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, request: Received) -> int:
        with self.lock:
            self.received.append(request)
            return self.script.pop(0) if self.script else self.default


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server: ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("content-length") or 0)
            request = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
            status = ours.answer(request)
            body = f"answer {status}".encode()
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ours = Receiver(f"http://127.0.0.1:{server.server_address[1]}/hooks")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ours
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Shop:
    api: Api
    engine: Engine
    admin: Person
    frozen: clock.FrozenClock
    endpoints: list[str] = field(default_factory=list)

    def sweep(self, name: str = "webhooks.deliver", **settings: object) -> int:
        """One round of a sweep, as ``billfold worker`` runs it, with this shop's files and key."""
        configured = Settings(
            database_url=self.engine.url.render_as_string(hide_password=False), data_dir=self.api.data_dir,
            **{"webhook_targets_allow": ALLOW, **settings},
        )
        return registry.get(name).run(worker.make_context(configured, self.engine))

    def register(self, url: str, types: list[str] | None = None) -> dict:
        with self.api.client(self.admin.token) as client:
            made = client.post("/v1/webhook-endpoints", json={"url": url, "event_types": types or ["order.paid"]})
        assert made.status_code == 201, made.text
        self.endpoints.append(made.json()["id"])
        return made.json()

    def endpoint(self, endpoint_id: str) -> dict:
        with self.api.client(self.admin.token) as client:
            answer = client.get(f"/v1/webhook-endpoints/{endpoint_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def deliveries(self, endpoint_id: str) -> list[dict]:
        with self.api.client(self.admin.token) as client:
            answer = client.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", params={"limit": 100})
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    def paid_order(self) -> str:
        buyer = customer(self.api, self.engine)
        made = order(self.api, buyer.token, (product(self.engine), 1))
        with self.api.client(buyer.token) as client:
            paid = checkout(client, made["id"])
        assert paid.status_code in (200, 201), paid.text
        return made["id"]


@pytest.fixture
def shop(engine: Engine, tmp_path: Path) -> Iterator[Shop]:
    """A Billfold of the test's own (loopback targets allowed) on the test's database, its clock
    frozen at now; the endpoints a test registers are switched off at its end, so no later test
    writes deliveries for them."""
    with clock.using(clock.FrozenClock(clock.SystemClock().now().replace(microsecond=0))) as frozen:
        assert isinstance(frozen, clock.FrozenClock)
        with serving(engine, tmp_path, webhook_targets_allow=ALLOW) as url:
            made = Shop(Api(url, tmp_path), engine, person(engine, "admin", user_type="admin"), frozen)
            try:
                yield made
            finally:
                with made.api.client(made.admin.token) as client:
                    for endpoint_id in made.endpoints:
                        client.patch(f"/v1/webhook-endpoints/{endpoint_id}", json={"is_active": False})


def test_a_paid_order_is_posted_signed_and_can_be_redelivered(shop: Shop, receiver: Receiver) -> None:
    made = shop.register(receiver.url, ["order.paid", "refund.succeeded"])
    secret = made["secret"]
    assert secret.startswith("whsec_") and made["is_active"] and made["event_types"] == ["order.paid", "refund.succeeded"]
    with shop.api.client(shop.admin.token) as client:
        assert "secret" not in client.get(f"/v1/webhook-endpoints/{made['id']}").json(), "shown once"
        listed = client.get("/v1/webhook-endpoints", params={"limit": 100}).json()
    assert all("secret" not in e for e in listed["data"]) and secret not in json.dumps(listed)

    order_id = shop.paid_order()
    assert receiver.received == [], "nothing is sent before the worker's round"
    assert shop.sweep() >= 1
    [got] = receiver.received
    assert got.path == "/hooks" and got.headers["content-type"] == "application/json"
    verified = Webhook(secret).verify(got.body, got.headers)  # the package's own check, against real time
    assert verified["type"] == "order.paid"
    data = got.payload["data"]
    assert data["object"] == "order" and data["id"] == order_id and data["status"] == "paid"
    assert data["total_cents"] > 0 and data["currency"] == "USD" and data["event"]["from"] == "pending"
    assert "metadata" not in data

    [delivery] = shop.deliveries(made["id"])
    assert delivery["status"] == "delivered" and delivery["event_id"] == got.headers["webhook-id"]
    assert delivery["entity_key"] == f"order:{order_id}" and delivery["last_status_code"] == 200
    [attempt] = delivery["attempts"]
    assert attempt["status_code"] == 200 and attempt["latency_ms"] >= 0 and attempt["response_excerpt"] == "answer 200"

    with shop.api.client(shop.admin.token) as client:
        again = client.post(f"/v1/webhook-deliveries/{delivery['id']}/redeliver")
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "pending"
        rotated = client.post(f"/v1/webhook-endpoints/{made['id']}/rotate-secret").json()
    assert rotated["secret"] != secret
    shop.sweep()
    first, second = receiver.received
    assert second.headers["webhook-id"] == first.headers["webhook-id"] and second.body == first.body
    Webhook(rotated["secret"]).verify(second.body, second.headers)
    [delivery] = shop.deliveries(made["id"])
    assert delivery["status"] == "delivered" and len(delivery["attempts"]) == 2


def test_a_paid_orders_invoice_is_told_with_its_number_and_status(shop: Shop, receiver: Receiver) -> None:
    """The invoice is written numbered and paid by one INSERT, after its moves were recorded: what
    the endpoint is told is the invoice as it was written, not a bare id."""
    shop.register(receiver.url, ["invoice.paid"])
    order_id = shop.paid_order()
    assert shop.sweep() >= 1
    [got] = receiver.received
    data = got.payload["data"]
    assert got.payload["type"] == "invoice.paid" and data["object"] == "invoice"
    assert data["order_id"] == order_id and data["status"] == "paid" and data["total_cents"] > 0
    assert data["invoice_number"].split("-")[-1].isdigit(), data
    with shop.api.client(shop.admin.token) as client:
        stored = client.get(f"/v1/invoices/{data['id']}").json()
    assert stored["invoice_number"] == data["invoice_number"] and stored["order_id"] == order_id


def test_a_failing_endpoint_is_tried_again_on_the_schedule_with_every_attempt_recorded(shop: Shop, receiver: Receiver) -> None:
    made = shop.register(receiver.url)
    receiver.script = [500, 502]
    shop.paid_order()
    assert shop.sweep() == 1
    assert shop.sweep() == 0, "not due again before its backoff"
    shop.frozen.advance(SCHEDULE[0])
    assert shop.sweep() == 1
    shop.frozen.advance(SCHEDULE[1] - timedelta(seconds=5))
    assert shop.sweep() == 0
    shop.frozen.advance(timedelta(seconds=5))
    assert shop.sweep() == 1
    [delivery] = shop.deliveries(made["id"])
    assert delivery["status"] == "delivered" and delivery["attempts_made"] == 3
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 502, 200]
    assert [a["response_excerpt"] for a in delivery["attempts"]] == ["answer 500", "answer 502", "answer 200"]
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1, "one message, tried three times"
    assert shop.endpoint(made["id"])["consecutive_failures"] == 0, "a success ends the streak"


def test_410_gone_disables_the_endpoint_and_cancels_what_was_pending(shop: Shop, receiver: Receiver) -> None:
    made = shop.register(receiver.url)
    receiver.script = [410]
    shop.paid_order()
    shop.paid_order()
    shop.sweep()
    endpoint = shop.endpoint(made["id"])
    assert not endpoint["is_active"] and "410" in endpoint["disabled_reason"]
    assert sorted(d["status"] for d in shop.deliveries(made["id"])) == ["cancelled", "failed"]
    shop.paid_order()
    assert len(shop.deliveries(made["id"])) == 2, "a disabled endpoint is told nothing new"
    with shop.api.client(shop.admin.token) as client:
        cancelled = next(d for d in shop.deliveries(made["id"]) if d["status"] == "cancelled")
        assert_problem(client.post(f"/v1/webhook-deliveries/{cancelled['id']}/redeliver"), 409, "webhook_endpoint_disabled")


@pytest.mark.every_database  # the claim: FOR UPDATE SKIP LOCKED with a NOT EXISTS on the same table
def test_the_events_of_one_entity_are_delivered_in_order(shop: Shop, receiver: Receiver) -> None:
    made = shop.register(receiver.url, ["*"])
    receiver.script = [500]
    with transaction(session_factory(shop.engine)) as session:
        audit(session, "subscription", "sub_inorder_" + made["id"], "subscription.past_due", **{"from": "active", "to": "past_due"})
        audit(session, "subscription", "sub_inorder_" + made["id"], "subscription.cancelled", **{"from": "past_due", "to": "cancelled"})
        audit(session, "invoice", "inv_other_" + made["id"], "invoice.paid", **{"from": "open", "to": "paid"})
    assert shop.sweep() == 2, "the subscription's second event waits for its first"
    assert [r.payload["type"] for r in receiver.received] == ["subscription.past_due", "invoice.paid"]
    shop.frozen.advance(SCHEDULE[0])
    assert shop.sweep() == 1
    assert shop.sweep() == 1, "the first delivered, the second goes"
    assert [r.payload["type"] for r in receiver.received] == [
        "subscription.past_due", "invoice.paid", "subscription.past_due", "subscription.cancelled"
    ]
    assert {d["status"] for d in shop.deliveries(made["id"])} == {"delivered"}


def test_private_loopback_and_link_local_targets_are_refused(api: Api, shop: Shop, receiver: Receiver) -> None:
    # The shared server allows no such targets.
    with api.client(shop.admin.token) as client:
        for url, words in [
            ("http://10.0.0.1/hooks", "private"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://[::1]:8080/hooks", "loopback"),
            ("http://localhost/hooks", "resolves to 127.0.0.1"),
            (receiver.url, "loopback"),
        ]:
            problem = assert_problem(client.post("/v1/webhook-endpoints", json={"url": url, "event_types": ["*"]}),
                                     422, "webhook_target_refused", "url")
            assert words in problem["detail"], problem
        for url in ("ftp://example.com/x", "https://user:pw@example.com/x"):
            assert client.post("/v1/webhook-endpoints", json={"url": url, "event_types": ["*"]}).status_code == 422
        assert_problem(client.post("/v1/webhook-endpoints", json={"url": "https://example.com/x", "event_types": ["order.shipped"]}),
                       422, "invalid_input")
        assert_problem(client.post("/v1/webhook-endpoints", json={"url": "https://example.com/x", "event_types": ["*"], "extra": 1}),
                       422, "invalid_input")
    # Registered where loopback was allowed, then the setting taken away: the delivery is refused too.
    made = shop.register(receiver.url)
    shop.paid_order()
    assert shop.sweep(webhook_targets_allow=[]) == 1
    assert receiver.received == []
    [delivery] = shop.deliveries(made["id"])
    assert delivery["status"] == "pending" and "loopback" in delivery["attempts"][0]["error"]
    assert delivery["attempts"][0]["status_code"] is None
    with shop.api.client(shop.admin.token) as client:  # a changed URL is checked as a new one is
        assert_problem(client.patch(f"/v1/webhook-endpoints/{made['id']}", json={"url": "http://10.1.2.3/x"}),
                       422, "webhook_target_refused", "url")
        assert shop.endpoint(made["id"])["url"] == receiver.url
        assert client.delete(f"/v1/webhook-endpoints/{made['id']}").status_code == 204
        assert_problem(client.get(f"/v1/webhook-endpoints/{made['id']}"), 404, "not_found")
    shop.endpoints.remove(made["id"])


def test_an_endpoint_that_keeps_failing_is_disabled_and_the_admins_are_emailed(shop: Shop, receiver: Receiver) -> None:
    made = shop.register(receiver.url)
    receiver.default = 503
    shop.paid_order()
    for wait in SCHEDULE:
        assert shop.sweep() == 1
        assert shop.endpoint(made["id"])["is_active"]
        shop.frozen.advance(wait)
    assert shop.sweep() == 1
    assert len(receiver.received) == len(SCHEDULE) + 1
    endpoint = shop.endpoint(made["id"])
    assert not endpoint["is_active"] and "every attempt failed" in endpoint["disabled_reason"]
    assert endpoint["consecutive_failures"] == len(SCHEDULE) + 1
    [delivery] = shop.deliveries(made["id"])
    assert delivery["status"] == "failed" and len(delivery["attempts"]) == len(SCHEDULE) + 1
    while shop.sweep("mail.deliver"):
        pass
    [mail] = shop.api.mails_to(shop.admin.email)
    assert mail["Subject"] == "A webhook endpoint was disabled"
    assert made["id"] in mail.get_content() and receiver.url in mail.get_content()
    with shop.api.client(shop.admin.token) as client:
        back = client.patch(f"/v1/webhook-endpoints/{made['id']}", json={"is_active": True}).json()
    assert back["is_active"] and back["disabled_reason"] is None and back["consecutive_failures"] == 0


def test_a_change_rolled_back_tells_nothing(shop: Shop, receiver: Receiver) -> None:
    made = shop.register(receiver.url)
    buyer = customer(shop.api, shop.engine)
    pending = order(shop.api, buyer.token, (product(shop.engine), 1))
    with pytest.raises(RuntimeError), transaction(session_factory(shop.engine)) as session:
        ORDER.move(session, session.get_one(Order, pending["id"]), "paid", by="test")
        session.flush()
        assert session.scalars(sa.select(WebhookDelivery).where(WebhookDelivery.endpoint_id == made["id"])).all()
        raise RuntimeError("the change fails after its webhook was queued")
    assert shop.sweep() == 0 or receiver.received == []
    assert receiver.received == [] and shop.deliveries(made["id"]) == []


@pytest.fixture
def subscriptions(engine: Engine, tmp_path: Path, frozen_clock: clock.FrozenClock) -> Iterator[subscribing.Shop]:
    """The subscription tests' shop (tests/subscribing.py), its worker allowed loopback targets."""
    with serving(engine, tmp_path, sign_in_attempts_per_address=1000, session_days=3650) as url:
        settings = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path,
                            webhook_targets_allow=ALLOW)
        yield subscribing.Shop(Api(url, tmp_path), engine, registry.Context(session_factory(engine), settings, Security.from_settings(settings)))
    with transaction(session_factory(engine)) as session:  # nothing left due for the next test's sweeps
        session.execute(sa.update(Payment).where(Payment.subscription_id.is_not(None), Payment.status == "pending").values(status="failed"))
        session.execute(sa.update(Subscription).where(Subscription.status != "cancelled").values(status="cancelled"))


def test_a_subscription_created_and_renewed_is_told(
    subscriptions: subscribing.Shop, receiver: Receiver, frozen_clock: clock.FrozenClock
) -> None:
    shop = subscriptions
    with transaction(shop.context.sessions) as session:
        endpoint, secret = endpoints.create_endpoint(
            session, shop.context.security, url=receiver.url,
            types=["subscription.created", "subscription.renewed", "invoice.paid"],
        )
    try:
        sub = shop.subscribe(shop.customer("ada"), shop.product(1000))
        frozen_clock.advance(timedelta(days=29))  # the first month has ended
        assert shop.sweep("renew") == 1
        deliver = registry.get("webhooks.deliver").run
        while deliver(shop.context):
            pass
    finally:
        with transaction(shop.context.sessions) as session:
            endpoints.update_endpoint(session, shop.context.security, endpoint.id, {"is_active": False})
    for request in receiver.received:
        standard_webhooks.verify(secret, request.body, request.headers)
    told = [r.payload for r in receiver.received]
    assert Counter(p["type"] for p in told) == {"subscription.created": 1, "invoice.paid": 2, "subscription.renewed": 1}
    created = next(p["data"] for p in told if p["type"] == "subscription.created")
    renewed = next(p["data"] for p in told if p["type"] == "subscription.renewed")
    assert created["id"] == renewed["id"] == sub["id"] and renewed["status"] == "active"
    assert renewed["event"]["invoice_id"] in {p["data"]["id"] for p in told if p["type"] == "invoice.paid"}


def test_which_audit_events_are_told() -> None:
    told = {
        ("order", "order.paid", None): "order.paid",
        ("payment", "payment.failed", "pending"): "payment.failed",
        ("refund", "refund.succeeded", "pending"): "refund.succeeded",
        ("refund", "refund.failed", "pending"): "refund.failed",
        ("refund", "refund.failed", "succeeded"): "refund.failed",
        ("subscription", "subscription.trialing", None): "subscription.created",
        ("subscription", "subscription.renewed", None): "subscription.renewed",
        ("subscription", "subscription.past_due", "active"): "subscription.past_due",
        ("subscription", "subscription.cancelled", "active"): "subscription.cancelled",
        ("invoice", "invoice.paid", "open"): "invoice.paid",
        ("invoice", "invoice.credited", None): "invoice.credited",
        ("invoice", "invoice.credit_voided", None): "invoice.credit_voided",
        ("membership", "membership.active", None): "membership.started",
        ("membership", "membership.active", "pending"): "membership.started",
        ("membership", "membership.expired", "active"): "membership.expired",
        ("membership", "membership.active", "expired"): None,  # renewed by its subscription: told as subscription.renewed
        ("subscription", "subscription.active", "trialing"): None,
        ("payment", "payment.completed", "pending"): None,
        ("user", "signed_in", None): None,
    }
    for (entity, event, was), expected in told.items():
        assert outbox.outgoing_type(entity, event, {"from": was}) == expected, (entity, event, was)
    assert set(v for v in told.values() if v) == set(outbox.EVENT_TYPES)


@pytest.mark.every_database  # the claim's row locks (SKIP LOCKED) keep two workers off each other's deliveries
def test_two_workers_deliver_each_event_once(shop: Shop, receiver: Receiver) -> None:
    made = shop.register(receiver.url, ["*"])
    with transaction(session_factory(shop.engine)) as session:
        for n in range(12):
            audit(session, "invoice", f"inv_race_{n}_{made['id']}", "invoice.paid", **{"from": "open", "to": "paid"})
    settings = Settings(database_url=shop.engine.url.render_as_string(hide_password=False), data_dir=shop.api.data_dir,
                        webhook_targets_allow=ALLOW)
    contexts = [worker.make_context(settings, shop.engine) for _ in range(2)]
    from billfold.notify.delivery import deliver_webhooks

    done: list[int] = []
    threads = [threading.Thread(target=lambda c=c: done.append(deliver_webhooks(c, limit=4))) for c in contexts * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    while shop.sweep():
        pass
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(ids) == len(set(ids)) == 12, "each event sent once"
    assert {d["status"] for d in shop.deliveries(made["id"])} == {"delivered"}


def test_ended_deliveries_are_purged_after_thirty_days_and_pending_ones_never(shop: Shop, receiver: Receiver) -> None:
    made = shop.register(receiver.url)
    shop.paid_order()
    assert shop.sweep() == 1
    receiver.default = 500
    shop.paid_order()
    assert shop.sweep() == 1
    delivered, pending = sorted(shop.deliveries(made["id"]), key=lambda d: d["status"])
    assert (delivered["status"], pending["status"]) == ("delivered", "pending")

    def kept() -> tuple[list[str], int]:  # read from the tables: the admin's session ends long before 30 days
        with shop.engine.connect() as connection:
            ids = connection.scalars(sa.select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == made["id"]))
            attempts = connection.scalar(sa.select(sa.func.count()).select_from(WebhookDeliveryAttempt)
                                         .where(WebhookDeliveryAttempt.delivery_id == delivered["id"]))
            return sorted(ids), attempts

    shop.frozen.advance(timedelta(days=29))
    shop.sweep("webhooks.purge")
    assert kept() == (sorted([delivered["id"], pending["id"]]), 1), "kept for 30 days after it ended"
    shop.frozen.advance(timedelta(days=2))
    shop.sweep("webhooks.purge")
    assert kept() == ([pending["id"]], 0), "a pending delivery is never purged; the attempts go with their delivery"
