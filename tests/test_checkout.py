"""The money path over real HTTP on each database, with the sandbox provider: an order priced from
the catalog and taxed by country, checkout (success, decline, 3-D Secure, a provider that times out
after charging), refunds in part and in full, cancellation, Idempotency-Key, and many checkouts of
one order at once ending in one provider charge."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit.db import session_factory, transaction
from billfold.models import Order, Payment, PaymentEvent
from billfold.providers.sandbox import SandboxProvider
from tests import factories as make
from tests.accounts import Api
from tests.test_organizations import Person, add_member, assert_problem, create_organization, person

HOME = {"address_type": "both", "name": "Ada Lovelace", "line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"}


def product(engine: Engine, price: int = 1999, currency: str = "USD", **values: object) -> str:
    with transaction(session_factory(engine)) as session:
        make.provider(session)
        return make.product(
            session, product_type="digital", is_recurring=False, billing_interval=None, price_cents=price, currency=currency, **values
        ).id


def customer(api: Api, engine: Engine, label: str = "buyer") -> Person:
    someone = person(engine, label)
    with api.client(someone.token) as client:
        assert client.post("/v1/me/addresses", json=HOME).status_code == 201
    return someone


def order(api: Api, token: str, *items: tuple[str, int], **extra: object) -> dict:
    with api.client(token) as client:
        made = client.post("/v1/orders", json={"items": [{"product_id": p, "quantity": q} for p, q in items], **extra})
    assert made.status_code == 201, made.text
    return made.json()


def checkout(client: httpx.Client, order_id: str, key: str | None = None, **body: object) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(f"/v1/orders/{order_id}/checkout", json=body or {"token": "tok_sandbox_visa"}, headers=headers)


def sandbox_charges(api: Api, payment_id: str) -> list:
    sandbox = SandboxProvider("sandbox", {"state_path": str(Path(api.data_dir) / "sandbox.sqlite3")})
    return [c for c in sandbox.list_charges() if (c.metadata or {}).get("payment_id") == payment_id]


def events(engine: Engine, entity_id: str) -> list[str]:
    with session_factory(engine)() as session:
        return list(session.scalars(sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_id == entity_id).order_by(PaymentEvent.id)))


def test_an_order_is_priced_taxed_paid_and_refunded_in_two_parts(api: Api, engine: Engine, admin_token: str) -> None:
    ada = customer(api, engine)
    book, pen = product(engine, 1999), product(engine, 350)
    made = order(api, ada.token, (book, 2), (pen, 3))
    assert [(i["quantity"], i["unit_price_cents"], i["total_cents"]) for i in made["items"]] == [(2, 1999, 3998), (3, 350, 1050)]
    assert (made["subtotal_cents"], made["tax_cents"], made["total_cents"]) == (5048, 1010, 6058), "20 % VAT for GB, rounded half up"
    assert made["status"] == "pending" and made["order_number"].startswith("ORD-")
    assert made["billing_address"]["postal_code"] == "SW1Y 4JH", "the address is kept as it was"
    with api.client(ada.token) as client:
        paid = checkout(client, made["id"])
        assert paid.status_code == 200, paid.text
        body = paid.json()
        assert body["order"]["status"] == "paid" and body["order"]["completed_at"]
        payment = body["payment"]
        assert payment["status"] == "completed" and payment["amount_cents"] == 6058 and payment["provider_id"] == "sandbox"
        assert_problem(checkout(client, made["id"]), 409, "order_not_payable")
        assert_problem(client.post(f"/v1/payments/{payment['id']}/refunds", json={}), 403, "forbidden")
    assert len(sandbox_charges(api, payment["id"])) == 1
    with api.client(admin_token) as admin:
        part = admin.post(f"/v1/payments/{payment['id']}/refunds", json={"amount_cents": 1000, "reason": "damaged pen"})
        assert part.status_code == 201, part.text
        assert part.json()["status"] == "succeeded"
        after = admin.get(f"/v1/orders/{made['id']}").json()
        assert after["status"] == "paid" and after["refunded_cents"] == 1000
        too_much = admin.post(f"/v1/payments/{payment['id']}/refunds", json={"amount_cents": 5059})
        assert_problem(too_much, 422, "invalid_amount", "amount_cents")
        rest = admin.post(f"/v1/payments/{payment['id']}/refunds", json={})
        assert rest.status_code == 201 and rest.json()["amount_cents"] == 5058
        done = admin.get(f"/v1/orders/{made['id']}").json()
        assert done["status"] == "refunded" and done["refunded_cents"] == 6058
        assert done["payments"][0]["status"] == "refunded"
        assert_problem(admin.post(f"/v1/payments/{payment['id']}/refunds", json={}), 422, "invalid_amount")
    assert events(engine, made["id"]) == ["order.pending", "order.paid", "order.refunded"]
    assert events(engine, payment["id"]) == ["payment.pending", "payment.completed", "payment.refunded"]


def test_a_decline_leaves_the_order_payable(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        declined = checkout(client, made["id"], token="tok_sandbox_insufficient_funds")
        problem = assert_problem(declined, 402, "payment_declined")
        assert problem["decline_code"] == "insufficient_funds"
        assert client.get(f"/v1/orders/{made['id']}").json()["status"] == "pending"
        paid = checkout(client, made["id"], token="tok_sandbox_mastercard")
        assert paid.status_code == 200, paid.text
    statuses = [p["status"] for p in paid.json()["order"]["payments"]]
    assert statuses == ["failed", "completed"]


def test_three_d_secure_waits_for_the_customer_then_confirms(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        waiting = checkout(client, made["id"], token="tok_sandbox_3ds_success")
        assert waiting.status_code == 202, waiting.text
        payment = waiting.json()["payment"]
        assert payment["status"] == "pending" and payment["next_action"]
        assert_problem(checkout(client, made["id"]), 409, "payment_requires_action")
        confirmed = client.post(f"/v1/payments/{payment['id']}/confirm")
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["order"]["status"] == "paid"
        assert_problem(client.post(f"/v1/payments/{payment['id']}/confirm"), 409, "payment_not_waiting")
    # Waiting is a state of the payment machine (stored as pending: see docs/payments.md).
    assert events(engine, payment["id"]) == ["payment.pending", "payment.waiting", "payment.completed"]


def test_a_provider_timeout_after_charging_is_finished_by_the_retry_without_a_second_charge(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        assert_problem(checkout(client, made["id"], token="tok_sandbox_timeout_after_success"), 503, "provider_unavailable")
        [payment] = client.get(f"/v1/orders/{made['id']}").json()["payments"]
        assert payment["status"] == "pending"
        retried = checkout(client, made["id"], token="tok_sandbox_timeout_after_success")
        assert retried.status_code == 200, retried.text
        assert retried.json()["payment"]["id"] == payment["id"]
    assert len(sandbox_charges(api, payment["id"])) == 1


def test_an_idempotency_key_replays_the_answer_and_refuses_other_parameters(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    with api.client(ada.token) as client:
        first = checkout(client, made["id"], "pay-once-1")
        again = checkout(client, made["id"], "pay-once-1")
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        other = checkout(client, made["id"], "pay-once-1", token="tok_sandbox_mastercard")
        assert_problem(other, 422, "idempotency_error")


def test_a_cancelled_order_cannot_be_paid_and_a_paid_one_cannot_be_cancelled(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    with api.client(ada.token) as client:
        first, second = order(api, ada.token, (product(engine), 1)), order(api, ada.token, (product(engine), 1))
        assert client.post(f"/v1/orders/{first['id']}/cancel", json={"reason": "changed my mind"}).json()["status"] == "cancelled"
        assert_problem(checkout(client, first["id"]), 409, "order_not_payable")
        assert checkout(client, second["id"]).status_code == 200
        assert_problem(client.post(f"/v1/orders/{second['id']}/cancel", json={}), 409, "order_not_payable")


def test_who_may_buy_for_an_organization_and_see_its_orders(api: Api, engine: Engine) -> None:
    owner, billing, member, outsider = (person(engine, n) for n in ("owner", "billing", "member", "outsider"))
    organization = create_organization(api, owner)
    add_member(api, owner, organization, billing, "billing")
    add_member(api, owner, organization, member, "member")
    with api.client(owner.token) as client:
        assert client.post(f"/v1/organizations/{organization}/addresses", json=HOME).status_code == 201
    item = product(engine)
    body = {"items": [{"product_id": item}], "organization_id": organization}
    with api.client(member.token) as client:
        assert_problem(client.post("/v1/orders", json=body), 403, "role_required")
    with api.client(outsider.token) as client:
        assert client.post("/v1/orders", json=body).status_code == 404
    made = order(api, billing.token, (item, 1), organization_id=organization)
    with api.client(member.token) as client:
        assert client.get(f"/v1/orders/{made['id']}").status_code == 200, "members see what the organization bought"
        assert_problem(checkout(client, made["id"]), 403, "role_required")
    with api.client(outsider.token) as client:
        assert client.get(f"/v1/orders/{made['id']}").status_code == 404
        assert made["id"] not in client.get("/v1/orders").text


def test_bad_orders_name_the_field_and_change_nothing(api: Api, engine: Engine) -> None:
    ada = customer(api, engine)
    usd, eur = product(engine), product(engine, currency="EUR")
    inactive = product(engine, is_active=False)
    with session_factory(engine)() as session:
        before = session.scalar(sa.select(sa.func.count()).select_from(Order))
    with api.client(ada.token) as client:
        mixed = client.post("/v1/orders", json={"items": [{"product_id": usd}, {"product_id": eur}]})
        assert_problem(mixed, 422, "currency_mismatch", "items")
        assert client.post("/v1/orders", json={"items": [{"product_id": inactive}]}).status_code == 409
        assert_problem(client.post("/v1/orders", json={"items": [{"product_id": "prod_nothing"}]}), 404, "not_found", "items.0.product_id")
        assert_problem(client.post("/v1/orders", json={"items": [{"product_id": usd, "quantity": 0}]}), 422, "invalid_input", "items.0.quantity")
        card = client.post(f"/v1/orders/{'ord_x'}/checkout", json={"card_number": "4242424242424242", "cvc": "123"})
        assert card.status_code == 422 and "4242424242424242" not in card.text
    with session_factory(engine)() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Order)) == before


@pytest.mark.parametrize("with_key", [True, False], ids=["one key", "no key"])
def test_fifty_checkouts_of_one_order_at_once_charge_once(api: Api, engine: Engine, backend: str, with_key: bool) -> None:
    """At once on PostgreSQL and MariaDB; one after another on SQLite, which has one writer."""
    ada = customer(api, engine)
    made = order(api, ada.token, (product(engine), 1))
    answers: list[int] = []
    at_once = backend != "sqlite"
    start = threading.Barrier(50 if at_once else 1)

    def pay() -> None:
        with api.client(ada.token) as client:
            start.wait()
            answers.append(checkout(client, made["id"], "fifty-at-once" if with_key else None).status_code)

    if not at_once:
        for _ in range(50):
            pay()
    threads = [threading.Thread(target=pay) for _ in range(50 if at_once else 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with session_factory(engine)() as session:
        payments = session.scalars(sa.select(Payment).where(Payment.order_id == made["id"])).all()
        status = session.scalar(sa.select(Order.status).where(Order.id == made["id"]))
    assert status == "paid"
    assert [p.status for p in payments] == ["completed"], "one payment, completed"
    assert len(sandbox_charges(api, payments[0].id)) == 1, "one charge at the provider"
    assert set(Counter(answers)) <= {200, 409}, Counter(answers)
    assert 200 in answers
