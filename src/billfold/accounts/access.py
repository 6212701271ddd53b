"""Who may see or pay for what (docs/permissions.md), written once.

A customer is a user or an organization: an ``Owner``. Every row that belongs to a customer
(orders, subscriptions, invoices, addresses, payment methods, provider customers) has a
``user_id`` and an ``organization_id``; ``owner_of(row)`` is its owner, and ``owner.owns(Model)``
the condition that picks the owner's rows (a user's own rows are those with no organization).

Reading: the shop's admins and API keys (``read``; ``write`` to change) see every row; a user sees
their own and those of every organization they belong to, whatever their role
(``readable``). Changing or paying (an order, a subscription) needs the right to buy for the
customer: the user themselves, an organization's owners and billing members
(``Permission.BILLING``), or the shop's admins and write API keys (``require_payer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute, Session

from billfold.accounts.organizations import service as organizations
from billfold.accounts.organizations.service import Permission
from billfold.accounts.security import Principal
from billfold.kit.db import columns_of
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import Forbidden, NotFound
from billfold.kit.ids import has_prefix
from billfold.models import Organization, OrganizationUser, User


class Owned(Protocol):
    """A row that belongs to a customer."""

    user_id: Any
    organization_id: Any


Model = TypeVar("Model")


@dataclass(frozen=True)
class Owner:
    """A customer: a user, or an organization."""

    user_id: str | None = None
    organization_id: str | None = None

    @classmethod
    def user(cls, user_id: str) -> Owner:
        return cls(user_id=user_id)

    @classmethod
    def organization(cls, organization_id: str) -> Owner:
        return cls(organization_id=organization_id)

    @property
    def id(self) -> str:
        """The organization's id, or the user's."""
        return self.organization_id or self.user_id or ""

    def data(self) -> dict[str, str]:
        """The owner as audit data: ``{"organization_id": …}`` or ``{"user_id": …}``."""
        return {"organization_id": self.organization_id} if self.organization_id else {"user_id": self.user_id or ""}

    def owns(self, model: type[Any]) -> sa.ColumnElement[bool]:
        """The owner's rows of ``model``: an organization's, or a user's own (no organization)."""
        user_id: InstrumentedAttribute[Any] = model.user_id
        organization_id: InstrumentedAttribute[Any] = model.organization_id
        if self.organization_id is not None:
            return organization_id == self.organization_id
        return sa.and_(user_id == self.user_id, organization_id.is_(None))


def owner_of(row: Owned) -> Owner:
    """Whose ``row`` is: its organization's when it has one, else its user's."""
    if row.organization_id:
        return Owner.organization(row.organization_id)
    return Owner.user(row.user_id or "")


def me(principal: Principal) -> Owner:
    """The signed-in user as a customer."""
    assert principal.user is not None
    return Owner.user(principal.user.id)


def user_owner(session: Session, user_id: str) -> Owner:
    """A user, named by an admin, as a customer; NotFound if there is no such user."""
    if not has_prefix(user_id, "usr") or columns_of(session, User, user_id, User.id) is None:
        raise NotFound(f"no user {user_id}")
    return Owner.user(user_id)


def organization_owner(
    session: Session, principal: Principal, organization_id: str, *, change: bool, lock: bool = False
) -> Owner:
    """An organization as a customer: its members look, its owners and billing members
    (``Permission.BILLING``) change and buy. NotFound for an organization the principal is not
    in; ``lock`` holds its row until the transaction ends."""
    access = organizations.access(session, principal, organization_id, lock=lock)
    access.require(Permission.BILLING if change else Permission.VIEW)
    return Owner.organization(access.organization.id)


def lock_owner(session: Session, owner: Owner) -> User | Organization:
    """The owner's row, locked until the transaction ends, so that changes to one owner's
    addresses, payment methods and provider customers happen one at a time. NotFound if the owner
    does not exist."""
    model: type[User] | type[Organization] = Organization if owner.organization_id is not None else User
    statement = sa.select(model).where(model.id == owner.id)
    found = session.scalars(for_update(statement, session)).one_or_none()
    if found is None:
        raise NotFound(f"no {'organization' if model is Organization else 'user'} {owner.id}")
    return found


def readable(principal: Principal, model: type[Model], *, change: bool = False) -> sa.Select[tuple[Model]]:
    """The rows of ``model`` (a table with ``user_id`` and ``organization_id``) the principal may
    see: every one for the shop's admins and API keys (which need ``read``, or ``write`` when
    ``change``); a user's own and their organizations' for a user."""
    if principal.is_admin:
        principal.require_scope("write" if change else "read")
        return sa.select(model)
    assert principal.user is not None
    theirs = sa.select(OrganizationUser.organization_id).where(OrganizationUser.user_id == principal.user.id)
    owned: Any = model
    return sa.select(model).where(sa.or_(owned.user_id == principal.user.id, owned.organization_id.in_(theirs)))


def require_payer(session: Session, principal: Principal, row: Owned, refusal: str) -> None:
    """Changing or paying for ``row`` needs the right to buy for its customer (seeing it is not
    enough); ``refusal`` is the Forbidden's message for a user who is not the customer."""
    if principal.is_admin:
        principal.require_scope("write")
        return
    if row.organization_id is not None:
        organizations.access(session, principal, row.organization_id).require(Permission.BILLING)
    elif principal.user is None or row.user_id != principal.user.id:
        raise Forbidden(refusal)
