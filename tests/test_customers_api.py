"""A merchant's backend makes and finds its customers and reads their payments over the API, with
an API key, on each database: ``POST /v1/users`` (no password, no email), ``GET /v1/users?email=``
and ``GET /v1/payments`` with filters, under the permission rules of payments."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.accounts.api_keys import create_api_key
from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.models import PaymentEvent, User
from tests.accounts import Api
from tests.test_checkout import checkout, customer, order, product
from tests.test_organizations import assert_problem


def _key(engine: Engine, *scopes: str) -> str:
    with transaction(session_factory(engine)) as session:
        return create_api_key(session, name="shop backend", scopes=list(scopes), created_by=None)[1]


def _address() -> str:
    return f"Customer.{uuid.uuid4().hex[:10]}@Example.COM"


def test_the_backend_creates_a_customer_with_no_password_and_no_email(api: Api, engine: Engine) -> None:
    address = _address()
    key = _key(engine, "read", "write")
    with api.client(key) as backend:
        made = backend.post(
            "/v1/users", json={"email": address, "name": "Grace", "last_name": "Hopper", "phone": "+4930123456"},
            headers={"Idempotency-Key": "customer-1"},
        )
        assert made.status_code == 201, made.text
        user = made.json()
        assert user["email"] == address.lower() and user["user_type"] == "individual"
        assert user["is_verified"] is False and user["first_time"] is True

        again = backend.post(
            "/v1/users", json={"email": address, "name": "Grace", "last_name": "Hopper", "phone": "+4930123456"},
            headers={"Idempotency-Key": "customer-1"},
        )
        assert again.status_code == 201 and again.json()["id"] == user["id"]
        assert again.headers["idempotent-replayed"] == "true"
        taken = backend.post("/v1/users", json={"email": address.upper(), "name": "G", "last_name": "H"})
        assert_problem(taken, 409, "email_taken")
        assert_problem(backend.post("/v1/users", json={"email": _address(), "name": "G", "last_name": "H", "user_type": "admin"}), 422, "invalid_input")
        assert_problem(backend.post("/v1/users", json={"email": _address(), "name": "G", "last_name": "H", "password": "x" * 12}), 422, "invalid_input")

    assert api.mails_to(address.lower()) == [], "no email round trip"
    with session_factory(engine)() as session:
        stored = session.get(User, user["id"])
        assert stored is not None and stored.password_hash is None
        audit = session.scalars(sa.select(PaymentEvent).where(PaymentEvent.entity_id == user["id"])).all()
    assert [(e.event_type, (e.data or {}).get("by", "")[:4]) for e in audit] == [("created_by_merchant", "key_")]

    # The customer claims the account later by resetting the password of the address.
    with api.client() as client:
        assert client.post("/v1/auth/password-reset", json={"email": address}).status_code == 202
        token = api.token_mailed_to(address.lower())
        reset = client.post("/v1/auth/password-reset/confirm", json={"token": token, "new_password": "a new long password"})
        assert reset.status_code == 200, reset.text
    assert api.sign_in(address.lower(), "a new long password")


def test_only_admins_and_write_keys_create_customers(api: Api, engine: Engine, admin_token: str) -> None:
    body = {"email": _address(), "name": "Grace", "last_name": "Hopper"}
    shopper = customer(api, engine, "shopper")
    for token in (_key(engine, "read"), shopper.token):
        with api.client(token) as client:
            assert_problem(client.post("/v1/users", json=body), 403, "forbidden")
    with session_factory(engine)() as session:
        assert session.scalar(sa.select(User.id).where(User.email == body["email"].lower())) is None
    with api.client(admin_token) as admin:
        assert admin.post("/v1/users", json=body).status_code == 201


def test_a_customer_is_found_by_email_exactly_in_any_case(api: Api, engine: Engine) -> None:
    address = _address()
    key = _key(engine, "read", "write")
    with api.client(key) as backend:
        made = backend.post("/v1/users", json={"email": address, "name": "Ada", "last_name": "Lovelace"}).json()
        for asked in (address, address.lower(), address.upper(), f"  {address} "):
            found = backend.get("/v1/users", params={"email": asked})
            assert found.status_code == 200, found.text
            assert [u["id"] for u in found.json()["data"]] == [made["id"]], asked
        for other in (address.replace("@", "x@"), "x" + address, address.split("@")[0] + "@example.org"):
            assert backend.get("/v1/users", params={"email": other}).json() == {"data": [], "has_more": False}
        assert_problem(backend.get("/v1/users", params={"email": "not an address"}), 422, "invalid_input", "email")


def _pay(api: Api, token: str, item: str, card: str = "tok_sandbox_visa", **extra: object) -> dict:
    made = order(api, token, (item, 1), **extra)
    with api.client(token) as client:
        answer = checkout(client, made["id"], token=card)
    assert answer.status_code in (200, 402), answer.text
    return made


def test_payments_are_listed_with_filters_and_each_customer_sees_only_their_own(
    api: Api, engine: Engine, admin_token: str
) -> None:
    started = clock.now() - timedelta(seconds=2)
    ada, bob = customer(api, engine, "ada"), customer(api, engine, "bob")
    book = product(engine, 1500)
    ada_paid = _pay(api, ada.token, book)
    ada_declined = _pay(api, ada.token, book, "tok_sandbox_decline")
    bob_paid = _pay(api, bob.token, book)

    def listed(client: httpx.Client, **params: object) -> list[dict]:
        answer = client.get("/v1/payments", params={"limit": 100, **params})
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    with api.client(_key(engine, "read")) as backend:
        mine = listed(backend, user_id=ada.id)
        assert sorted(p["order_id"] for p in mine) == sorted([ada_paid["id"], ada_declined["id"]])
        assert {p["user_id"] for p in mine} == {ada.id}
        assert [p["status"] for p in listed(backend, user_id=ada.id, status="failed")] == ["failed"]
        assert [p["order_id"] for p in listed(backend, order_id=bob_paid["id"])] == [bob_paid["id"]]
        assert len(listed(backend, user_id=bob.id, provider_id="sandbox")) == 1
        assert listed(backend, user_id=bob.id, provider_id="nowhere") == []
        assert len(listed(backend, created_from=started.isoformat(), user_id=ada.id)) == 2
        assert listed(backend, created_to=started.isoformat(), user_id=ada.id) == []
        first = backend.get("/v1/payments", params={"user_id": ada.id, "limit": 1}).json()
        assert first["has_more"] is True and len(first["data"]) == 1
        rest = listed(backend, user_id=ada.id, starting_after=first["data"][0]["id"])
        assert [p["id"] for p in first["data"] + rest] == [p["id"] for p in mine], "pages in id order"
        assert_problem(backend.get("/v1/payments", params={"status": "lost"}), 422, "invalid_input", "status")
        naive = datetime(2026, 1, 1).isoformat()
        assert_problem(backend.get("/v1/payments", params={"created_from": naive}), 422, "invalid_input", "created_from")

    with api.client(ada.token) as client:
        assert {p["order_id"] for p in listed(client)} == {ada_paid["id"], ada_declined["id"]}
        assert listed(client, user_id=bob.id) == [], "another customer's payments are not shown"
    with api.client(admin_token) as admin:
        assert {p["order_id"] for p in listed(admin, created_from=started.isoformat())} >= {
            ada_paid["id"], ada_declined["id"], bob_paid["id"]
        }
    with api.client(_key(engine, "write")) as writer:
        assert_problem(writer.get("/v1/payments"), 403, "forbidden")
