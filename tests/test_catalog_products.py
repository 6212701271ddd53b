"""Products over real HTTP, on each database: every kind, one-time or recurring, with validation that
names the field and changes nothing; variants under their parent; filters and stable pages; and
what may be bought (``purchasable_product``, which orders call)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from billfold.catalog.categories import tree
from billfold.catalog.schemas import MembershipTypeOut, ProductOut
from billfold.catalog.service import ProductInactive, VariantRequired, purchasable_product
from billfold.kit.db import session_factory, transaction
from billfold.kit.errors import NotFound
from billfold.kit.ids import new_id
from billfold.demo.shop import load_demo
from billfold.models import MembershipType, Product
from tests import factories as make
from tests.accounts import Api
from tests.test_catalog import audit_events, every, made
from tests.test_organizations import assert_problem

MUG = {"name": "Enamel mug", "product_type": "physical", "price_cents": 1400}


def product_count(engine: Engine) -> int:
    with session_factory(engine)() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Product)) or 0


def test_products_of_every_kind_and_validation_that_names_the_field(api: Api, admin_token: str, engine: Engine) -> None:
    with api.client(admin_token) as admin, api.client() as anyone:
        category = made(admin.post("/v1/categories", json={"name": f"Everything {new_id('t')}"}))["id"]
        team = made(admin.post("/v1/products", json={
            "name": "Team plan", "description": "Up to 10 seats.", "product_type": "subscription", "price_cents": 2900,
            "billing_interval": "monthly", "trial_days": 14, "category_id": category,
            "image": "https://cdn.example.com/team.jpg", "gallery": ["https://cdn.example.com/team-1.jpg"],
            "metadata": {"tier": "team"},
        }))
        assert {k: team[k] for k in ("product_type", "is_recurring", "billing_interval", "trial_days", "currency", "is_active")} == {
            "product_type": "subscription", "is_recurring": True, "billing_interval": "monthly", "trial_days": 14,
            "currency": "USD", "is_active": True,
        }
        assert (team["id"][:5], team["gallery"], team["metadata"], team["parent_product_id"]) == (
            "prod_", ["https://cdn.example.com/team-1.jpg"], {"tier": "team"}, None
        )
        book = made(admin.post("/v1/products", json={
            "name": "Field guide", "product_type": "digital", "price_cents": 2400, "currency": "eur", "category_id": category,
        }))
        assert (book["currency"], book["is_recurring"], book["billing_interval"], book["trial_days"], book["gallery"]) == (
            "EUR", False, None, 0, []
        )
        retainer = made(admin.post("/v1/products", json={
            "name": "Support retainer", "product_type": "service", "price_cents": 120000, "currency": "JPY",
            "billing_interval": "yearly", "category_id": category,
        }))
        assert (retainer["is_recurring"], retainer["billing_interval"], retainer["price_cents"]) == (True, "yearly", 120000)
        mug = made(admin.post("/v1/products", json={**MUG, "category_id": category}))
        free = made(admin.post("/v1/products", json={**MUG, "name": "Sticker", "price_cents": 0, "category_id": category}))
        assert free["price_cents"] == 0
        assert every(anyone, "/v1/products", category_id=category) == [team["id"], book["id"], retainer["id"], mug["id"], free["id"]]

        before = product_count(engine)
        invalid: list[tuple[dict[str, Any], str]] = [
            ({"product_type": "rental"}, "product_type"),
            ({"price_cents": -1}, "price_cents"),
            ({"price_cents": 19.99}, "price_cents"),
            ({"price_cents": "1999"}, "price_cents"),
            ({"price_cents": 2**63}, "price_cents"),
            ({"currency": "ABC"}, "currency"),
            ({"currency": "US"}, "currency"),
            ({"name": " "}, "name"),
            ({"billing_interval": "weekly"}, "billing_interval"),
            ({"is_recurring": True}, "billing_interval"),
            ({"product_type": "subscription"}, "billing_interval"),
            ({"product_type": "subscription", "is_recurring": False, "billing_interval": "monthly"}, "is_recurring"),
            ({"is_recurring": False, "billing_interval": "monthly"}, "billing_interval"),
            ({"trial_days": 7}, "trial_days"),
            ({"billing_interval": "monthly", "trial_days": -1}, "trial_days"),
            ({"image": "http://cdn.example.com/mug.jpg"}, "image"),
            ({"gallery": ["https://cdn.example.com/1.jpg", "ftp://cdn.example.com/2.jpg"]}, "gallery.1"),
            ({"gallery": "https://cdn.example.com/1.jpg"}, "gallery"),
            ({"variations": [{"name": "size", "options": ["S", "S"]}]}, "variations.0.options"),
            ({"variations": [{"name": "size", "options": []}]}, "variations.0.options"),
            ({"variations": [{"name": "size", "options": ["S"]}, {"name": "size", "options": ["M"]}]}, "variations"),
            ({"metadata": {"sku": 12}}, "metadata.sku"),
            ({"colour": "red"}, "colour"),
        ]
        for fields, field in invalid:
            assert_problem(admin.post("/v1/products", json={**MUG, **fields}), 422, "invalid_input", field)
        assert_problem(admin.post("/v1/products", json={**MUG, "category_id": "cat_nope"}), 404, "not_found", "category_id")
        assert_problem(admin.post("/v1/products", json={**MUG, "parent_product_id": "prod_nope"}), 404, "not_found", "parent_product_id")
        assert product_count(engine) == before, "refused requests made nothing"

        # Updates are checked against what is stored, and a refused one changes nothing.
        assert_problem(admin.patch(f"/v1/products/{team['id']}", json={"is_recurring": False}), 422, "invalid_input", "is_recurring")
        assert_problem(admin.patch(f"/v1/products/{team['id']}", json={"billing_interval": None}), 422, "invalid_input", "billing_interval")
        assert_problem(admin.patch(f"/v1/products/{mug['id']}", json={"trial_days": 3}), 422, "invalid_input", "trial_days")
        assert_problem(admin.patch(f"/v1/products/{mug['id']}", json={"price_cents": None}), 422, "invalid_input", "price_cents")
        assert_problem(admin.patch(f"/v1/products/{mug['id']}", json={"category_id": "cat_nope", "name": "X"}), 404, "not_found", "category_id")
        assert made(admin.get(f"/v1/products/{mug['id']}"), 200) == mug
        yearly = made(admin.patch(f"/v1/products/{team['id']}", json={
            "billing_interval": "yearly", "price_cents": 29000, "metadata": None, "gallery": None, "category_id": None,
        }), 200)
        assert (yearly["billing_interval"], yearly["price_cents"], yearly["metadata"], yearly["gallery"], yearly["category_id"]) == (
            "yearly", 29000, {}, [], None
        )
        one_time = made(admin.patch(f"/v1/products/{retainer['id']}", json={"is_recurring": False, "billing_interval": None}), 200)
        assert (one_time["is_recurring"], one_time["billing_interval"]) == (False, None)
        assert_problem(admin.get("/v1/products/prod_nope"), 404, "not_found")
        assert_problem(admin.patch("/v1/products/nope", json={"name": "X"}), 404, "not_found")
        assert admin.delete(f"/v1/products/{free['id']}").status_code == 204
        assert_problem(admin.get(f"/v1/products/{free['id']}"), 404, "not_found")
    assert audit_events(engine, team["id"]) == ["created", "updated"]
    assert audit_events(engine, free["id"]) == ["created", "deleted"]


def test_variants_hang_under_a_product_that_is_not_itself_a_variant(api: Api, admin_token: str, engine: Engine) -> None:
    with api.client(admin_token) as admin, api.client() as anyone:
        category = made(admin.post("/v1/categories", json={"name": f"Apparel {new_id('t')}"}))["id"]
        tee = made(admin.post("/v1/products", json={
            "name": "Logo T-shirt", "product_type": "physical", "price_cents": 2500, "category_id": category,
            "variations": [{"name": "size", "options": ["S", "M", "XL"]}, {"name": "colour", "options": ["Navy"]}],
        }))
        assert tee["variations"][0] == {"name": "size", "options": ["S", "M", "XL"]}
        sizes = [
            made(admin.post("/v1/products", json={
                "name": f"Logo T-shirt, Navy, {size}", "product_type": "physical", "price_cents": price,
                "parent_product_id": tee["id"], "category_id": category, "metadata": {"size": size, "colour": "Navy"},
            }))
            for size, price in (("S", 2500), ("M", 2500), ("XL", 2700))
        ]
        assert every(anyone, f"/v1/products/{tee['id']}/variants") == [v["id"] for v in sizes]
        assert every(anyone, "/v1/products", category_id=category) == [tee["id"]], "variants are listed under their parent"
        assert made(anyone.get(f"/v1/products/{sizes[2]['id']}"), 200)["parent_product_id"] == tee["id"]

        before = product_count(engine)
        variant_of_variant = {**MUG, "parent_product_id": sizes[0]["id"]}
        assert_problem(admin.post("/v1/products", json=variant_of_variant), 409, "invalid_variant", "parent_product_id")
        assert_problem(admin.post("/v1/products", json={**MUG, "parent_product_id": tee["id"], "currency": "EUR"}), 409, "invalid_variant", "currency")
        assert_problem(admin.post("/v1/products", json={
            **MUG, "parent_product_id": tee["id"], "product_type": "subscription", "billing_interval": "monthly",
        }), 409, "invalid_variant", "product_type")
        assert product_count(engine) == before
        assert_problem(admin.patch(f"/v1/products/{tee['id']}", json={"currency": "EUR"}), 409, "product_has_variants", "currency")
        assert_problem(admin.patch(f"/v1/products/{tee['id']}", json={"parent_product_id": tee["id"]}), 409, "invalid_variant", "parent_product_id")
        other = made(admin.post("/v1/products", json=MUG))
        assert_problem(admin.patch(f"/v1/products/{tee['id']}", json={"parent_product_id": other["id"]}), 409, "product_has_variants", "parent_product_id")
        assert_problem(admin.patch(f"/v1/products/{other['id']}", json={"parent_product_id": sizes[0]["id"]}), 409, "invalid_variant", "parent_product_id")
        assert_problem(admin.delete(f"/v1/products/{tee['id']}"), 409, "product_has_variants")
        assert made(admin.get(f"/v1/products/{tee['id']}"), 200)["currency"] == "USD"

        # A mug can become a variant (and stop being one); an inactive variant is hidden from customers.
        assert made(admin.patch(f"/v1/products/{other['id']}", json={"parent_product_id": tee["id"]}), 200)["parent_product_id"] == tee["id"]
        assert made(admin.patch(f"/v1/products/{other['id']}", json={"parent_product_id": None}), 200)["parent_product_id"] is None
        made(admin.patch(f"/v1/products/{sizes[1]['id']}", json={"is_active": False}), 200)
        assert every(anyone, f"/v1/products/{tee['id']}/variants") == [sizes[0]["id"], sizes[2]["id"]]
        assert every(admin, f"/v1/products/{tee['id']}/variants", include_inactive="true") == [v["id"] for v in sizes]

        # What may be bought: an active variant, not the parent it belongs to, nothing inactive.
        with session_factory(engine)() as session:
            assert purchasable_product(session, sizes[2]["id"]).price_cents == 2700
            assert purchasable_product(session, other["id"]).id == other["id"]
            with pytest.raises(VariantRequired) as choose:
                purchasable_product(session, tee["id"])
            assert choose.value.status == 409 and choose.value.code == "variant_required"
            with pytest.raises(ProductInactive) as inactive:
                purchasable_product(session, sizes[1]["id"])
            assert inactive.value.status == 409 and inactive.value.code == "product_inactive"
            with pytest.raises(NotFound):
                purchasable_product(session, "prod_nope")

        made(admin.patch(f"/v1/products/{tee['id']}", json={"is_active": False}), 200)
        assert_problem(anyone.get(f"/v1/products/{sizes[0]['id']}"), 404, "not_found")
        assert_problem(anyone.get(f"/v1/products/{tee['id']}/variants"), 404, "not_found")
        with session_factory(engine)() as session:
            with pytest.raises(ProductInactive):
                purchasable_product(session, sizes[0]["id"])

        for variant in sizes:
            assert admin.delete(f"/v1/products/{variant['id']}").status_code == 204
        assert admin.delete(f"/v1/products/{tee['id']}").status_code == 204

        # A product that an order names is kept: deactivate it instead.
        with transaction(session_factory(engine)) as session:
            subscription = make.subscription(session, user=make.user(session, email=f"{new_id('s').lower()}@example.com"))
            used = subscription.product_id
        refused = assert_problem(admin.delete(f"/v1/products/{used}"), 409, "product_in_use")
        assert "deactivate" in refused["detail"]
        assert made(admin.get(f"/v1/products/{used}"), 200)["id"] == used


def test_lists_filter_and_page_in_a_stable_order(api: Api, admin_token: str) -> None:
    with api.client(admin_token) as admin, api.client() as anyone:
        top = made(admin.post("/v1/categories", json={"name": f"Filters {new_id('t')}"}))["id"]
        sub = made(admin.post("/v1/categories", json={"name": "Sub", "parent_id": top}))["id"]
        kinds = [
            ("physical", None, "USD", top), ("digital", None, "EUR", sub), ("subscription", "monthly", "USD", sub),
            ("service", "yearly", "JPY", top), ("physical", None, "EUR", sub), ("subscription", "yearly", "EUR", top),
            ("digital", None, "USD", top),
        ]
        ids = [
            made(admin.post("/v1/products", json={
                "name": f"Thing {n}", "product_type": kind, "price_cents": 100 * n, "currency": currency,
                "billing_interval": interval, "category_id": category,
            }))["id"]
            for n, (kind, interval, currency, category) in enumerate(kinds)
        ]
        made(admin.patch(f"/v1/products/{ids[6]}", json={"is_active": False}), 200)

        pages, after = [], None
        while True:
            params = {"category_id": top, "limit": 2, **({"starting_after": after} if after else {})}
            page = made(anyone.get("/v1/products", params=params), 200)
            pages.append([p["id"] for p in page["data"]])
            if not page["has_more"]:
                break
            after = pages[-1][-1]
        assert pages == [ids[0:2], ids[2:4], ids[4:6]], "the sub-category's products are in, the inactive one is not"
        assert every(admin, "/v1/products", category_id=top, include_inactive="true") == ids
        assert every(anyone, "/v1/products", category_id=sub) == [ids[1], ids[2], ids[4]]
        assert every(anyone, "/v1/products", category_id=top, product_type="physical") == [ids[0], ids[4]]
        assert every(anyone, "/v1/products", category_id=top, is_recurring="true") == [ids[2], ids[3], ids[5]]
        assert every(anyone, "/v1/products", category_id=top, is_recurring="false", currency="eur") == [ids[1], ids[4]]
        assert every(anyone, "/v1/products", category_id="cat_nope") == []
        assert_problem(anyone.get("/v1/products", params={"currency": "ABC"}), 422, "invalid_input", "currency")
        assert_problem(anyone.get("/v1/products", params={"product_type": "rental"}), 422, "invalid_input", "product_type")
        assert_problem(anyone.get("/v1/products", params={"limit": 0}), 422, "invalid_input", "limit")


def test_the_demo_catalog_reads_back_through_the_catalog_services(session: Session) -> None:
    load_demo(session)
    for product in session.scalars(sa.select(Product)):
        ProductOut.of(product)  # every demo row fits what the API promises
    for membership_type in session.scalars(sa.select(MembershipType)):
        MembershipTypeOut.of(membership_type)
    roots = tree(session, include_inactive=False)
    assert [node.category.name for node in roots] == ["Software", "Merchandise", "Learning"]
    assert [node.category.name for node in roots[0].children] == ["Plans", "Add-ons"]
    by_name = {p.name: p for p in session.scalars(sa.select(Product))}
    assert purchasable_product(session, by_name["Team plan (monthly)"].id).billing_interval == "monthly"
    assert purchasable_product(session, by_name["Billfold logo T-shirt, Navy, XL"].id).price_cents == 2700
    with pytest.raises(VariantRequired):
        purchasable_product(session, by_name["Billfold logo T-shirt"].id)
    with pytest.raises(ProductInactive):
        purchasable_product(session, by_name["Solo plan (monthly, retired)"].id)
