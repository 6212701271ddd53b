"""May this user use feature X now? Answered from memberships and their add-ons, in one query.

What a membership grants at an instant ``at`` is computed from its dates and, when it follows a
subscription, from the subscription's row, never from the stored status alone, so the answer is
right before the ``memberships.expire`` sweep has caught up (see ``standing``):

- ``pending`` and ``cancelled`` memberships grant nothing;
- a membership grants from ``start_date`` (inclusive) to its end (exclusive): a fixed membership
  ending at T grants at T - 1 s and not at T; a lifetime membership (``end_date`` NULL) never ends;
- a membership that follows a subscription grants while the subscription is ``trialing``,
  ``active`` or ``past_due`` and ``at < paid period's end + grace`` (the dunning grace,
  ``BILLFOLD_MEMBERSHIP_GRACE_DAYS``); a subscription that will not renew (cancelled at period
  end, paused, or a trial with no payment method to charge: ``renews``) gets no grace, as once
  it is ``cancelled``: it grants until the paid period's end. The paid period's end is ``current_period_end``, except
  while an invoice of the subscription is outstanding (dunning, or cancelled by it): a renewal
  moves the period on before it is paid, so the period paid for ended at ``current_period_start``
  (``paid_until``);
- an add-on grants its feature while its membership grants and, if it has ``expires_at``, while
  ``at < expires_at``.

Whose memberships count: the user's own (``user_id``, bought by or granted to them, not for an
organization) always; and, when ``organization_id`` is given and the user is a member of that
organization (any role), the organization's (those whose order or subscription belongs to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.kit import clock
from billfold.kit.errors import BillfoldError
from billfold.models import (
    MembershipType, Order, OrganizationUser, PaymentMethod, Subscription, SubscriptionBilling, UserMembership,
)

LIVE_SUBSCRIPTION = ("trialing", "active", "past_due")


@dataclass(frozen=True)
class Standing:
    """Where a membership stands at an instant: its status as it should be stored, whether it
    grants, until when (exclusive; None: for good), and the end_date to store."""

    status: str
    grants: bool
    until: datetime | None
    end_date: datetime | None


def standing(
    *,
    status: str,
    start_date: datetime,
    end_date: datetime | None,
    subscription_status: str | None,
    period_end: datetime | None,
    at: datetime,
    grace: timedelta,
    renews: bool = True,
) -> Standing:
    """``renews``: whether the subscription followed will try to charge another period (dunning,
    and so the grace, exists only then)."""
    if status in ("cancelled", "pending"):
        return Standing(status, False, end_date, end_date)
    begun = start_date <= at
    if subscription_status is not None and period_end is not None:
        if subscription_status == "cancelled":
            if at < period_end:
                return Standing("active", begun, period_end, period_end)
            return Standing("cancelled", False, period_end, period_end)
        until = _plus(period_end, grace) if renews else period_end
        if at < until:
            return Standing("active", begun, until, period_end)
        return Standing("expired", False, until, period_end)
    if end_date is not None and at >= end_date:
        return Standing("expired", False, end_date, end_date)
    return Standing("active", begun, end_date, end_date)


def paid_until(period_start: datetime, period_end: datetime, outstanding_invoice_id: str | None) -> datetime:
    """The end of the period a subscription has paid for: its current period's end, or, while the
    invoice of that period is outstanding, its start (where the period paid for ended)."""
    return period_start if outstanding_invoice_id is not None else period_end


def paid_until_column(subscriptions: Any, billing: Any) -> Any:
    """``paid_until`` in SQL, over ``subscriptions`` outer-joined to ``subscription_billing``."""
    return sa.case(
        (billing.c.outstanding_invoice_id.is_not(None), subscriptions.c.current_period_start),
        else_=subscriptions.c.current_period_end,
    )


def renews_column(subscriptions: Any, billing: Any) -> Any:
    """Whether a subscription will charge another period, in SQL (over ``subscriptions``
    outer-joined to ``subscription_billing``): not cancelled at period end, not paused, and, in a
    trial, with a method to charge at its end (its own, or its owner's default, as
    ``subscriptions.charging.method_to_charge`` picks). A trial that has none is cancelled when it ends."""
    pm = PaymentMethod.__table__
    owned = sa.or_(
        sa.and_(subscriptions.c.organization_id.is_not(None), pm.c.organization_id == subscriptions.c.organization_id),
        sa.and_(subscriptions.c.organization_id.is_(None), pm.c.user_id == subscriptions.c.user_id, pm.c.organization_id.is_(None)),
    )
    chargeable = sa.exists().where(owned, sa.or_(pm.c.id == subscriptions.c.payment_method_id, pm.c.is_default == sa.true()))
    return sa.and_(
        subscriptions.c.cancel_at_period_end == sa.false(),
        billing.c.paused_at.is_(None),
        sa.or_(subscriptions.c.status != "trialing", chargeable),
    )


def _plus(moment: datetime, delta: timedelta) -> datetime:
    try:
        return moment + delta
    except OverflowError:
        return datetime.max.replace(tzinfo=clock.UTC)


def features_of(value: Any) -> set[str]:
    """The feature names in a membership type's ``features``: strings, or objects with a
    ``feature`` (or ``key``) field."""
    found: set[str] = set()
    for item in value if isinstance(value, list) else []:
        if isinstance(item, str):
            found.add(item)
        elif isinstance(item, dict):
            name = item.get("feature", item.get("key"))
            if isinstance(name, str):
                found.add(name)
    return found


def addon_until(addon: Any, at: datetime) -> tuple[bool, datetime | None]:
    """Whether an add-on (``{"feature", "expires_at", "source"}``) is in force at ``at``, and until when."""
    expires = addon.get("expires_at") if isinstance(addon, dict) else None
    if expires is None:
        return True, None
    try:
        moment = clock.ensure_utc(datetime.fromisoformat(str(expires).replace("Z", "+00:00")))
    except (ValueError, TypeError, BillfoldError):  # a malformed expiry grants nothing
        return False, None
    return at < moment, moment


@dataclass(frozen=True)
class Entitlement:
    """The answer: ``allowed``; the membership that allows it and until when (exclusive; None:
    for good); ``via`` ``membership`` (its type includes the feature) or ``addon``; and the
    organization whose membership it is, if it is one."""

    feature: str
    allowed: bool
    membership_id: str | None = None
    until: datetime | None = None
    via: str | None = None
    organization_id: str | None = None


_um = UserMembership.__table__
_mt = MembershipType.__table__
_sub = Subscription.__table__
_sb = SubscriptionBilling.__table__
_ord = Order.__table__
_ou = OrganizationUser.__table__

_COLUMNS = (
    _um.c.id, _um.c.status, _um.c.start_date, _um.c.end_date, _um.c.addons, _mt.c.features,
    _sub.c.status.label("subscription_status"), paid_until_column(_sub, _sb).label("paid_until"),
    sa.func.coalesce(_ord.c.organization_id, _sub.c.organization_id).label("organization_id"),
    sa.case((_sub.c.id.is_(None), None), (renews_column(_sub, _sb), 1), else_=0).label("renews"),
    _um.c.subscription_id, _sub.c.user_id.label("subscription_user_id"),
    _sub.c.organization_id.label("subscription_organization_id"),
)


def _joined(start: Any) -> Any:
    return (
        start.join(_mt, _mt.c.id == _um.c.membership_type_id)
        .outerjoin(_sub, _sub.c.id == _um.c.subscription_id)
        .outerjoin(_sb, _sb.c.subscription_id == _um.c.subscription_id)
        .outerjoin(_ord, _ord.c.id == _um.c.order_id)
    )


def candidates(user_id: str, organization_id: str | None) -> sa.Select[Any] | sa.CompoundSelect:
    """The memberships that may grant something to the user: by ``idx_user_memberships_user_id``,
    and for an organization through its members (the unique index on organization_users) to their
    rows, then the orders and subscriptions by primary key. (The statements are built once, with
    bound parameters; pass ``candidate_parameters`` with them.)"""
    return _OWN if organization_id is None else _WITH_ORGANIZATION


def candidate_parameters(user_id: str, organization_id: str | None) -> dict[str, str]:
    return {"user_id": user_id} if organization_id is None else {"user_id": user_id, "organization_id": organization_id}


def _candidates() -> tuple[sa.Select[Any], sa.CompoundSelect]:
    # No condition on status here: it would tempt a planner onto idx_user_memberships_status,
    # which nearly every row matches; a user has few rows, and standing() drops the rest.
    # Built once: building this statement and its cache key cost more CPU than running it.
    user_id, organization_id = sa.bindparam("user_id", type_=sa.String), sa.bindparam("organization_id", type_=sa.String)
    own = sa.select(*_COLUMNS).select_from(_joined(_um)).where(_um.c.user_id == user_id)
    me = _ou.alias("me")
    mates = _ou.alias("mates")
    theirs = (
        sa.select(*_COLUMNS)
        .select_from(_joined(me.join(mates, mates.c.organization_id == me.c.organization_id).join(_um, _um.c.user_id == mates.c.user_id)))
        .where(
            me.c.organization_id == organization_id,
            me.c.user_id == user_id,
            sa.or_(_ord.c.organization_id == organization_id, _sub.c.organization_id == organization_id),
        )
    )
    return own, sa.union_all(own, theirs)


_OWN, _WITH_ORGANIZATION = _candidates()


def entitlement(
    session: Session,
    *,
    user_id: str,
    feature: str,
    organization_id: str | None = None,
    at: datetime | None = None,
    grace: timedelta | None = None,
) -> Entitlement:
    """Why (or why not) the user may use ``feature`` at ``at`` (default: now); see the module's
    docstring. Of several memberships that allow it, the one that lasts longest is named."""
    return reading(session, user_id=user_id, feature=feature, organization_id=organization_id, at=at, grace=grace).answer


@dataclass(frozen=True)
class Reading:
    """An entitlement and what it was read from, for keeping it (``memberships.door``): the
    change marks whose moving may change it (``kit.db.changes``, named by
    ``models.changes``) and the first instant after ``at`` at which time alone may change it
    (a start, an end, a paid period's end or its grace, an add-on's expiry; None: never)."""

    answer: Entitlement
    keys: frozenset[str]
    changes_at: datetime | None


def reading(
    session: Session,
    *,
    user_id: str,
    feature: str,
    organization_id: str | None = None,
    at: datetime | None = None,
    grace: timedelta | None = None,
) -> Reading:
    """``entitlement``, with what its answer depends on (``Reading``)."""
    at = clock.ensure_utc(at) if at is not None else clock.now()
    if grace is None:
        from billfold.config import get_settings

        grace = timedelta(days=get_settings().membership_grace_days)
    best: Entitlement | None = None
    keys = {f"user:{user_id}"} | ({f"org:{organization_id}"} if organization_id is not None else set())
    instants: list[datetime] = []
    for row in session.execute(candidates(user_id, organization_id), candidate_parameters(user_id, organization_id)).all():
        if row.subscription_id is not None:
            keys.add(f"sub:{row.subscription_id}")
            keys.add(f"user:{row.subscription_user_id}" if row.subscription_organization_id is None else f"org:{row.subscription_organization_id}")
        instants.extend(moment for moment in (row.start_date, row.end_date, row.paid_until) if moment is not None)
        if row.paid_until is not None:
            instants.append(_plus(row.paid_until, grace))
        if row.organization_id is not None and row.organization_id != organization_id:
            continue  # an organization's membership held by this user counts only for it
        place = standing(
            status=row.status, start_date=row.start_date, end_date=row.end_date,
            subscription_status=row.subscription_status, period_end=row.paid_until, at=at, grace=grace,
            renews=bool(row.renews),
        )
        if not place.grants:
            continue
        found: Entitlement | None = None
        if feature in features_of(row.features):
            found = Entitlement(feature, True, row.id, place.until, "membership", row.organization_id)
        else:
            for addon in row.addons if isinstance(row.addons, list) else []:
                if isinstance(addon, dict) and addon.get("feature") == feature:
                    live, expires = addon_until(addon, at)
                    if expires is not None:
                        instants.append(expires)
                    if live:
                        until = place.until if expires is None else (expires if place.until is None else min(expires, place.until))
                        candidate = Entitlement(feature, True, row.id, until, "addon", row.organization_id)
                        found = candidate if found is None or _later(candidate, found) else found
        if found is not None and (best is None or _later(found, best)):
            best = found
    later = [moment for moment in instants if moment > at]
    return Reading(best or Entitlement(feature, False), frozenset(keys), min(later) if later else None)


def _later(a: Entitlement, b: Entitlement) -> bool:
    if b.until is None:
        return False
    return a.until is None or a.until > b.until


def may_use(
    session: Session,
    *,
    user_id: str,
    feature: str,
    organization_id: str | None = None,
    at: datetime | None = None,
    grace: timedelta | None = None,
) -> bool:
    """May the user (or, with ``organization_id``, a member of that organization through its
    memberships) use ``feature`` at ``at`` (default: now)? One query; see ``entitlement``."""
    return entitlement(
        session, user_id=user_id, feature=feature, organization_id=organization_id, at=at, grace=grace
    ).allowed
