"""The catalog over real HTTP, on each database: the category tree in order, moves that would put a
category inside itself refused without changing anything, deleting a category, who may change the
catalog and who sees what is not for sale, and membership types.

Products and variants are in test_catalog_products.py."""

from __future__ import annotations

from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from billfold.kit import clock
from billfold.kit.db import session_factory, transaction
from billfold.kit.ids import new_id
from billfold.models import PaymentEvent, ProductCategory, UserMembership
from tests import factories as make
from tests.accounts import Api
from tests.test_organizations import api_key, assert_problem, person


def made(answer: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    return answer.json()


def subtree(nodes: list[dict[str, Any]], category_id: str) -> dict[str, Any] | None:
    for node in nodes:
        if node["id"] == category_id:
            return node
        found = subtree(node["children"], category_id)
        if found is not None:
            return found
    return None


def names(node: dict[str, Any]) -> list[Any]:
    """The node's subtree as nested [name, [children...]] lists, in the order the API gives."""
    return [node["name"], [names(child) for child in node["children"]]]


def every(client: httpx.Client, path: str, **params: Any) -> list[str]:
    """The ids on every page of a list."""
    ids: list[str] = []
    while True:
        page = made(client.get(path, params={**params, "limit": 100, **({"starting_after": ids[-1]} if ids else {})}), 200)
        ids += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            return ids


def audit_events(engine: Engine, entity_id: str) -> list[str]:
    with session_factory(engine)() as session:
        return list(
            session.scalars(
                sa.select(PaymentEvent.event_type).where(PaymentEvent.entity_id == entity_id).order_by(PaymentEvent.id)
            )
        )


def test_the_category_tree_is_ordered_and_a_category_cannot_be_put_inside_itself(
    api: Api, admin_token: str, engine: Engine
) -> None:
    with api.client(admin_token) as admin, api.client() as anyone:
        shop = made(admin.post("/v1/categories", json={"name": f"Shop {new_id('t')}", "sort_order": 5}))

        def add(name: str, parent: str, **fields: Any) -> str:
            return made(admin.post("/v1/categories", json={"name": name, "parent_id": parent, **fields}))["id"]

        # sort_order first, then name, then id (two "Books" with the same sort_order)
        books_1 = add("Books", shop["id"], sort_order=1)
        apparel = add("Apparel", shop["id"], sort_order=2)
        software = add("Software", shop["id"], sort_order=1)
        books_2 = add("Books", shop["id"], sort_order=1)
        audio = add("Audio", shop["id"], sort_order=1, image="https://cdn.example.com/audio.jpg")
        shirts = add("Shirts", apparel, sort_order=0)
        tees = add("Tees", shirts)
        expected = [
            shop["name"],
            [["Audio", []], ["Books", []], ["Books", []], ["Software", []],
             ["Apparel", [["Shirts", [["Tees", []]]]]]],
        ]
        tree = made(anyone.get("/v1/categories"), 200)["data"]
        assert names(subtree(tree, shop["id"])) == expected
        assert [c["id"] for c in subtree(tree, shop["id"])["children"][1:3]] == sorted([books_1, books_2])
        assert subtree(tree, audio)["image"] == "https://cdn.example.com/audio.jpg"
        assert subtree(tree, tees)["parent_id"] == shirts

        # Under itself, or under anything inside it: refused, and the tree is as it was.
        for parent in (apparel, shirts, tees):
            refused = assert_problem(
                admin.patch(f"/v1/categories/{apparel}", json={"parent_id": parent}), 409, "category_cycle", "parent_id"
            )
            assert "inside itself" in refused["detail"]
        assert_problem(admin.patch(f"/v1/categories/{apparel}", json={"parent_id": "cat_nope"}), 404, "not_found", "parent_id")
        assert_problem(admin.post("/v1/categories", json={"name": "Orphan", "parent_id": "cat_nope"}), 404, "not_found", "parent_id")
        assert_problem(admin.post("/v1/categories", json={"name": "  "}), 422, "invalid_input", "name")
        assert_problem(admin.post("/v1/categories", json={"name": "X", "image": "http://a.example/x.jpg"}), 422, "invalid_input", "image")
        assert_problem(admin.patch(f"/v1/categories/{apparel}", json={"sort_order": None}), 422, "invalid_input", "sort_order")
        assert names(subtree(made(anyone.get("/v1/categories"), 200)["data"], shop["id"])) == expected

        # A real move: Tees goes to the top of the shop; Shirts can then go under it.
        made(admin.patch(f"/v1/categories/{tees}", json={"parent_id": shop["id"], "sort_order": -1}), 200)
        made(admin.patch(f"/v1/categories/{shirts}", json={"parent_id": tees}), 200)
        tree = made(anyone.get("/v1/categories"), 200)["data"]
        assert names(subtree(tree, shop["id"]))[1][0] == ["Tees", [["Shirts", []]]]
        assert names(subtree(tree, apparel)) == ["Apparel", []]

        # An inactive category hides everything under it, except from admins who ask.
        made(admin.patch(f"/v1/categories/{tees}", json={"is_active": False}), 200)
        public = subtree(made(anyone.get("/v1/categories?include_inactive=true"), 200)["data"], shop["id"])
        assert [c["name"] for c in public["children"]] == ["Audio", "Books", "Books", "Software", "Apparel"]
        assert_problem(anyone.get(f"/v1/categories/{shirts}"), 404, "not_found")
        assert made(admin.get(f"/v1/categories/{shirts}"), 200)["parent_id"] == tees
        everything = subtree(made(admin.get("/v1/categories?include_inactive=true"), 200)["data"], shop["id"])
        assert everything["children"][0]["name"] == "Tees" and everything["children"][0]["is_active"] is False
        assert subtree(made(admin.get("/v1/categories"), 200)["data"], tees) is None, "without asking, admins see the shop"

        # Deleting a category moves its children up to its parent; its products stay, without a category.
        mug = made(admin.post("/v1/products", json={
            "name": "Mug", "product_type": "physical", "price_cents": 1400, "category_id": tees,
        }))
        deleted = made(admin.delete(f"/v1/categories/{tees}"), 200)
        assert deleted == {"id": tees, "children_moved_to": shop["id"], "children_moved": 1, "products_uncategorised": 1}
        assert made(admin.get(f"/v1/categories/{shirts}"), 200)["parent_id"] == shop["id"]
        assert made(admin.get(f"/v1/products/{mug['id']}"), 200)["category_id"] is None
        assert_problem(admin.get(f"/v1/categories/{tees}"), 404, "not_found")
        assert_problem(admin.delete(f"/v1/categories/{tees}"), 404, "not_found")
    assert audit_events(engine, tees) == ["created", "updated", "updated", "deleted"]
    with session_factory(engine)() as session:
        assert session.get(ProductCategory, tees) is None


def test_only_admins_change_the_catalog_and_only_they_see_what_is_not_for_sale(
    api: Api, admin_token: str, engine: Engine
) -> None:
    customer = person(engine, "customer")
    reader = api_key(api, admin_token, "read")
    writer = api_key(api, admin_token, "read", "write")
    with api.client(admin_token) as admin:
        category = made(admin.post("/v1/categories", json={"name": f"Hidden {new_id('t')}", "is_active": False}))
        product = made(admin.post("/v1/products", json={
            "name": "Retired plan", "product_type": "subscription", "price_cents": 900, "billing_interval": "monthly",
            "is_active": False, "category_id": category["id"],
        }))
        plan = made(admin.post("/v1/membership-types", json={
            "name": "Old club", "duration_type": "lifetime", "price_cents": 100, "is_active": False,
        }))
    writes = [
        ("POST", "/v1/categories", {"name": "Sneaky"}),
        ("PATCH", f"/v1/categories/{category['id']}", {"name": "Sneaky"}),
        ("DELETE", f"/v1/categories/{category['id']}", None),
        ("POST", "/v1/products", {"name": "Free", "product_type": "digital", "price_cents": 0}),
        ("PATCH", f"/v1/products/{product['id']}", {"is_active": True}),
        ("DELETE", f"/v1/products/{product['id']}", None),
        ("POST", "/v1/membership-types", {"name": "Free", "duration_type": "lifetime", "price_cents": 0}),
        ("PATCH", f"/v1/membership-types/{plan['id']}", {"is_active": True}),
        ("DELETE", f"/v1/membership-types/{plan['id']}", None),
    ]
    for token, status, code in ((None, 401, "unauthorized"), (customer.token, 403, "forbidden"), (reader, 403, "forbidden")):
        with api.client(token) as client:
            for method, path, body in writes:
                assert_problem(client.request(method, path, json=body), status, code)
            # They do not see what is not for sale, even when they ask.
            for path in (f"/v1/products/{product['id']}", f"/v1/categories/{category['id']}", f"/v1/membership-types/{plan['id']}"):
                if token != reader:
                    assert_problem(client.get(path), 404, "not_found")
            if token != reader:
                assert every(client, "/v1/products", include_inactive="true", category_id=category["id"]) == []
                assert plan["id"] not in every(client, "/v1/membership-types", include_inactive="true")
                assert category["id"] not in client.get("/v1/categories?include_inactive=true").text
    with api.client(reader) as client:  # an API key acts as the shop's admin
        assert made(client.get(f"/v1/products/{product['id']}"), 200)["is_active"] is False
        assert every(client, "/v1/products", include_inactive="true", category_id=category["id"]) == [product["id"]]
    with api.client(writer) as client:
        made(client.patch(f"/v1/products/{product['id']}", json={"name": "Solo plan"}), 200)
    with api.client(admin_token) as admin:
        assert made(admin.get(f"/v1/products/{product['id']}"), 200)["name"] == "Solo plan"
        assert made(admin.get(f"/v1/categories/{category['id']}"), 200)["name"] == category["name"], "refused writes changed nothing"
        assert made(admin.get(f"/v1/membership-types/{plan['id']}"), 200)["is_active"] is False
    assert audit_events(engine, product["id"]) == ["created", "updated"]


def test_membership_types_are_recurring_fixed_or_lifetime_with_a_list_of_features(
    api: Api, admin_token: str, engine: Engine
) -> None:
    with api.client(admin_token) as admin, api.client() as anyone:
        founding = made(admin.post("/v1/membership-types", json={
            "name": "Founding member", "duration_type": "lifetime", "price_cents": 49900, "currency": "usd",
            "features": ["All courses", "Private community"],
        }))
        assert (founding["id"][:5], founding["currency"], founding["duration_days"], founding["features"]) == (
            "mtyp_", "USD", None, ["All courses", "Private community"]
        )
        monthly = made(admin.post("/v1/membership-types", json={
            "name": "Community pro", "duration_type": "recurring", "duration_days": 30, "price_cents": 1200, "currency": "EUR",
        }))
        assert monthly["features"] == []
        invalid = [
            ({"duration_type": "fixed"}, "duration_days"),
            ({"duration_type": "recurring"}, "duration_days"),
            ({"duration_type": "lifetime", "duration_days": 365}, "duration_days"),
            ({"duration_type": "fixed", "duration_days": 0}, "duration_days"),
            ({"duration_type": "forever"}, "duration_type"),
            ({"duration_type": "lifetime", "features": "everything"}, "features"),
            ({"duration_type": "lifetime", "features": ["Courses", " "]}, "features.1"),
            ({"duration_type": "lifetime", "features": ["Courses", "Courses"]}, "features"),
            ({"duration_type": "lifetime", "features": [{"name": "Courses"}]}, "features.0"),
            ({"duration_type": "lifetime", "currency": "XYZ"}, "currency"),
            ({"duration_type": "lifetime", "price_cents": -1}, "price_cents"),
            ({"duration_type": "lifetime", "price_cents": "12.00"}, "price_cents"),
        ]
        for fields, field in invalid:
            body = {"name": "Bad", "price_cents": 100, **fields}
            assert_problem(admin.post("/v1/membership-types", json=body), 422, "invalid_input", field)
        assert_problem(admin.patch(f"/v1/membership-types/{founding['id']}", json={"duration_type": "fixed"}), 422, "invalid_input", "duration_days")
        assert_problem(admin.patch(f"/v1/membership-types/{monthly['id']}", json={"duration_days": None}), 422, "invalid_input", "duration_days")
        learning = made(admin.patch(f"/v1/membership-types/{founding['id']}", json={
            "duration_type": "fixed", "duration_days": 365, "features": ["All courses"], "name": "Learning pass",
        }), 200)
        assert (learning["duration_type"], learning["duration_days"], learning["features"]) == ("fixed", 365, ["All courses"])
        assert made(anyone.get(f"/v1/membership-types/{monthly['id']}"), 200)["name"] == "Community pro"

        # Inactive: only admins see it. In use: kept (409), and can still be deactivated.
        made(admin.patch(f"/v1/membership-types/{monthly['id']}", json={"is_active": False}), 200)
        assert_problem(anyone.get(f"/v1/membership-types/{monthly['id']}"), 404, "not_found")
        listed = every(anyone, "/v1/membership-types")
        assert founding["id"] in listed and monthly["id"] not in listed
        assert monthly["id"] in every(admin, "/v1/membership-types", include_inactive="true")
        assert monthly["id"] not in every(admin, "/v1/membership-types")
        with transaction(session_factory(engine)) as session:
            member = make.user(session, email=f"{new_id('m').lower()}@example.com")
            session.add(UserMembership(
                user_id=member.id, membership_type_id=founding["id"], status="active", start_date=clock.now(),
            ))
        assert_problem(admin.delete(f"/v1/membership-types/{founding['id']}"), 409, "membership_type_in_use")
        assert admin.delete(f"/v1/membership-types/{monthly['id']}").status_code == 204
        assert_problem(admin.get(f"/v1/membership-types/{monthly['id']}"), 404, "not_found")
        assert_problem(admin.get("/v1/membership-types/prod_123"), 404, "not_found")
    assert audit_events(engine, founding["id"]) == ["created", "updated"]
    assert audit_events(engine, monthly["id"]) == ["created", "updated", "deleted"]
