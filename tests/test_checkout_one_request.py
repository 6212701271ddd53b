"""`POST /v1/checkouts`: an order placed and paid in one request, over real HTTP with the sandbox
provider. It answers as an order's checkout does (200, 202 then confirm, 402), is idempotent
(one order and one charge however often and however concurrently a key is sent), leaves nothing
when it is refused before the provider, and a lost provider answer is settled by the sweep and the
keyed retry exactly as for an order's checkout."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts.api_keys import create_api_key
from billfold.kit.db import session_factory, transaction
from billfold.models import IdempotencyKey, Order, Payment
from tests.accounts import Api
from tests.test_checkout import customer, events, product, sandbox_charges
from tests.test_checkout_recovery import later, run_settle_sweep
from tests.test_organizations import assert_problem, person


def buy(client: httpx.Client, item: str, key: str | None = None, quantity: int = 1, **extra: object) -> httpx.Response:
    body = {"items": [{"product_id": item, "quantity": quantity}], "token": "tok_sandbox_visa", **extra}
    return client.post("/v1/checkouts", json=body, headers={"Idempotency-Key": key} if key else {})


def books(engine: Engine, user_id: str) -> tuple[list[str], list[str]]:
    """The user's orders' statuses and their payments' statuses, oldest first."""
    with session_factory(engine)() as session:
        orders = session.scalars(sa.select(Order.status).where(Order.user_id == user_id).order_by(Order.id)).all()
        payments = session.scalars(sa.select(Payment.status).where(Payment.user_id == user_id).order_by(Payment.id)).all()
    return list(orders), list(payments)


def test_an_order_is_placed_and_paid_in_one_request_by_the_customer_or_a_write_api_key(api: Api, engine: Engine) -> None:
    ada, eve = customer(api, engine), person(engine, "eve")
    item = product(engine, 1999)
    with api.client(ada.token) as client:
        paid = buy(client, item, quantity=2)
        assert paid.status_code == 200, paid.text
        body = paid.json()
        assert body["order"]["status"] == "paid" and body["order"]["completed_at"]
        assert (body["order"]["subtotal_cents"], body["order"]["tax_cents"], body["order"]["total_cents"]) == (3998, 800, 4798)
        assert body["payment"]["status"] == "completed" and body["payment"]["amount_cents"] == 4798
        assert [p["id"] for p in body["order"]["payments"]] == [body["payment"]["id"]]
        assert client.get(f"/v1/orders/{body['order']['id']}").json()["status"] == "paid"
    assert len(sandbox_charges(api, body["payment"]["id"])) == 1
    assert events(engine, body["order"]["id"]) == ["order.pending", "order.paid"]
    assert events(engine, body["payment"]["id"]) == ["payment.pending", "payment.completed"]

    with transaction(session_factory(engine)) as session:
        _, writer = create_api_key(session, name="shop backend", scopes=["read", "write"], created_by=None)
        _, reader = create_api_key(session, name="reporting", scopes=["read"], created_by=None)
    with api.client(writer) as shop:
        for_ada = buy(shop, item, user_id=ada.id)
        assert for_ada.status_code == 200, for_ada.text
        assert for_ada.json()["order"]["user_id"] == ada.id
        nobody = buy(shop, item, user_id="usr_01JD0000000000000000000000")
        assert nobody.status_code == 404 and "no user usr_01JD0000000000000000000000" in nobody.json()["detail"]
    with api.client(reader) as reporting:
        assert_problem(buy(reporting, item, user_id=ada.id), 403, "forbidden")
    with api.client(eve.token) as client:
        assert_problem(buy(client, item, user_id=ada.id), 403, "forbidden")
    assert books(engine, ada.id) == (["paid", "paid"], ["completed", "completed"])


def test_a_key_sent_twice_makes_one_order_and_one_charge_and_refuses_another_body(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    item = product(engine)
    with api.client(ada.token) as client:
        first, again = buy(client, item, "buy-once-1"), buy(client, item, "buy-once-1")
        assert first.status_code == again.status_code == 200, first.text
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        assert_problem(buy(client, item, "buy-once-1", quantity=2), 422, "idempotency_error")
        assert_problem(buy(client, item, "buy-once-1", token="tok_sandbox_mastercard"), 422, "idempotency_error")
    assert books(engine, ada.id) == (["paid"], ["completed"])
    assert len(sandbox_charges(api, first.json()["payment"]["id"])) == 1


@pytest.mark.every_database
def test_twenty_identical_requests_at_once_make_one_order_and_one_charge(api: Api, engine: Engine, backend: str) -> None:
    """At once on PostgreSQL and MariaDB; on SQLite, which has one writer, five one after another."""
    ada = customer(api, engine)
    item = product(engine)
    at_once = backend != "sqlite"
    start = threading.Barrier(20 if at_once else 1)
    answers: list[httpx.Response] = []

    def send() -> None:
        with api.client(ada.token) as client:
            start.wait()
            answers.append(buy(client, item, "twenty-at-once"))

    threads = [threading.Thread(target=send) for _ in range(20 if at_once else 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(0 if at_once else 5):
        send()
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {200, 409} and statuses[200] >= 1, statuses
    assert all(a.json()["code"] == "idempotency_key_in_use" for a in answers if a.status_code == 409)
    assert len({a.json()["order"]["id"] for a in answers if a.status_code == 200}) == 1, "every 200 is the same order"
    assert books(engine, ada.id) == (["paid"], ["completed"])
    payment = next(a for a in answers if a.status_code == 200).json()["payment"]
    assert len(sandbox_charges(api, payment["id"])) == 1, "one charge at the provider"


def test_a_declined_card_leaves_the_order_pending_with_a_failed_payment_to_pay_again(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    with api.client(ada.token) as client:
        declined = assert_problem(buy(client, product(engine), "declined-1", token="tok_sandbox_insufficient_funds"), 402, "payment_declined")
        assert declined["decline_code"] == "insufficient_funds" and declined["order_id"] and declined["payment_id"]
        assert books(engine, ada.id) == (["pending"], ["failed"])
        paid = client.post(f"/v1/orders/{declined['order_id']}/checkout", json={"token": "tok_sandbox_mastercard"})
        assert paid.status_code == 200, paid.text
    assert books(engine, ada.id) == (["paid"], ["failed", "completed"])


def test_three_d_secure_answers_202_then_the_payment_is_confirmed(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    with api.client(ada.token) as client:
        waiting = buy(client, product(engine), token="tok_sandbox_3ds_success")
        assert waiting.status_code == 202, waiting.text
        payment, order = waiting.json()["payment"], waiting.json()["order"]
        assert payment["status"] == "pending" and payment["next_action"] and order["status"] == "pending"
        confirmed = client.post(f"/v1/payments/{payment['id']}/confirm")
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["order"]["id"] == order["id"] and confirmed.json()["order"]["status"] == "paid"
    assert events(engine, payment["id"]) == ["payment.pending", "payment.waiting", "payment.completed"]


def test_a_refusal_before_the_provider_leaves_no_order_and_no_payment(api: Api, engine: Engine) -> None:
    ada, homeless = customer(api, engine), person(engine, "homeless")
    item, eur = product(engine), product(engine, currency="EUR")
    with api.client(ada.token) as client:
        assert_problem(buy(client, "prod_nothing"), 404, "not_found", "items.0.product_id")
        assert_problem(client.post("/v1/checkouts", json={"items": [{"product_id": item}, {"product_id": eur}], "token": "tok_sandbox_visa"}), 422, "currency_mismatch")
        assert_problem(buy(client, item, payment_method_id="pm_nothing"), 422, "invalid_input", "token")
        assert_problem(buy(client, item, token=None), 422, "invalid_input", "payment_method_id")
        assert_problem(buy(client, item, provider_id="nowhere"), 404, "not_found", "provider_id")
        card = client.post("/v1/checkouts", json={"items": [{"product_id": item}], "card_number": "4242424242424242"})
        assert card.status_code == 422 and "4242424242424242" not in card.text
        keyed = assert_problem(buy(client, "prod_nothing", "refused-1"), 404, "not_found")
        assert buy(client, "prod_nothing", "refused-1").json() == keyed, "a refusal is the key's final answer"
    with api.client(homeless.token) as client:
        assert_problem(buy(client, item), 422, "invalid_input", "billing_address_id")
    assert books(engine, ada.id) == ([], []) and books(engine, homeless.id) == ([], [])


def test_a_lost_provider_answer_is_settled_by_the_sweep_and_the_keyed_retry_answers_it(api: Api, engine: Engine) -> None:
    """What a kill between the provider's answer and our record leaves: the order and its payment
    recorded, the outcome not. The sweep records it; the retry answers it, with no second charge."""
    ada = customer(api, engine)
    item = product(engine)
    with api.client(ada.token) as client:
        lost = buy(client, item, "lost-answer-1", token="tok_sandbox_timeout_after_success")
        assert_problem(lost, 503, "provider_unavailable")
        assert books(engine, ada.id) == (["pending"], ["pending"]), "recorded before the provider was called"
        with later():
            assert run_settle_sweep(engine, api.data_dir) >= 1
        assert books(engine, ada.id) == (["paid"], ["completed"])
        retried = buy(client, item, "lost-answer-1", token="tok_sandbox_timeout_after_success")
        assert retried.status_code == 200, retried.text
        assert retried.json()["order"]["status"] == "paid"
    assert books(engine, ada.id) == (["paid"], ["completed"]), "the retry made no second order"
    assert len(sandbox_charges(api, retried.json()["payment"]["id"])) == 1
    with session_factory(engine)() as session:
        assert session.scalar(sa.select(IdempotencyKey.recovery_point).where(IdempotencyKey.idem_key == "lost-answer-1", IdempotencyKey.scope == ada.id)) == "finished"
