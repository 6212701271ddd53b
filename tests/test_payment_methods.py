"""Saved payment methods over HTTP, on each database: from sandbox tokens only, with one default
per owner; an organization's billing role manages its methods; card data is refused and never
stored, echoed or logged; the provider customer is made once even when first uses race."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.models import PaymentEvent, PaymentMethod, PaymentProvider, ProviderCustomer
from tests.accounts import PASSWORD, Api
from tests.cli import run
from tests.server import free_port, serving
from tests.test_organizations import add_member, assert_problem, create_organization, person

PAN = "4242424242424242"
BILLFOLD = str(Path(sys.executable).with_name("billfold"))


def make_provider(engine: Engine, **fields: object) -> str:
    provider_id = "sb_" + new_id("x")[-12:].lower()
    with transaction(session_factory(engine)) as session:
        session.add(PaymentProvider(
            id=provider_id, display_name="Sandbox", config={"kind": "sandbox"},
            supports_saved_methods=True, supports_subscriptions=True, **fields,
        ))
    return provider_id


@pytest.fixture
def provider(engine: Engine) -> str:
    return make_provider(engine)


def customers(engine: Engine, provider_id: str, **owner: str) -> int:
    with engine.connect() as connection:
        return connection.execute(
            sa.select(sa.func.count()).select_from(ProviderCustomer)
            .where(ProviderCustomer.provider_id == provider_id, *(getattr(ProviderCustomer, k) == v for k, v in owner.items()))
        ).scalar_one()


def test_a_customer_saves_cards_and_exactly_one_is_the_default(api: Api, engine: Engine, provider: str) -> None:
    me = person(engine, "payer")
    with api.client(me.token) as client:
        def save(token: str, **extra: object) -> dict:
            made = client.post("/v1/me/payment-methods", json={"provider_id": provider, "token": token, **extra})
            assert made.status_code == 201, made.text
            return made.json()

        visa = save("tok_sandbox_visa")
        assert (visa["card_brand"], visa["last_four"], visa["payment_type"]) == ("visa", "4242", "credit_card")
        assert visa["expiry_month"] == "12" and visa["expiry_year"] == str(clock.now().year + 3)
        assert visa["is_default"] is True and visa["user_id"] == me.id and visa["provider_payment_method_id"].startswith("pm_")
        mastercard = save("tok_sandbox_mastercard")
        assert mastercard["is_default"] is False
        amex = save("tok_sandbox_amex", make_default=True)
        assert amex["is_default"] is True

        def defaults() -> list[str]:
            listed = client.get("/v1/me/payment-methods").json()["data"]
            return [m["id"] for m in listed if m["is_default"]]

        assert defaults() == [amex["id"]]
        first = client.get("/v1/me/payment-methods", params={"limit": 2}).json()
        assert [m["id"] for m in first["data"]] == [visa["id"], mastercard["id"]] and first["has_more"] is True
        assert client.get(f"/v1/me/payment-methods/{visa['id']}").json()["last_four"] == "4242"
        assert client.patch(f"/v1/me/payment-methods/{visa['id']}", json={"make_default": True}).json()["is_default"]
        assert defaults() == [visa["id"]]
        assert_problem(client.patch(f"/v1/me/payment-methods/{visa['id']}", json={"make_default": False}), 409, "default_required")
        # Deleting the default passes it to the newest other method.
        assert client.delete(f"/v1/me/payment-methods/{visa['id']}").status_code == 204
        assert defaults() == [amex["id"]]
        assert_problem(client.get(f"/v1/me/payment-methods/{visa['id']}"), 404, "not_found")
        assert client.delete(f"/v1/me/payment-methods/{amex['id']}").status_code == 204
        assert defaults() == [mastercard["id"]]
    assert customers(engine, provider, user_id=me.id) == 1
    with engine.connect() as connection:
        events = connection.execute(
            sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_type == "payment_method", PaymentEvent.entity_id == visa["id"])
        ).scalars().all()
    assert sorted(events) == ["created", "deleted", "updated"]


def test_a_billing_address_must_be_the_owners_own(api: Api, engine: Engine, provider: str) -> None:
    me, other = person(engine, "payer"), person(engine, "other")
    address = {"address_type": "billing", "name": "Ada", "line1": "1 Way", "city": "London", "postal_code": "N1", "country": "GB"}
    with api.client(other.token) as client:
        theirs = client.post("/v1/me/addresses", json=address).json()["id"]
    with api.client(me.token) as client:
        mine = client.post("/v1/me/addresses", json=address).json()["id"]
        shipping = client.post("/v1/me/addresses", json={**address, "address_type": "shipping"}).json()["id"]
        body = {"provider_id": provider, "token": "tok_sandbox_visa"}
        assert_problem(client.post("/v1/me/payment-methods", json={**body, "billing_address_id": theirs}), 422, "invalid_input", "billing_address_id")
        assert_problem(client.post("/v1/me/payment-methods", json={**body, "billing_address_id": shipping}), 422, "invalid_input", "billing_address_id")
        made = client.post("/v1/me/payment-methods", json={**body, "billing_address_id": mine})
        assert made.status_code == 201 and made.json()["billing_address_id"] == mine
        cleared = client.patch(f"/v1/me/payment-methods/{made.json()['id']}", json={"billing_address_id": None})
        assert cleared.status_code == 200 and cleared.json()["billing_address_id"] is None


def test_an_organizations_billing_member_manages_its_methods_and_a_member_only_looks(
    api: Api, engine: Engine, provider: str
) -> None:
    owner, billing, member, admin, stranger = (person(engine, n) for n in ("owner", "billing", "member", "admin", "stranger"))
    organization = create_organization(api, owner)
    for someone, role in ((billing, "billing"), (member, "member"), (admin, "admin")):
        add_member(api, owner, organization, someone, role)
    path = f"/v1/organizations/{organization}/payment-methods"
    body = {"provider_id": provider, "token": "tok_sandbox_visa"}
    with api.client(billing.token) as client:
        made = client.post(path, json=body)
        assert made.status_code == 201, made.text
        method = made.json()
        assert method["organization_id"] == organization and method["user_id"] is None and method["is_default"]
        second = client.post(path, json={**body, "token": "tok_sandbox_mastercard"}).json()
        assert client.patch(f"{path}/{second['id']}", json={"make_default": True}).json()["is_default"] is True
    for refused in (member, admin):
        with api.client(refused.token) as client:
            assert client.get(path).status_code == 200 and method["id"] in client.get(path).text
            assert_problem(client.post(path, json=body), 403, "role_required")
            assert_problem(client.delete(f"{path}/{method['id']}"), 403, "role_required")
    with api.client(stranger.token) as client:
        assert_problem(client.get(path), 404, "not_found")
        assert_problem(client.get(f"/v1/me/payment-methods/{method['id']}"), 404, "not_found")
    with api.client(owner.token) as client:
        assert client.delete(f"{path}/{method['id']}").status_code == 204
    assert customers(engine, provider, organization_id=organization) == 1
    with engine.connect() as connection:
        left = connection.execute(sa.select(PaymentMethod.id).where(PaymentMethod.organization_id == organization)).scalars().all()
    assert left == [second["id"]]


def test_a_wrong_inactive_or_unable_provider_is_refused_clearly(api: Api, engine: Engine) -> None:
    me = person(engine, "payer")
    inactive = make_provider(engine, is_active=False)
    unable = make_provider(engine)
    with transaction(session_factory(engine)) as session:
        session.get(PaymentProvider, unable).supports_saved_methods = False  # type: ignore[union-attr]
    with api.client(me.token) as client:
        def save(provider_id: str) -> httpx.Response:
            return client.post("/v1/me/payment-methods", json={"provider_id": provider_id, "token": "tok_sandbox_visa"})

        assert_problem(save("no_such_provider"), 404, "not_found", "provider_id")
        assert_problem(save(inactive), 409, "provider_inactive", "provider_id")
        assert_problem(save(unable), 422, "not_supported", "provider_id")
        assert_problem(save("Bad Id!"), 422, "invalid_input", "provider_id")
    assert customers(engine, inactive) == 0 and customers(engine, unable) == 0


def test_without_a_provider_id_the_configured_default_is_used(engine: Engine, tmp_path: Path, provider: str) -> None:
    me = person(engine, "payer")
    with serving(engine, tmp_path, default_provider=provider) as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {me.token}"}) as client:
            made = client.post("/v1/me/payment-methods", json={"token": "tok_sandbox_visa"})
    assert made.status_code == 201, made.text
    assert made.json()["provider_id"] == provider


CARD_BODIES = [
    {"token": "tok_sandbox_visa", "card_number": PAN},
    {"token": "tok_sandbox_visa", "card": {"number": PAN, "cvc": "123", "exp_month": 12, "exp_year": 2031}},
    {"token": "tok_sandbox_visa", "cvv": "123"},
    {"token": PAN},
    {"token": "4242 4242 4242 4241"},
]


def test_card_data_is_refused_and_neither_stored_nor_echoed(api: Api, engine: Engine, provider: str) -> None:
    me = person(engine, "payer")
    with api.client(me.token) as client:
        for body in CARD_BODIES:
            answer = client.post("/v1/me/payment-methods", json={"provider_id": provider, **body})
            problem = assert_problem(answer, 422, "card_data_refused")
            assert PAN not in answer.text and "4241" not in answer.text and "123" not in answer.text.replace("\"status\": 422", "")
            assert "token" in problem["detail"]
        # Anywhere: not only on payment-method endpoints.
        assert_problem(client.patch("/v1/me", json={"name": "Ada", "pan": PAN}), 422, "card_data_refused")
        assert_problem(client.post("/v1/me/payment-methods", json={"provider_id": provider, "token": "tok_sandbox_visa", "brand": "visa"}),
                       422, "invalid_input", "brand")
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(PaymentMethod).where(PaymentMethod.user_id == me.id)).scalar_one() == 0
        for table in ("payment_methods", "provider_customers", "payment_events", "payment_providers"):
            rows = connection.execute(sa.text(f"SELECT * FROM {table}")).all()
            assert PAN not in repr(rows)


@pytest.mark.parametrize("backend", [b for b in ("postgresql", "mariadb") if b in os.environ.get("BILLFOLD_TEST_DATABASES", "")], indirect=False)
def test_concurrent_first_saves_make_one_provider_customer(
    migrated: object, backend: str, tmp_path: Path
) -> None:
    engine = migrated.engine(backend)  # type: ignore[attr-defined]
    provider_id = make_provider(engine)
    me = person(engine, "racer")
    with serving(engine, tmp_path) as url:
        barrier = threading.Barrier(6)
        answers: list[httpx.Response] = []

        def save() -> None:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {me.token}"}, timeout=60) as client:
                barrier.wait()
                answers.append(client.post("/v1/me/payment-methods", json={"provider_id": provider_id, "token": "tok_sandbox_visa"}))

        threads = [threading.Thread(target=save) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers if a.status_code != 201]
    assert customers(engine, provider_id, user_id=me.id) == 1
    with engine.connect() as connection:
        defaults = connection.execute(
            sa.select(sa.func.count()).select_from(PaymentMethod).where(PaymentMethod.user_id == me.id, PaymentMethod.is_default.is_(True))
        ).scalar_one()
    assert defaults == 1


def test_card_data_never_reaches_the_server_log(tmp_path: Path) -> None:
    """The real `billfold serve`, with its access log on."""
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    assert run("db", "upgrade", database_url=url).code == 0
    admin_key = run("apikey", "create", "--name", "card test", database_url=url).stdout.strip()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env.update(BILLFOLD_DATABASE_URL=url, BILLFOLD_DATA_DIR=str(tmp_path / "data"), BILLFOLD_PUBLIC_URL=f"http://127.0.0.1:{port}")
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen([BILLFOLD, "serve", "--port", str(port)], stdout=output, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        api = Api(f"http://127.0.0.1:{port}", tmp_path / "data")
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{api.url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        with api.client(admin_key) as admin:
            made = admin.post("/v1/payment-providers", json={"id": "sandbox", "kind": "sandbox", "display_name": "Sandbox"})
            assert made.status_code == 201, made.text
        api.sign_up("carded@example.com")
        with api.client(api.sign_in("carded@example.com")) as me:
            for body in CARD_BODIES:
                assert me.post("/v1/me/payment-methods", json=body).status_code == 422
            # A refused request's line is still logged, with the number masked.
            assert me.get("/v1/orders", params={"status": "4242 4242 4242 4242"}).status_code == 422
            assert me.get(f"/v1/orders/{PAN}").status_code == 422
            saved = me.post("/v1/me/payment-methods", json={"token": "tok_sandbox_visa"})
            assert saved.status_code == 201, saved.text
    finally:
        server.terminate()
        server.wait(timeout=15)
    logged = log.read_text()
    assert "POST /v1/me/payment-methods" in logged, "the access log is on, so the test looks at something"
    assert PAN not in logged and "4241" not in logged and PASSWORD not in logged
    assert "GET /v1/orders?status=" in logged and PAN not in re.sub(r"%20|\+| ", "", logged)
    database = (tmp_path / "shop.db").read_bytes() + b"".join(p.read_bytes() for p in (tmp_path / "data").glob("sandbox.sqlite3*"))
    assert PAN.encode() not in database


def test_a_retried_save_with_the_same_idempotency_key_saves_one_method(api: Api, engine: Engine, provider: str) -> None:
    ada = person(engine, "ada")
    body = {"provider_id": provider, "token": "tok_sandbox_visa"}
    with api.client(ada.token) as client:
        first = client.post("/v1/me/payment-methods", json=body, headers={"Idempotency-Key": "save-card-1"})
        again = client.post("/v1/me/payment-methods", json=body, headers={"Idempotency-Key": "save-card-1"})
        assert first.status_code == again.status_code == 201, again.text
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        assert [m["id"] for m in client.get("/v1/me/payment-methods").json()["data"]] == [first.json()["id"]]
