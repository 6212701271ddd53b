"""Money that gets stuck, over real HTTP on each database with the sandbox provider: a token the
provider refuses fails the payment and frees the order; a payment whose outcome nobody heard (a
provider that did not answer, a timeout after charging, a server killed mid-checkout) is settled
by asking the provider, by the next checkout or by the worker's sweep, never by charging again;
and a keyed retry answers what its own payment became."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold import worker
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit import sweeps as registry
from billfold.kit.db import session_factory
from billfold.models import Order, Payment
from billfold.payments.details import PaymentDetails
from billfold.payments.engine import STALE_AFTER
from billfold.providers.base import ChargeStatus
from billfold.providers.sandbox import SandboxProvider
from tests.accounts import Api
from tests.cli import BILLFOLD
from tests.server import free_port, wait_for_health
from tests.test_checkout import HOME, checkout, customer, order, product, sandbox_charges
from tests.test_organizations import assert_problem, person

SETTLE = "orders.settle_payments"


@contextmanager
def later(by: timedelta = STALE_AFTER + timedelta(minutes=1)) -> Iterator[None]:
    """The whole process (the in-process server and the sweep) runs ``by`` ahead of real time."""
    with clock.using(clock.FrozenClock(clock.SystemClock().now() + by)):
        yield


def run_settle_sweep(engine: Engine, data_dir: Path) -> int:
    """The worker's sweep, until it has nothing left to do, as ``billfold worker`` runs it."""
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=data_dir)
    done = worker.catch_up(worker.make_context(settings, engine), sweeps=[registry.get(SETTLE)])
    return done[SETTLE]


def payments_of(engine: Engine, order_id: str) -> list[Payment]:
    with session_factory(engine)() as session:
        return list(session.scalars(sa.select(Payment).where(Payment.order_id == order_id).order_by(Payment.id)))


def test_a_token_the_provider_refuses_fails_the_payment_and_frees_the_order(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    item = product(engine)
    to_pay, to_cancel = order(api, ada.token, (item, 1)), order(api, ada.token, (item, 1))
    with api.client(ada.token) as client:
        refused = assert_problem(checkout(client, to_pay["id"], token="tok_sandbox_no_such_card"), 400, "unknown_token")
        assert refused["payment_id"] and refused["order_id"] == to_pay["id"]
        [failed] = client.get(f"/v1/orders/{to_pay['id']}").json()["payments"]
        assert failed["status"] == "failed", "a definite refusal is not left pending"
        paid = checkout(client, to_pay["id"], token="tok_sandbox_visa")
        assert paid.status_code == 200, "the order is paid with a new token, not the refused one again: " + paid.text
        assert [p["status"] for p in paid.json()["order"]["payments"]] == ["failed", "completed"]

        assert_problem(checkout(client, to_cancel["id"], token="tok_sandbox_no_such_card"), 400, "unknown_token")
        cancelled = client.post(f"/v1/orders/{to_cancel['id']}/cancel", json={"reason": "gave up"})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
    assert sandbox_charges(api, failed["id"]) == [], "nothing was charged"


def test_a_provider_that_never_answered_blocks_the_order_only_until_the_payment_is_stale(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    item = product(engine)
    to_pay, to_sweep = order(api, ada.token, (item, 1)), order(api, ada.token, (item, 1))
    with api.client(ada.token) as client:
        for made in (to_pay, to_sweep):
            assert_problem(checkout(client, made["id"], token="tok_sandbox_unavailable"), 503, "provider_unavailable")
        # Young, the outcome is unknown: the payment stays under way, sent again with the same key.
        assert_problem(checkout(client, to_pay["id"], token="tok_sandbox_visa"), 503, "provider_unavailable")
        assert_problem(client.post(f"/v1/orders/{to_pay['id']}/cancel", json={}), 409, "payment_in_progress")
        with later():
            # Stale: the provider is asked, has no charge under the key, and the new token pays.
            paid = checkout(client, to_pay["id"], token="tok_sandbox_visa")
            assert paid.status_code == 200, paid.text
            assert [p["status"] for p in paid.json()["order"]["payments"]] == ["failed", "completed"]
            # The sweep settles the other one without the customer: the order can be cancelled.
            assert run_settle_sweep(engine, api.data_dir) >= 1
            cancelled = client.post(f"/v1/orders/{to_sweep['id']}/cancel", json={})
            assert cancelled.status_code == 200, cancelled.text
    abandoned, completed = payments_of(engine, to_pay["id"])
    assert (abandoned.status, PaymentDetails.of(abandoned).failure) == ("failed", "payment_not_made")
    assert sandbox_charges(api, abandoned.id) == [] and len(sandbox_charges(api, completed.id)) == 1
    assert [p.status for p in payments_of(engine, to_sweep["id"])] == ["failed"]


def test_a_charge_whose_answer_was_lost_is_recorded_by_the_sweep_without_a_customer(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        assert_problem(checkout(client, made["id"], token="tok_sandbox_timeout_after_success"), 503, "provider_unavailable")
        with later():
            assert run_settle_sweep(engine, api.data_dir) >= 1
        after = client.get(f"/v1/orders/{made['id']}").json()
    assert after["status"] == "paid", "charged at the provider, so paid in our books"
    [payment] = after["payments"]
    assert payment["status"] == "completed"
    [charge] = sandbox_charges(api, payment["id"])
    assert charge.status == ChargeStatus.SUCCEEDED and payments_of(engine, made["id"])[0].provider_payment_id == charge.id


def test_a_new_checkout_asks_the_provider_about_the_payment_under_way_instead_of_charging(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        assert_problem(checkout(client, made["id"], token="tok_sandbox_timeout_after_success"), 503, "provider_unavailable")
        again = checkout(client, made["id"], token="tok_sandbox_mastercard")
        assert again.status_code == 200, again.text
    [payment] = again.json()["order"]["payments"]
    [charge] = sandbox_charges(api, payment["id"])
    assert payment["status"] == "completed"
    sandbox = SandboxProvider("sandbox", {"state_path": str(Path(api.data_dir) / "sandbox.sqlite3")})
    assert sum(1 for c in sandbox.list_charges() if c.description == charge.description) == 1, "one charge for the order"


def test_cancelling_a_payment_the_provider_completed_meanwhile_records_it_instead_of_blocking(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        waiting = checkout(client, made["id"], token="tok_sandbox_3ds_success")
        assert waiting.status_code == 202, waiting.text
        payment = waiting.json()["payment"]
        # The customer's authentication went through at the provider, but our books never heard.
        sandbox = SandboxProvider("sandbox", {"state_path": str(Path(api.data_dir) / "sandbox.sqlite3")})
        [charge] = sandbox_charges(api, payment["id"])
        assert sandbox.confirm(charge_id=charge.id, idempotency_key="confirmed-elsewhere").status == ChargeStatus.SUCCEEDED
        cancelled = client.post(f"/v1/payments/{payment['id']}/cancel")
        assert cancelled.status_code == 200, "the provider cannot cancel a completed charge: " + cancelled.text
        assert cancelled.json()["payment"]["status"] == "completed" and cancelled.json()["order"]["status"] == "paid"
    assert len(sandbox_charges(api, payment["id"])) == 1


@pytest.mark.parametrize("finisher", ["another checkout", "the sweep"])
def test_a_keyed_retry_answers_what_its_payment_became_meanwhile(api: Api, engine: Engine, finisher: str) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        first = checkout(client, made["id"], "lost-answer-1", token="tok_sandbox_timeout_after_success")
        assert_problem(first, 503, "provider_unavailable")
        with later() if finisher == "the sweep" else _nothing():
            if finisher == "another checkout":
                assert checkout(client, made["id"], token="tok_sandbox_timeout_after_success").status_code == 200
            else:
                assert run_settle_sweep(engine, api.data_dir) >= 1
            retried = checkout(client, made["id"], "lost-answer-1", token="tok_sandbox_timeout_after_success")
        assert retried.status_code == 200, "the key's own payment was completed meanwhile: " + retried.text
        body = retried.json()
        assert body["payment"]["status"] == "completed" and body["order"]["status"] == "paid"
        replayed = checkout(client, made["id"], "lost-answer-1", token="tok_sandbox_timeout_after_success")
        assert replayed.status_code == 200 and replayed.json() == body and replayed.headers["Idempotent-Replayed"] == "true"
    assert len(sandbox_charges(api, body["payment"]["id"])) == 1


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# --- a real server killed mid-checkout ---------------------------------------------------------------


class Server:
    """``billfold serve`` as an operator runs it (one process group, worker off), on the test's
    database; ``kill`` is SIGKILL, with no chance to finish anything."""

    def __init__(self, engine: Engine, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
        self.env.update(
            BILLFOLD_DATABASE_URL=engine.url.render_as_string(hide_password=False), BILLFOLD_DATA_DIR=str(data_dir),
            BILLFOLD_WORKER="off", BILLFOLD_PUBLIC_URL=self.url,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [BILLFOLD, "serve", "--port", str(self.port), "--no-access-log"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for_health(self.process, self.url, self.log)

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


@pytest.mark.slow
@pytest.mark.every_database
def test_checkouts_on_a_server_killed_mid_flight_are_settled_by_the_sweep_and_charged_once(
    engine: Engine, tmp_path: Path
) -> None:
    """Checkouts of 24 orders, 6 at a time, through a real ``billfold serve`` that is SIGKILLed
    twice while they run (three orders pay with a card whose answer is always lost). Nobody
    retries. Then the worker's sweep: every order charged at the provider is paid in our books,
    once; no payment is left under way, so every other order can be paid again."""
    data_dir = tmp_path / "data"
    server = Server(engine, data_dir, tmp_path / "serve.log")
    buyer = person(engine, "killed")
    item = product(engine)
    server.start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {buyer.token}"}, timeout=30) as client:
            assert client.post("/v1/me/addresses", json=HOME).status_code == 201
            order_ids = []
            for _ in range(24):
                made = client.post("/v1/orders", json={"items": [{"product_id": item, "quantity": 1}]})
                assert made.status_code == 201, made.text
                order_ids.append(made.json()["id"])
        lost = set(order_ids[::8])  # three orders whose provider answer never arrives
        queue = list(order_ids)
        answers: Counter[str] = Counter()
        lock = threading.Lock()

        def pay() -> None:
            # A connection per request, so a request sent while the server is down is refused (and
            # sent again), and "no answer" means the kill caught it in flight.
            limits = httpx.Limits(max_keepalive_connections=0)
            with httpx.Client(headers={"Authorization": f"Bearer {buyer.token}"}, timeout=30, limits=limits) as client:
                while True:
                    with lock:
                        if not queue:
                            return
                        order_id = queue.pop(0)
                    token = "tok_sandbox_timeout_after_success" if order_id in lost else "tok_sandbox_visa"
                    while True:
                        try:
                            answer = client.post(f"{server.url}/v1/orders/{order_id}/checkout", json={"token": token})
                            outcome = str(answer.status_code)
                        except httpx.ConnectError:  # the server is down: this request never reached it
                            if done.is_set():
                                return
                            time.sleep(0.05)
                            continue
                        except httpx.HTTPError:  # killed while this checkout ran: nobody retries
                            outcome = "no answer"
                        break
                    with lock:
                        answers[outcome] += 1

        done = threading.Event()
        threads = [threading.Thread(target=pay) for _ in range(6)]
        for thread in threads:
            thread.start()
        for kill in range(2):  # kill while checkouts are in flight, five answers after each start
            enough = sum(answers.values()) + 5
            while sum(answers.values()) < enough and any(t.is_alive() for t in threads):
                time.sleep(0.005)
            server.kill()
            if kill == 0:
                server.start()
        done.set()  # the checkouts not sent by now never will be
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.stop()

    sandbox = SandboxProvider("sandbox", {"state_path": str(data_dir / "sandbox.sqlite3")})
    charged: dict[str, list[str]] = {}
    for charge in sandbox.list_charges():
        if charge.metadata.get("order_id") in order_ids and charge.status == ChargeStatus.SUCCEEDED:
            charged.setdefault(charge.metadata["order_id"], []).append(charge.id)

    def books() -> dict[str, str]:
        with session_factory(engine)() as session:
            return dict(session.execute(sa.select(Order.id, Order.status).where(Order.id.in_(order_ids))).all())

    stuck = [o for o in charged if books()[o] != "paid"]
    assert stuck, f"charged at the provider but unpaid in our books before the sweep ({answers})"
    with later():
        assert run_settle_sweep(engine, data_dir) >= len(stuck)
    status = books()
    assert all(len(ids) == 1 for ids in charged.values()), "no order charged twice"
    assert {o for o, s in status.items() if s == "paid"} == set(charged), f"paid exactly where charged ({answers})"
    for order_id in order_ids:
        payments = payments_of(engine, order_id)
        assert "pending" not in {p.status for p in payments}, "nothing left under way"
        completed = [p for p in payments if p.status == "completed"]
        assert [p.provider_payment_id for p in completed] == charged.get(order_id, [])


def test_a_payment_left_waiting_is_asked_about_by_the_sweep_at_most_once_a_round(api: Api, engine: Engine) -> None:
    """3-D Secure: one customer authenticates at the bank and never comes back, another never acts.
    The sweep asks the provider about both: the first is completed; the second, still waiting, is
    stamped, so the next round leaves it alone until it has been quiet ``STALE_AFTER`` again."""
    ada = customer(api, engine)
    item = product(engine)
    came_back, gone = order(api, ada.token, (item, 1)), order(api, ada.token, (item, 1))
    with api.client(ada.token) as client:
        for made in (came_back, gone):
            assert checkout(client, made["id"], token="tok_sandbox_3ds_success").status_code == 202
    [authenticated] = payments_of(engine, came_back["id"])
    sandbox = SandboxProvider("sandbox", {"state_path": str(Path(api.data_dir) / "sandbox.sqlite3")})
    sandbox.confirm(charge_id=authenticated.provider_payment_id, idempotency_key="at-the-bank")
    with later():
        assert run_settle_sweep(engine, api.data_dir) >= 1
        [waiting] = payments_of(engine, gone["id"])
        stamped = waiting.updated_at
        run_settle_sweep(engine, api.data_dir)
        assert payments_of(engine, gone["id"])[0].updated_at == stamped, "not asked again this soon"
    assert payments_of(engine, came_back["id"])[0].status == "completed"
    assert waiting.status == "pending" and stamped > waiting.created_at
