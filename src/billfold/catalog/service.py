"""Products and their variants, and what may be bought.

Rules a product keeps, whatever the request left out:
- a ``subscription`` is recurring; a recurring product has a ``billing_interval`` (monthly or
  yearly); a one-time product has none and no trial days;
- a variant (``parent_product_id`` set) hangs under a product that is not itself a variant, and
  has its parent's ``product_type``, ``currency`` and billing (``is_recurring``,
  ``billing_interval``); a product with variants cannot change those, nor become a variant;
- a product that orders or subscriptions name, or that has variants, cannot be deleted:
  deactivate it instead (``is_active: false``), and it can no longer be bought.

Customers see active products (a variant only while its parent is active too); admins see all.
Services take a session and never commit; every change writes an audit row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from billfold.audit import audit
from billfold.catalog.categories import descendant_ids
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import BillfoldError, Conflict, InvalidInput, NotFound
from billfold.kit.ids import has_prefix
from billfold.models import OrderItem, Product, ProductCategory, Subscription

FIELDS = (
    "name", "description", "product_type", "is_recurring", "price_cents", "currency", "billing_interval",
    "trial_days", "image", "gallery", "category_id", "parent_product_id", "variations", "metadata_", "is_active",
)
# What a variant shares with its parent.
INHERITED = ("product_type", "currency", "is_recurring", "billing_interval")


class ProductInactive(Conflict):
    code = "product_inactive"
    title = "The product is not for sale"


class VariantRequired(Conflict):
    code = "variant_required"
    title = "Choose one of the product's variants"


class ProductHasVariants(Conflict):
    code = "product_has_variants"
    title = "The product has variants"


class InvalidVariant(Conflict):
    code = "invalid_variant"
    title = "Not a valid variant"


class ProductInUse(Conflict):
    code = "product_in_use"
    title = "Orders or subscriptions name the product"


def _problem(error: type[InvalidInput] | type[Conflict], field: str, message: str, detail: str | None = None) -> Exception:
    return error(detail or f"{field}: {message}", errors=[{"field": field, "message": message}])


def get_product(session: Session, product_id: str, *, visible_to_all: bool = False, lock: bool = False) -> Product:
    """The product; NotFound for an unknown id or, with ``visible_to_all``, one customers do not see."""
    product = None
    if has_prefix(product_id, "prod"):
        statement = sa.select(Product).where(Product.id == product_id)
        if lock:
            statement = for_update(statement, session).execution_options(populate_existing=True)
        product = session.scalars(statement).one_or_none()
    if product is None or (visible_to_all and not _shown(session, product)):
        raise NotFound(f"no product {product_id}")
    return product


def _shown(session: Session, product: Product) -> bool:
    if not product.is_active:
        return False
    if product.parent_product_id is None:
        return True
    parent = session.get(Product, product.parent_product_id)
    return parent is not None and parent.is_active


def purchasable_product(session: Session, product_id: str) -> Product:
    """The product, if it can be bought now: NotFound for an unknown id, ProductInactive (409
    ``product_inactive``) for an inactive product or a variant of one, VariantRequired (409
    ``variant_required``) for a product that is sold as one of its active variants."""
    [found] = purchasable_products(session, [product_id])
    if isinstance(found, BillfoldError):
        raise found
    return found


_VARIANT = aliased(Product)
_PRODUCTS = sa.select(  # each product, and whether it is sold as one of its active variants
    Product,
    sa.exists().where(_VARIANT.parent_product_id == Product.id, _VARIANT.is_active.is_(True)).label("sold_as_variants"),
).where(Product.id.in_(sa.bindparam("ids", expanding=True)))


def purchasable_products(session: Session, product_ids: Sequence[str]) -> list[Product | BillfoldError]:
    """``purchasable_product`` for each id, in order: the product, or the error it would raise
    (not raised, so the caller can name the item). One statement however many ids (two when a
    variant's parent is not among them)."""
    wanted = list(dict.fromkeys(i for i in product_ids if has_prefix(i, "prod")))
    found: dict[str, Product] = {}
    sold_as_variants: set[str] = set()
    if wanted:
        for product, has_variants in session.execute(_PRODUCTS, {"ids": wanted}):
            found[product.id] = product
            if has_variants:
                sold_as_variants.add(product.id)
        parents = sorted({p.parent_product_id for p in found.values() if p.parent_product_id} - set(found))
        if parents:
            found.update({p.id: p for p, _ in session.execute(_PRODUCTS, {"ids": parents})})
    answers: list[Product | BillfoldError] = []
    for product_id in product_ids:
        product = found.get(product_id) if has_prefix(product_id, "prod") else None
        answers.append(_purchasable(product_id, product, found, sold_as_variants))
    return answers


def _purchasable(product_id: str, product: Product | None, found: dict[str, Product], sold_as_variants: set[str]) -> Product | BillfoldError:
    if product is None:
        return NotFound(f"no product {product_id}")
    if not product.is_active:
        return ProductInactive(f"{product.name} ({product.id}) is not for sale", product_id=product.id)
    if product.parent_product_id is not None:
        parent = found.get(product.parent_product_id)
        if parent is None or not parent.is_active:
            return ProductInactive(
                f"{product.name} ({product.id}) is a variant of a product that is not for sale", product_id=product.id
            )
    if product.id in sold_as_variants:
        return VariantRequired(
            f"{product.name} ({product.id}) is sold as one of its variants; choose one", product_id=product.id
        )
    return product


def products(
    session: Session,
    *,
    include_inactive: bool,
    category_id: str | None = None,
    product_type: str | None = None,
    is_recurring: bool | None = None,
    currency: str | None = None,
) -> sa.Select[tuple[Product]]:
    """Products that are not variants, filtered; ``category_id`` takes in its sub-categories."""
    statement = sa.select(Product).where(Product.parent_product_id.is_(None))
    if not include_inactive:
        statement = statement.where(Product.is_active.is_(True))
    if category_id is not None:
        statement = statement.where(Product.category_id.in_(descendant_ids(session, category_id)))
    if product_type is not None:
        statement = statement.where(Product.product_type == product_type)
    if is_recurring is not None:
        statement = statement.where(Product.is_recurring.is_(is_recurring))
    if currency is not None:
        statement = statement.where(Product.currency == currency)
    return statement


def variants(product: Product, *, include_inactive: bool) -> sa.Select[tuple[Product]]:
    statement = sa.select(Product).where(Product.parent_product_id == product.id)
    if not include_inactive:
        statement = statement.where(Product.is_active.is_(True))
    return statement


def create_product(session: Session, fields: dict[str, Any]) -> Product:
    fields = _renamed(fields)
    if fields.get("is_recurring") is None:
        fields["is_recurring"] = fields["product_type"] == "subscription" or fields.get("billing_interval") is not None
    product = Product(**{f: v for f, v in fields.items() if f in FIELDS})
    _check_category(session, product.category_id)
    if product.parent_product_id is not None:
        _check_variant(session, product, _locked_parent(session, product.parent_product_id))
    _check_billing(product)
    session.add(product)
    session.flush()
    audit(
        session, "product", product.id, "created", product_type=product.product_type, price_cents=product.price_cents,
        currency=product.currency, parent_product_id=product.parent_product_id,
    )
    return product


def update_product(session: Session, product_id: str, changes: dict[str, Any]) -> Product:
    product = get_product(session, product_id, lock=True)
    with session.no_autoflush:  # the checks below query; nothing half-checked may reach the database
        _apply(session, product, _renamed(changes))
    return product


def _apply(session: Session, product: Product, changes: dict[str, Any]) -> None:
    changed = sorted(f for f, v in changes.items() if f in FIELDS and getattr(product, f) != v)
    if not changed:
        return
    for name in changed:
        setattr(product, name, changes[name])
    if "category_id" in changed:
        _check_category(session, product.category_id)
    if product.parent_product_id is not None and {"parent_product_id", *INHERITED} & set(changed):
        if product.parent_product_id == product.id:
            raise _problem(InvalidVariant, "parent_product_id", "a product cannot be a variant of itself")
        if "parent_product_id" in changed and _first_variant(session, product) is not None:
            raise _problem(
                ProductHasVariants, "parent_product_id", "a product with variants cannot become a variant",
                f"{product.id} has variants of its own, so it cannot become a variant",
            )
        _check_variant(session, product, _locked_parent(session, product.parent_product_id))
    _check_billing(product)
    moved = [f for f in INHERITED if f in changed]
    if moved and product.parent_product_id is None and _first_variant(session, product) is not None:
        raise _problem(
            ProductHasVariants, moved[0], "its variants share it",
            f"{product.id} has variants, which share its {', '.join(moved)}; change or delete them first",
        )
    session.flush()
    audit(session, "product", product.id, "updated", fields=[f.rstrip("_") for f in changed])


def delete_product(session: Session, product_id: str) -> None:
    """Delete a product nothing names; one with variants or on orders or subscriptions is kept."""
    product = get_product(session, product_id, lock=True)
    if _first_variant(session, product) is not None:
        raise ProductHasVariants(f"{product.id} has variants; delete them first, or deactivate the product")
    used = session.scalar(sa.select(sa.func.count()).select_from(OrderItem).where(OrderItem.product_id == product.id))
    used = (used or 0) + (
        session.scalar(sa.select(sa.func.count()).select_from(Subscription).where(Subscription.product_id == product.id))
        or 0
    )
    if used:
        raise ProductInUse(
            f"{product.id} is on {used} order item(s) or subscription(s), which keep what was bought; "
            "deactivate it instead (is_active: false)"
        )
    session.delete(product)
    try:
        with session.begin_nested():
            session.flush()
    except sa.exc.IntegrityError as error:  # an order named it in the meantime
        raise ProductInUse(f"{product.id} is in use; deactivate it instead (is_active: false)") from error
    audit(session, "product", product_id, "deleted", name=product.name)


def _renamed(fields: dict[str, Any]) -> dict[str, Any]:
    fields = dict(fields)
    if "metadata" in fields:
        fields["metadata_"] = fields.pop("metadata")
    return fields


def _first_variant(session: Session, product: Product) -> str | None:
    # A locking read: it sees variants committed since this transaction began, even on MariaDB.
    statement = sa.select(Product.id).where(Product.parent_product_id == product.id).limit(1)
    return session.scalars(for_update(statement, session)).first()


def _locked_parent(session: Session, parent_id: str) -> Product:
    try:
        return get_product(session, parent_id, lock=True)
    except NotFound:
        raise NotFound(
            f"no product {parent_id}", errors=[{"field": "parent_product_id", "message": "no such product"}]
        ) from None


def _check_category(session: Session, category_id: str | None) -> None:
    if category_id is None:
        return
    found = None
    if has_prefix(category_id, "cat"):
        statement = for_update(sa.select(ProductCategory.id).where(ProductCategory.id == category_id), session)
        found = session.scalars(statement).one_or_none()
    if found is None:
        raise NotFound(f"no category {category_id}", errors=[{"field": "category_id", "message": "no such category"}])


def _check_variant(session: Session, product: Product, parent: Product) -> None:
    if parent.parent_product_id is not None:
        raise _problem(
            InvalidVariant, "parent_product_id", "is itself a variant",
            f"{parent.id} is itself a variant; a variant hangs under a product that is not one",
        )
    for name in INHERITED:
        if getattr(product, name) != getattr(parent, name):
            raise _problem(
                InvalidVariant, name, f"must be the parent's ({getattr(parent, name)!r})",
                f"a variant has its parent's {name}: {getattr(parent, name)!r}, not {getattr(product, name)!r}",
            )


def _check_billing(product: Product) -> None:
    if product.product_type == "subscription" and not product.is_recurring:
        raise _problem(InvalidInput, "is_recurring", "a subscription is recurring")
    if product.is_recurring and product.billing_interval is None:
        raise _problem(InvalidInput, "billing_interval", "a recurring product needs monthly or yearly")
    if not product.is_recurring and product.billing_interval is not None:
        raise _problem(InvalidInput, "billing_interval", "a one-time product has no billing interval")
    if not product.is_recurring and product.trial_days:
        raise _problem(InvalidInput, "trial_days", "a one-time product has no trial")
