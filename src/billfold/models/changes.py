"""Which rows' changes move which change marks (``kit.db.changes``): what the entitlement door's
kept answers (``memberships.door``) are read from, by whose answers a change can alter.

- ``user:<id>``: a user's row (locked, deleted, made admin), their memberships, their payment
  methods (whether a trial renews), their organizations, their sessions revoked;
- ``org:<id>``: an organization's members and payment methods; an organization deleted moves
  everything (its orders and subscriptions lose it, ON DELETE SET NULL, in the database);
- ``sub:<id>``: a subscription's row and its billing row (status, periods, pause, dunning);
- ``key:<id>``: an API key revoked, its scopes changed, or deleted;
- a membership type changed or deleted, or an order's owner changed or the order deleted, moves
  everything.

A new subscription, session or API key, or a new membership type, changes no answer already
given (nothing refers to it yet) and moves nothing; a new membership moves its holder's mark.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from billfold.kit.db.changes import EVERYTHING, changed, history_values, watch
from billfold.models.accounts import Organization, OrganizationUser, User
from billfold.models.auth import ApiKey, AuthSession
from billfold.models.memberships import MembershipType, UserMembership
from billfold.models.orders import Order
from billfold.models.providers import PaymentMethod
from billfold.models.subscriptions import Subscription, SubscriptionBilling


def _named(prefix: str, row: Any, attribute: str) -> list[str]:
    return [f"{prefix}:{value}" for value in history_values(row, attribute)]


def _user(row: User, kind: str) -> Iterable[str]:
    return _named("user", row, "id")


def _organization(row: Organization, kind: str) -> Iterable[str]:
    return [EVERYTHING] if kind == "deleted" else _named("org", row, "id")


def _member(row: OrganizationUser, kind: str) -> Iterable[str]:
    return _named("org", row, "organization_id") + _named("user", row, "user_id")


def _membership(row: UserMembership, kind: str) -> Iterable[str]:
    return _named("user", row, "user_id")


def _type(row: MembershipType, kind: str) -> Iterable[str]:
    return () if kind == "new" else [EVERYTHING]


def _order(row: Order, kind: str) -> Iterable[str]:
    """An order's owner is what makes a membership it paid for an organization's."""
    if kind == "deleted" or (kind == "dirty" and changed(row, "organization_id", "user_id")):
        return [EVERYTHING]
    return ()


def _subscription(row: Subscription, kind: str) -> Iterable[str]:
    return () if kind == "new" else _named("sub", row, "id")


def _billing(row: SubscriptionBilling, kind: str) -> Iterable[str]:
    return _named("sub", row, "subscription_id")


def _method(row: PaymentMethod, kind: str) -> Iterable[str]:
    return _named("user", row, "user_id") + _named("org", row, "organization_id")


def _key(row: ApiKey, kind: str) -> Iterable[str]:
    if kind == "new" or (kind == "dirty" and not changed(row, "revoked_at", "scopes", "key_hash")):
        return ()
    return _named("key", row, "id")


def _session(row: AuthSession, kind: str) -> Iterable[str]:
    """A session's note of its last use moves its expiry later, which no kept answer minds."""
    if kind == "new":
        return ()
    if kind == "dirty":
        expires = sa.inspect(row).attrs["expires_at"].history
        shortened = bool(expires.added and expires.deleted and expires.added[0] < expires.deleted[0])
        if not shortened and not changed(row, "revoked_at", "user_id", "token_hash"):
            return ()
    return _named("user", row, "user_id")


for _model, _keys in (
    (User, _user), (Organization, _organization), (OrganizationUser, _member), (UserMembership, _membership),
    (MembershipType, _type), (Order, _order), (Subscription, _subscription), (SubscriptionBilling, _billing),
    (PaymentMethod, _method), (ApiKey, _key), (AuthSession, _session),
):
    watch(_model, _keys)
