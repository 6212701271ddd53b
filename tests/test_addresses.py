"""Addresses of users and organizations over real HTTP, on each database: validation that names the
field, one default per kind (a 'both' address counting as billing and shipping), privacy, and
addresses that orders still use."""

from __future__ import annotations

import threading

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit.db import session_factory, transaction
from billfold.models import Address, PaymentEvent, User
from tests import factories as make
from tests.accounts import Api
from tests.test_organizations import add_member, api_key, assert_problem, create_organization, person

HOME = {
    "address_type": "both",
    "name": "Ada Lovelace",
    "line1": "12 St James's Square",
    "city": "London",
    "postal_code": "SW1Y 4JH",
    "country": "gb",
}


def address(address_type: str = "billing", **fields: object) -> dict:
    return {**HOME, "address_type": address_type, "line1": f"{address_type.title()} Street 1", **fields}


def defaults(client: httpx.Client, path: str = "/v1/me/addresses") -> dict[str, list[str]]:
    """Which kinds each address is the default for, by id, as the list says."""
    return {a["id"]: a["default_for"] for a in client.get(path).json()["data"]}


def stored(engine: Engine, owner_column: str, owner_id: str) -> list[tuple]:
    with session_factory(engine)() as session:
        rows = session.scalars(
            sa.select(Address).where(getattr(Address, owner_column) == owner_id).order_by(Address.id)
        )
        return [(a.id, a.address_type, a.is_default, a.line1, a.postal_code, a.country) for a in rows]


def test_a_user_adds_an_address_and_the_first_of_its_kind_becomes_the_default(
    api: Api, engine: Engine
) -> None:
    ada = person(engine, "ada")
    with api.client(ada.token) as client:
        made = client.post(
            "/v1/me/addresses",
            json=address("billing", country="gb", email="Ada@Example.com", phone="+442079460000"),
        )
        assert made.status_code == 201, made.text
        first = made.json()
        assert (
            first["id"].startswith("adr_") and first["user_id"] == ada.id and first["organization_id"] is None
        )
        assert (first["country"], first["email"], first["is_default"], first["default_for"]) == (
            "GB",
            "ada@example.com",
            True,
            ["billing"],
        )
        second = client.post("/v1/me/addresses", json=address("billing", line1="Office 2")).json()
        assert second["is_default"] is False and second["default_for"] == []
        shipping = client.post("/v1/me/addresses", json=address("shipping")).json()
        assert shipping["default_for"] == ["shipping"], "the first shipping address is the shipping default"
        assert client.get(f"/v1/me/addresses/{second['id']}").json()["line1"] == "Office 2"
        assert list(defaults(client)) == [first["id"], second["id"], shipping["id"]], "oldest first"
    assert [(row[1], row[2]) for row in stored(engine, "user_id", ada.id)] == [
        ("billing", True),
        ("billing", False),
        ("shipping", True),
    ]
    with session_factory(engine)() as session:
        assert (
            session.scalar(
                sa.select(sa.func.count())
                .select_from(PaymentEvent)
                .where(PaymentEvent.entity_id == first["id"])
            )
            == 1
        )


def test_making_another_address_the_default_takes_it_from_the_previous_one(api: Api, engine: Engine) -> None:
    ada = person(engine, "ada")
    with api.client(ada.token) as client:
        first = client.post("/v1/me/addresses", json=address("billing")).json()["id"]
        second = client.post("/v1/me/addresses", json=address("billing", line1="Office 2")).json()["id"]
        made = client.patch(f"/v1/me/addresses/{second}", json={"is_default": True})
        assert made.status_code == 200 and made.json()["default_for"] == ["billing"]
        assert defaults(client) == {first: [], second: ["billing"]}
        third = client.post("/v1/me/addresses", json=address("billing", line1="New", is_default=True)).json()[
            "id"
        ]
        assert defaults(client) == {first: [], second: [], third: ["billing"]}
        refused = assert_problem(
            client.patch(f"/v1/me/addresses/{third}", json={"is_default": False}),
            409,
            "default_required",
            "is_default",
        )
        assert "make another address the default" in refused["detail"]
        assert client.patch(f"/v1/me/addresses/{first}", json={"is_default": False}).status_code == 200, (
            "not a default: nothing to do"
        )
    assert [row[2] for row in stored(engine, "user_id", ada.id)] == [False, False, True]


def test_deleting_the_default_passes_it_to_the_oldest_remaining_address(api: Api, engine: Engine) -> None:
    ada = person(engine, "ada")
    with api.client(ada.token) as client:
        first, second, third = (
            client.post("/v1/me/addresses", json=address("shipping", line1=f"Road {n}")).json()["id"]
            for n in range(3)
        )
        assert client.patch(f"/v1/me/addresses/{third}", json={"is_default": True}).status_code == 200
        assert client.delete(f"/v1/me/addresses/{third}").status_code == 204
        assert defaults(client) == {first: ["shipping"], second: []}
        assert client.delete(f"/v1/me/addresses/{second}").status_code == 204
        assert client.delete(f"/v1/me/addresses/{first}").status_code == 204
        assert_problem(client.get(f"/v1/me/addresses/{first}"), 404, "not_found")
        assert client.get("/v1/me/addresses").json() == {"data": [], "has_more": False}
    assert stored(engine, "user_id", ada.id) == []


def test_a_both_address_counts_as_a_billing_and_a_shipping_address(api: Api, engine: Engine) -> None:
    ada = person(engine, "ada")
    with api.client(ada.token) as client:
        home = client.post("/v1/me/addresses", json=address("both")).json()
        assert home["default_for"] == ["billing", "shipping"]
        office = client.post("/v1/me/addresses", json=address("billing", line1="Office")).json()
        assert office["default_for"] == [], "home is already the billing default"
        client.patch(f"/v1/me/addresses/{office['id']}", json={"is_default": True})
        assert defaults(client) == {home["id"]: ["shipping"], office["id"]: ["billing"]}, (
            "home stays the shipping default"
        )
        client.patch(f"/v1/me/addresses/{home['id']}", json={"is_default": True})
        assert defaults(client) == {home["id"]: ["billing", "shipping"], office["id"]: []}
        depot = client.post(
            "/v1/me/addresses", json=address("shipping", line1="Depot", is_default=True)
        ).json()
        assert defaults(client) == {home["id"]: ["billing"], office["id"]: [], depot["id"]: ["shipping"]}
        assert client.delete(f"/v1/me/addresses/{home['id']}").status_code == 204
        assert defaults(client) == {office["id"]: ["billing"], depot["id"]: ["shipping"]}, (
            "a billing address takes over billing"
        )
        moved = client.patch(f"/v1/me/addresses/{depot['id']}", json={"address_type": "billing"}).json()
        assert moved["default_for"] == [] and defaults(client) == {office["id"]: ["billing"], depot["id"]: []}
    assert [(row[1], row[2]) for row in stored(engine, "user_id", ada.id)] == [
        ("billing", True),
        ("billing", False),
    ]


def test_users_and_organizations_keep_their_defaults_apart(api: Api, engine: Engine) -> None:
    ada, bob = person(engine, "ada"), person(engine, "bob")
    organization = create_organization(api, ada)
    add_member(api, ada, organization, bob, "billing")
    with api.client(bob.token) as billing:
        own = billing.post("/v1/me/addresses", json=address("billing")).json()
        theirs = billing.post(
            f"/v1/organizations/{organization}/addresses", json=address("billing", line1="HQ")
        )
        assert (
            theirs.status_code == 201
            and theirs.json()["organization_id"] == organization
            and theirs.json()["user_id"] is None
        )
        assert theirs.json()["default_for"] == ["billing"] and billing.get(
            f"/v1/me/addresses/{own['id']}"
        ).json()["default_for"] == ["billing"]
        assert [
            a["id"] for a in billing.get(f"/v1/organizations/{organization}/addresses").json()["data"]
        ] == [theirs.json()["id"]]
        assert [a["id"] for a in billing.get("/v1/me/addresses").json()["data"]] == [own["id"]]
        assert_problem(
            billing.get(f"/v1/organizations/{organization}/addresses/{own['id']}"), 404, "not_found"
        )
        assert_problem(billing.get(f"/v1/me/addresses/{theirs.json()['id']}"), 404, "not_found")
        changed = billing.patch(
            f"/v1/organizations/{organization}/addresses/{theirs.json()['id']}",
            json={"city": "Leeds", "postal_code": "LS1 1UR"},
        )
        assert changed.status_code == 200 and (changed.json()["city"], changed.json()["postal_code"]) == (
            "Leeds",
            "LS1 1UR",
        )


def test_nobody_reaches_another_users_address(api: Api, engine: Engine) -> None:
    ada, eve = person(engine, "ada"), person(engine, "eve")
    with api.client(ada.token) as client:
        mine = client.post("/v1/me/addresses", json=address("billing")).json()["id"]
    with api.client(eve.token) as stranger:
        for answer in (
            stranger.get(f"/v1/me/addresses/{mine}"),
            stranger.patch(f"/v1/me/addresses/{mine}", json={"city": "Paris"}),
            stranger.delete(f"/v1/me/addresses/{mine}"),
            stranger.get(f"/v1/users/{ada.id}/addresses"),
        ):
            assert answer.status_code in (403, 404)
        assert stranger.get("/v1/me/addresses").json()["data"] == []
    assert [row[0] for row in stored(engine, "user_id", ada.id)] == [mine]
    with session_factory(engine)() as session:
        assert session.get(Address, mine).city == "London"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"country": "XX"}, "country"),
        ({"country": "GBR"}, "country"),
        ({"country": "1A"}, "country"),
        ({"country": "Gb"}, "country"),
        ({"is_default": "yes"}, "is_default"),
        ({"postal_code": "   "}, "postal_code"),
        ({"postal_code": None}, "postal_code"),
        ({"postal_code": "1" * 51}, "postal_code"),
        ({"name": ""}, "name"),
        ({"line1": None}, "line1"),
        ({"address_type": "home"}, "address_type"),
        ({"phone": "0207 946 0000"}, "phone"),
        ({"email": "not an address"}, "email"),
        ({"card_number": "4242424242424242"}, "card_number"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_a_bad_address_is_refused_naming_the_field_and_changes_nothing(
    api: Api, engine: Engine, change: dict, field: str
) -> None:
    ada = person(engine, "ada")
    code = "card_data_refused" if field == "card_number" else "invalid_input"  # no endpoint takes card data
    with api.client(ada.token) as client:
        kept = client.post("/v1/me/addresses", json=address("billing")).json()
        assert_problem(
            client.post("/v1/me/addresses", json={**address("shipping"), **change}),
            422,
            code,
            field,
        )
        assert_problem(client.patch(f"/v1/me/addresses/{kept['id']}", json=change), 422, code, field)
    assert stored(engine, "user_id", ada.id) == [
        (kept["id"], "billing", True, "Billing Street 1", "SW1Y 4JH", "GB")
    ]


@pytest.mark.parametrize("missing", ["address_type", "name", "line1", "city", "postal_code", "country"])
def test_an_address_needs_its_required_fields(api: Api, engine: Engine, missing: str) -> None:
    ada = person(engine, "ada")
    body = address("billing")
    del body[missing]
    with api.client(ada.token) as client:
        assert_problem(client.post("/v1/me/addresses", json=body), 422, "invalid_input", missing)
    assert stored(engine, "user_id", ada.id) == []


def test_an_address_on_an_order_cannot_be_deleted(api: Api, engine: Engine) -> None:
    ada = person(engine, "ada")
    with api.client(ada.token) as client:
        billed_to = client.post("/v1/me/addresses", json=address("billing")).json()["id"]
        with transaction(session_factory(engine)) as session:
            make.order(session, user=session.get(User, ada.id), billing_address_id=billed_to)
        refused = assert_problem(client.delete(f"/v1/me/addresses/{billed_to}"), 409, "address_in_use")
        assert "order" in refused["detail"]
    assert [row[0] for row in stored(engine, "user_id", ada.id)] == [billed_to]


def test_the_shop_manages_a_customers_addresses(api: Api, engine: Engine, admin_token: str) -> None:
    ada = person(engine, "ada")
    with api.client(api_key(api, admin_token, "read", "write")) as backend:
        made = backend.post(f"/v1/users/{ada.id}/addresses", json=address("shipping"))
        assert made.status_code == 201 and made.json()["user_id"] == ada.id
        assert (
            backend.patch(
                f"/v1/users/{ada.id}/addresses/{made.json()['id']}", json={"state": "Greater London"}
            ).status_code
            == 200
        )
        assert [a["id"] for a in backend.get(f"/v1/users/{ada.id}/addresses").json()["data"]] == [
            made.json()["id"]
        ]
        assert_problem(backend.get("/v1/users/usr_nobody/addresses"), 404, "not_found")
    with api.client(ada.token) as client:
        mine = client.get("/v1/me/addresses").json()["data"]
    assert [(a["id"], a["state"], a["default_for"]) for a in mine] == [
        (made.json()["id"], "Greater London", ["shipping"])
    ]


def test_concurrent_requests_leave_exactly_one_default(
    api: Api, engine: Engine, backend: str, request: pytest.FixtureRequest
) -> None:
    ada = person(engine, "ada")
    with api.client(ada.token) as client:
        ids = [
            client.post("/v1/me/addresses", json=address("billing", line1=f"Road {n}")).json()["id"]
            for n in range(6)
        ]
    answers: list[int] = []

    def make_default(address_id: str) -> None:
        with api.client(ada.token) as client:
            answers.append(
                client.patch(f"/v1/me/addresses/{address_id}", json={"is_default": True}).status_code
            )

    threads = [threading.Thread(target=make_default, args=(address_id,)) for address_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * len(ids)
    assert sum(row[2] for row in stored(engine, "user_id", ada.id)) == 1
