"""The catalog's HTTP routes under /v1: categories, products and their variants, membership types.

Anyone may read what is for sale; admins and API keys (with the ``write`` scope) change it and,
with ``include_inactive=true``, also see what is not for sale. See docs/catalog.md.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from billfold.accounts.auth import Admin, Anyone
from billfold.accounts.security import Principal
from billfold.catalog import categories, membership_types, service
from billfold.catalog.schemas import (
    CategoryDeleted,
    CategoryIn,
    CategoryNode,
    CategoryOut,
    CategoryTree,
    CategoryUpdate,
    Currency,
    MembershipTypeIn,
    MembershipTypeOut,
    MembershipTypeUpdate,
    ProductIn,
    ProductOut,
    ProductType,
    ProductUpdate,
)
from billfold.kit.http import DbSession, Page, Paging, paginate, problems
from billfold.kit.inputs import QueryBoolean
from billfold.models import MembershipType, Product

router = APIRouter(prefix="/v1", responses=problems(400, 401, 422))
category_routes = APIRouter(prefix="/categories", tags=["catalog"], responses=problems(404))
product_routes = APIRouter(prefix="/products", tags=["catalog"], responses=problems(404))
membership_routes = APIRouter(prefix="/membership-types", tags=["catalog"], responses=problems(404))

WRITE = problems(403)
NO_CONTENT: dict[str, Any] = {"status_code": status.HTTP_204_NO_CONTENT, "response_class": Response}
IncludeInactive = Annotated[
    bool,
    Query(description="Admins and API keys only (ignored for others): also list what is not for sale."),
    QueryBoolean,
]


def _sees_inactive(principal: Principal | None, asked: bool = True) -> bool:
    return asked and principal is not None and principal.is_admin


# Categories


def _node(node: categories.Node) -> CategoryNode:
    return CategoryNode(**CategoryOut.of(node.category).model_dump(), children=[_node(n) for n in node.children])


@category_routes.get("", response_model=CategoryTree)
def list_categories(principal: Anyone, session: DbSession, include_inactive: IncludeInactive = False) -> CategoryTree:
    """The whole category tree, each level ordered by sort_order, then name, then id. Not paged: a
    shop has tens or hundreds of categories. An inactive category hides everything under it."""
    roots = categories.tree(session, include_inactive=_sees_inactive(principal, include_inactive))
    return CategoryTree(data=[_node(n) for n in roots])


@category_routes.post("", status_code=status.HTTP_201_CREATED, response_model=CategoryOut, responses=WRITE)
def create_category(body: CategoryIn, principal: Admin, session: DbSession) -> CategoryOut:
    return CategoryOut.of(categories.create_category(session, body.model_dump()))


@category_routes.get("/{category_id}", response_model=CategoryOut)
def get_category(category_id: str, principal: Anyone, session: DbSession) -> CategoryOut:
    return CategoryOut.of(categories.get_category(session, category_id, visible_to_all=not _sees_inactive(principal)))


@category_routes.patch("/{category_id}", response_model=CategoryOut, responses={**WRITE, **problems(409)})
def update_category(category_id: str, body: CategoryUpdate, principal: Admin, session: DbSession) -> CategoryOut:
    """Change or move a category. Moving it under itself or anything inside it is refused (409
    `category_cycle`) and changes nothing."""
    return CategoryOut.of(categories.update_category(session, category_id, body.model_dump(exclude_unset=True)))


@category_routes.delete("/{category_id}", response_model=CategoryDeleted, responses=WRITE)
def delete_category(category_id: str, principal: Admin, session: DbSession) -> CategoryDeleted:
    """Delete a category: its sub-categories move up to its parent, its products stay, without a category."""
    deletion = categories.delete_category(session, category_id)
    return CategoryDeleted(
        id=deletion.id, children_moved_to=deletion.children_moved_to, children_moved=deletion.children_moved,
        products_uncategorised=deletion.products_uncategorised,
    )


# Products


@product_routes.get("", response_model=Page[ProductOut])
def list_products(
    principal: Anyone,
    session: DbSession,
    paging: Paging,
    include_inactive: IncludeInactive = False,
    category_id: Annotated[
        str | None, Query(max_length=255, description="In this category or any under it.")
    ] = None,
    product_type: ProductType | None = None,
    is_recurring: Annotated[bool | None, Query(), QueryBoolean] = None,
    currency: Annotated[Currency | None, Query()] = None,
) -> Page[ProductOut]:
    """Products that are not variants (those are under `/v1/products/{id}/variants`), oldest first."""
    statement = service.products(
        session, include_inactive=_sees_inactive(principal, include_inactive), category_id=category_id,
        product_type=product_type, is_recurring=is_recurring, currency=currency,
    )
    return paginate(session, statement, Product.id, paging, ProductOut.of)


@product_routes.post("", status_code=status.HTTP_201_CREATED, response_model=ProductOut, responses={**WRITE, **problems(409)})
def create_product(body: ProductIn, principal: Admin, session: DbSession) -> ProductOut:
    """Create a product, or a variant of one with `parent_product_id`."""
    return ProductOut.of(service.create_product(session, body.model_dump()))


@product_routes.get("/{product_id}", response_model=ProductOut)
def get_product(product_id: str, principal: Anyone, session: DbSession) -> ProductOut:
    return ProductOut.of(service.get_product(session, product_id, visible_to_all=not _sees_inactive(principal)))


@product_routes.get("/{product_id}/variants", response_model=Page[ProductOut])
def list_variants(
    product_id: str, principal: Anyone, session: DbSession, paging: Paging, include_inactive: IncludeInactive = False
) -> Page[ProductOut]:
    """The product's variants, oldest first."""
    admin = _sees_inactive(principal)
    product = service.get_product(session, product_id, visible_to_all=not admin)
    statement = service.variants(product, include_inactive=admin and include_inactive)
    return paginate(session, statement, Product.id, paging, ProductOut.of)


@product_routes.patch("/{product_id}", response_model=ProductOut, responses={**WRITE, **problems(409)})
def update_product(product_id: str, body: ProductUpdate, principal: Admin, session: DbSession) -> ProductOut:
    return ProductOut.of(service.update_product(session, product_id, body.model_dump(exclude_unset=True)))


@product_routes.delete("/{product_id}", **NO_CONTENT, responses={**WRITE, **problems(409)})
def delete_product(product_id: str, principal: Admin, session: DbSession) -> Response:
    """Delete a product that no order or subscription names and that has no variants (409
    otherwise: deactivate it instead)."""
    service.delete_product(session, product_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# Membership types


@membership_routes.get("", response_model=Page[MembershipTypeOut])
def list_membership_types(
    principal: Anyone, session: DbSession, paging: Paging, include_inactive: IncludeInactive = False
) -> Page[MembershipTypeOut]:
    statement = membership_types.membership_types(include_inactive=_sees_inactive(principal, include_inactive))
    return paginate(session, statement, MembershipType.id, paging, MembershipTypeOut.of)


@membership_routes.post("", status_code=status.HTTP_201_CREATED, response_model=MembershipTypeOut, responses=WRITE)
def create_membership_type(body: MembershipTypeIn, principal: Admin, session: DbSession) -> MembershipTypeOut:
    return MembershipTypeOut.of(membership_types.create_membership_type(session, body.model_dump()))


@membership_routes.get("/{membership_type_id}", response_model=MembershipTypeOut)
def get_membership_type(membership_type_id: str, principal: Anyone, session: DbSession) -> MembershipTypeOut:
    return MembershipTypeOut.of(
        membership_types.get_membership_type(session, membership_type_id, visible_to_all=not _sees_inactive(principal))
    )


@membership_routes.patch("/{membership_type_id}", response_model=MembershipTypeOut, responses=WRITE)
def update_membership_type(
    membership_type_id: str, body: MembershipTypeUpdate, principal: Admin, session: DbSession
) -> MembershipTypeOut:
    changes = body.model_dump(exclude_unset=True)
    return MembershipTypeOut.of(membership_types.update_membership_type(session, membership_type_id, changes))


@membership_routes.delete("/{membership_type_id}", **NO_CONTENT, responses={**WRITE, **problems(409)})
def delete_membership_type(membership_type_id: str, principal: Admin, session: DbSession) -> Response:
    """Delete a membership type no membership is of (409 otherwise: deactivate it instead)."""
    membership_types.delete_membership_type(session, membership_type_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


router.include_router(category_routes)
router.include_router(product_routes)
router.include_router(membership_routes)
