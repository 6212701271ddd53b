"""The demo shop: what a person opening a fresh Billfold would check, on each database, and the
``billfold demo`` command as an operator runs it."""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.demo.shop import is_empty, load_demo
from billfold.kit.db import create_engine
from billfold.kit.errors import Conflict
from billfold.kit.money import Money, exponent, is_currency
from billfold.models import (
    Address,
    Base,
    MembershipType,
    Organization,
    OrganizationUser,
    PaymentProvider,
    Product,
    ProductCategory,
    User,
)
from billfold.models.accounts import ORGANIZATION_ROLES
from billfold.models.catalog import BILLING_INTERVALS, PRODUCT_TYPES
from billfold.models.memberships import DURATION_TYPES
from tests import cli

E164 = re.compile(r"\+[1-9][0-9]{6,14}")
CUSTOMER_TYPES = ("individual", "business")

# What each key of load_demo's summary counts.
COUNTED: dict[str, sa.Select[Any]] = {
    "products": sa.select(sa.func.count()).select_from(Product),
    "product categories": sa.select(sa.func.count()).select_from(ProductCategory),
    "membership types": sa.select(sa.func.count()).select_from(MembershipType),
    "customers": sa.select(sa.func.count()).select_from(User).where(User.user_type.in_(CUSTOMER_TYPES)),
    "admin users": sa.select(sa.func.count()).select_from(User).where(User.user_type == "admin"),
    "organizations": sa.select(sa.func.count()).select_from(Organization),
    "organization members": sa.select(sa.func.count()).select_from(OrganizationUser),
    "addresses": sa.select(sa.func.count()).select_from(Address),
    "payment providers": sa.select(sa.func.count()).select_from(PaymentProvider),
}


@pytest.fixture
def demo(session: Session) -> dict[str, int]:
    assert is_empty(session)
    return load_demo(session)


def test_the_counts_it_reports_are_the_rows_it_wrote(session: Session, demo: dict[str, int]) -> None:
    assert set(demo) == set(COUNTED)
    assert {what: session.scalar(query) for what, query in COUNTED.items()} == demo
    assert all(n > 0 for n in demo.values())
    users = session.scalar(sa.select(sa.func.count()).select_from(User))
    assert users == demo["customers"] + demo["admin users"], "every user is either a customer or an admin"


def test_afterwards_the_database_is_not_empty_and_a_second_load_is_refused(
    session: Session, demo: dict[str, int]
) -> None:
    assert not is_empty(session)
    with pytest.raises(Conflict, match="already has data"):
        load_demo(session)
    assert {what: session.scalar(query) for what, query in COUNTED.items()} == demo


@pytest.mark.parametrize("model", [User, Product, ProductCategory, MembershipType, PaymentProvider])
def test_any_setup_row_makes_the_database_not_empty(session: Session, model: type[Base]) -> None:
    # An organization cannot exist without its owner, a user, so users stand for organizations here.
    row = {
        User: lambda: User(name="Ada", last_name="Lovelace", email="ada@example.com", user_type="individual"),
        Product: lambda: Product(name="Notebook", product_type="physical", price_cents=900),
        ProductCategory: lambda: ProductCategory(name="Stationery"),
        MembershipType: lambda: MembershipType(name="Friends", duration_type="lifetime", price_cents=0),
        PaymentProvider: lambda: PaymentProvider(id="stripe", display_name="Stripe"),
    }[model]()
    assert is_empty(session)
    session.add(row)
    session.flush()
    assert not is_empty(session)


def test_the_catalog_has_every_kind_of_product(session: Session, demo: dict[str, int]) -> None:
    products = session.scalars(sa.select(Product)).all()
    assert {p.product_type for p in products} == set(PRODUCT_TYPES)
    plans = [p for p in products if p.product_type == "subscription"]
    assert all(p.is_recurring and p.billing_interval in BILLING_INTERVALS for p in plans)
    assert {p.billing_interval for p in plans} == set(BILLING_INTERVALS)
    assert any(p.trial_days for p in plans) and any(not p.trial_days for p in plans)
    one_time = [p for p in products if p.product_type != "subscription"]
    assert not any(p.is_recurring or p.billing_interval for p in one_time)
    assert [p.name for p in products if not p.is_active] != [], "a retired product is kept, inactive"
    assert {"USD", "EUR", "JPY"} <= {p.currency for p in products}
    for product in products:
        assert is_currency(product.currency) and product.price_cents > 0, product.name
        assert product.image and product.image.startswith("https://"), product.name
        assert product.category_id is not None, product.name
        assert all(url.startswith("https://") for url in product.gallery or []), product.name


def test_a_jpy_price_is_whole_yen(session: Session, demo: dict[str, int]) -> None:
    assert exponent("JPY") == 0
    yen = session.scalars(sa.select(Product).where(Product.currency == "JPY")).all()
    assert yen
    for product in yen:
        price = Money(product.price_cents, "JPY")
        assert price.to_decimal() == Decimal(product.price_cents), "a yen amount has no minor unit"
        assert 100 <= product.price_cents <= 100_000, f"{product.name}: {price} is not a plausible yen price"
    starter = next(p for p in yen if p.name.startswith("Starter plan"))
    assert Money(starter.price_cents, "JPY").format("en_US") == "¥1,200"


def test_variants_point_at_their_parent_and_match_its_options(session: Session, demo: dict[str, int]) -> None:
    products = {p.id: p for p in session.scalars(sa.select(Product))}
    variants = [p for p in products.values() if p.parent_product_id]
    assert variants
    by_parent: dict[str, list[Product]] = {}
    for variant in variants:
        parent = products[variant.parent_product_id]
        assert parent.parent_product_id is None, "a variant's parent is not itself a variant"
        by_parent.setdefault(parent.id, []).append(variant)
    for parent_id, children in by_parent.items():
        parent = products[parent_id]
        options = {v["name"]: v["options"] for v in parent.variations}
        assert set(options) == {"size", "colour"}
        combinations = {(c.metadata_["size"], c.metadata_["colour"]) for c in children}
        assert combinations == {(s, c) for s in options["size"] for c in options["colour"]}
        assert len(combinations) == len(children), "one variant per combination"
        for child in children:
            assert child.product_type == parent.product_type and child.currency == parent.currency
            assert child.category_id == parent.category_id
        assert len({c.price_cents for c in children}) > 1, "variants carry their own prices"


def test_categories_form_a_sorted_tree(session: Session, demo: dict[str, int]) -> None:
    categories = session.scalars(sa.select(ProductCategory)).all()
    roots = [c for c in categories if c.parent_id is None]
    assert len(roots) >= 2
    ids = {c.id for c in categories}
    for category in categories:
        assert category.parent_id is None or category.parent_id in ids
    for parent_id in {c.parent_id for c in categories}:
        orders = [c.sort_order for c in categories if c.parent_id == parent_id]
        assert len(set(orders)) == len(orders), "siblings have distinct sort orders"
    assert all(any(c.parent_id == root.id for c in categories) for root in roots), "every root has children"


def test_membership_types_cover_each_duration(session: Session, demo: dict[str, int]) -> None:
    types = session.scalars(sa.select(MembershipType)).all()
    assert {t.duration_type for t in types} == set(DURATION_TYPES)
    for membership in types:
        assert (membership.duration_days is None) == (membership.duration_type == "lifetime"), membership.name
        assert isinstance(membership.features, list) and membership.features, membership.name
        assert all(isinstance(feature, str) for feature in membership.features)


def test_people_look_like_real_customers(session: Session, demo: dict[str, int]) -> None:
    users = session.scalars(sa.select(User)).all()
    assert Counter(u.user_type for u in users)["admin"] == 1
    assert {"individual", "business"} <= {u.user_type for u in users}
    for user in users:
        assert user.email.rsplit("@", 1)[1] in ("example.com", "example.org"), user.email
        assert user.phone and E164.fullmatch(user.phone), user.phone
        assert user.password_hash is None and user.salt is None, "demo users have no passwords"
    assert sum(u.is_verified for u in users) > len(users) / 2
    countries = {a.country for a in session.scalars(sa.select(Address).where(Address.user_id.is_not(None)))}
    assert len(countries) >= 4


def test_organizations_have_their_owner_and_members(session: Session, demo: dict[str, int]) -> None:
    organizations = session.scalars(sa.select(Organization)).all()
    assert 2 <= len(organizations) <= 3
    roles_seen: set[str] = set()
    for organization in organizations:
        rows = session.scalars(
            sa.select(OrganizationUser).where(OrganizationUser.organization_id == organization.id)
        ).all()
        roles = {row.user_id: row.role for row in rows}
        assert roles.get(organization.owner_user_id) == "owner", organization.name
        assert list(roles.values()).count("owner") == 1, organization.name
        assert set(roles.values()) <= set(ORGANIZATION_ROLES)
        roles_seen |= set(roles.values())
        assert organization.business_email and organization.business_phone and organization.tax_id
        assert E164.fullmatch(organization.business_phone)
        assert session.get(User, organization.owner_user_id).user_type == "business"
    assert roles_seen == set(ORGANIZATION_ROLES)
    assert any(re.fullmatch(r"DE[0-9]{9}", o.tax_id) for o in organizations), "a German VAT id"


def test_each_owner_has_one_default_address_per_type(session: Session, demo: dict[str, int]) -> None:
    addresses = session.scalars(sa.select(Address)).all()
    defaults: Counter[tuple[str | None, str | None, str]] = Counter()
    kinds: set[tuple[str | None, str | None, str]] = set()
    for address in addresses:
        assert (address.user_id is None) != (address.organization_id is None), "one owner per address"
        assert address.address_type in ("billing", "shipping")
        assert re.fullmatch(r"[A-Z]{2}", address.country) and address.postal_code
        owner_kind = (address.user_id, address.organization_id, address.address_type)
        kinds.add(owner_kind)
        defaults[owner_kind] += address.is_default
    assert all(defaults[kind] == 1 for kind in kinds), "exactly one default per owner and address type"
    per_kind = Counter((a.user_id, a.organization_id, a.address_type) for a in addresses)
    assert any(n > 1 for n in per_kind.values()), "some owner has a second, non-default address"
    organizations = session.scalars(sa.select(Organization.id)).all()
    for organization_id in organizations:
        assert {k[2] for k in kinds if k[1] == organization_id} == {"billing", "shipping"}


def test_the_same_data_every_time(session: Session) -> None:
    """Two loads differ only in ids and timestamps."""
    snapshots = []
    for _ in range(2):
        savepoint = session.begin_nested()
        load_demo(session)
        snapshots.append(_snapshot(session))
        savepoint.rollback()
        assert is_empty(session)
    assert snapshots[0] == snapshots[1]


def _snapshot(session: Session) -> dict[str, list[str]]:
    """Every demo table's rows, ids replaced by what the row names (an email, a name)."""
    labels: dict[str, str] = {}
    for model, column in ((User, User.email), (Organization, Organization.name), (Product, Product.name),
                          (ProductCategory, ProductCategory.name), (PaymentProvider, PaymentProvider.id),
                          (MembershipType, MembershipType.name)):
        pairs = session.execute(sa.select(model.id, column))
        labels.update({row_id: f"<{label}>" for row_id, label in pairs})
    snapshot = {}
    for model in (User, Organization, OrganizationUser, Address, Product, ProductCategory, MembershipType,
                  PaymentProvider):
        table = model.__table__
        columns = [c for c in table.columns if c.name not in ("id", "created_at", "updated_at")]
        rows = session.execute(sa.select(*columns)).all()
        snapshot[table.name] = sorted(repr([_labelled(v, labels) for v in row]) for row in rows)
    return snapshot


def _labelled(value: Any, labels: dict[str, str]) -> Any:
    """An id replaced by its label, also inside JSON (a product's metadata names its membership type)."""
    if isinstance(value, str):
        return labels.get(value, value)
    if isinstance(value, dict):
        return {k: _labelled(v, labels) for k, v in value.items()}
    return value


# The command, as an operator runs it (SQLite only: the command's behaviour is the same everywhere).


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shop.db'}"


def _everything(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return {
                table.name: sorted(map(tuple, connection.execute(sa.select(table))), key=repr)
                for table in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def _printed_counts(stdout: str) -> dict[str, int]:
    text = " ".join(stdout.split())
    assert text.startswith("Demo data loaded: "), stdout
    return {what: int(n) for what, n in re.findall(r"([a-z][a-z ]*): (\d+)", text.removeprefix("Demo data loaded: "))}


def test_billfold_demo_loads_once_and_then_refuses_politely(tmp_path: Path) -> None:
    url = _url(tmp_path)
    assert cli.run("db", "upgrade", database_url=url, cwd=tmp_path).code == 0

    first = cli.run("demo", database_url=url, cwd=tmp_path, process=True)
    assert first.code == 0, first
    counts = _printed_counts(first.stdout)
    assert set(counts) == set(COUNTED)
    data = _everything(url)
    assert counts["products"] == len(data["products"]) > 0
    assert counts["organizations"] == len(data["organizations"])
    assert counts["customers"] + counts["admin users"] == len(data["users"])
    assert counts["addresses"] == len(data["addresses"])

    again = cli.run("demo", database_url=url, cwd=tmp_path)
    cli.assert_one_line_error(again, "already has data")
    assert again.stdout == ""
    assert _everything(url) == data, "a refused demo changes nothing"

    if_empty = cli.run("demo", "--if-empty", database_url=url, cwd=tmp_path)
    assert if_empty.code == 0, if_empty
    assert "already has data" in if_empty.stdout and "not loaded" in if_empty.stdout
    assert if_empty.stderr == ""
    assert _everything(url) == data


def test_billfold_demo_if_empty_loads_an_empty_database(tmp_path: Path) -> None:
    url = _url(tmp_path)
    assert cli.run("db", "upgrade", database_url=url, cwd=tmp_path).code == 0
    result = cli.run("demo", "--if-empty", database_url=url, cwd=tmp_path)
    assert result.code == 0, result
    assert _printed_counts(result.stdout)["products"] == len(_everything(url)["products"]) > 0


def test_billfold_demo_on_an_unmigrated_database_says_to_upgrade(tmp_path: Path) -> None:
    result = cli.run("demo", database_url=_url(tmp_path), cwd=tmp_path)
    cli.assert_one_line_error(result, "billfold db upgrade")
    assert result.stdout == ""
