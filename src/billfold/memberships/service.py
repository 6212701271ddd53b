"""Memberships: granted when a membership product is paid for, when a subscription starts, or by
an admin; cancelled by an admin; add-ons with their own expiry. See docs/memberships.md.

How a product sells a membership type: its ``metadata`` names one, ``{"membership_type_id":
"mtyp_..."}``. Paying an order of such a product grants one membership per order item
(``grant_for_order``, a paid-order reaction attached by ``billfold.wiring.wire()``), in the
transaction that marks the order paid; a subscription to such a product gets one through
``grant_for_subscription``, which the subscriptions code calls when it starts.

Who holds an organization's membership: ``user_memberships.user_id`` is NOT NULL, so it is the
organization's primary owner when it is granted; the order or subscription (whose
``organization_id`` is set) makes it the organization's, and every member of the organization is
entitled through it (see entitlements.py).

Services take a session and never commit; every change of state writes its ``payment_events``
row through the state machine, in the same transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.audit import audit
from billfold.orders.lines import lines_of
from billfold.kit import clock
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import InvalidInput, NotFound
from billfold.kit.ids import has_prefix
from billfold.states import machine
from billfold.memberships.entitlements import Standing, paid_until, paid_until_column, renews_column, standing
from billfold.models import (
    MembershipType, Order, Organization, Product, Subscription, SubscriptionBilling, User, UserMembership,
)

PRODUCT_KEY = "membership_type_id"

MEMBERSHIP = machine(
    "membership",
    {
        None: {"pending", "active"},
        "pending": {"active", "cancelled"},
        "active": {"expired", "cancelled"},
        "expired": {"active", "cancelled"},  # a subscription that pays again renews it
        "cancelled": set(),
    },
)

# MariaDB's TIMESTAMP ends here; an end beyond it is kept at it there.
MYSQL_TIMESTAMP_MAX = datetime(2038, 1, 19, 3, 14, 7, tzinfo=clock.UTC)


def _now() -> datetime:
    return clock.now().replace(microsecond=0)


def _ceiling(session: Session, moment: datetime | None) -> datetime | None:
    if moment is not None and session.get_bind().dialect.name in ("mysql", "mariadb"):
        return min(moment, MYSQL_TIMESTAMP_MAX)
    return moment


def _after(session: Session, start: datetime, days: int) -> datetime:
    try:
        end = start + timedelta(days=days)
    except OverflowError:
        end = datetime.max.replace(tzinfo=clock.UTC, microsecond=0)
    return _ceiling(session, end)  # type: ignore[return-value]


def get_membership(session: Session, membership_id: str, *, lock: bool = False) -> UserMembership:
    found = None
    if has_prefix(membership_id, "umem"):
        statement = sa.select(UserMembership).where(UserMembership.id == membership_id)
        if lock:
            statement = for_update(statement, session).execution_options(populate_existing=True)
        found = session.scalars(statement).one_or_none()
    if found is None:
        raise NotFound(f"no membership {membership_id}")
    return found


def membership_type_of(session: Session, product: Product) -> MembershipType | None:
    """The membership type a product sells (``metadata.membership_type_id``), if any."""
    wanted = (product.metadata_ or {}).get(PRODUCT_KEY) if isinstance(product.metadata_, dict) else None
    if not isinstance(wanted, str) or not has_prefix(wanted, "mtyp"):
        return None
    return session.get(MembershipType, wanted)


def _holder(session: Session, *, user_id: str | None, organization_id: str | None) -> str | None:
    if user_id is not None:
        return user_id
    if organization_id is not None:
        return session.scalar(sa.select(Organization.owner_user_id).where(Organization.id == organization_id))
    return None


def _grant(
    session: Session,
    *,
    user_id: str,
    membership_type: MembershipType,
    start: datetime,
    end: datetime | None,
    by: str | None,
    source: str,
    order_id: str | None = None,
    subscription_id: str | None = None,
    auto_renew: bool = False,
    addons: list[dict[str, Any]] | None = None,
    reason: str | None = None,
) -> UserMembership:
    membership = UserMembership(
        user_id=user_id, membership_type_id=membership_type.id, order_id=order_id, subscription_id=subscription_id,
        status="active", start_date=start, end_date=end, auto_renew=auto_renew, addons=addons,
    )
    session.add(membership)
    session.flush()
    MEMBERSHIP.start(
        session, membership, "active", by=by, source=source, membership_type_id=membership_type.id,
        order_id=order_id, subscription_id=subscription_id,
        end_date=end.isoformat() if end else None, reason=reason,
    )
    session.flush()
    return membership


def grant_for_order(session: Session, order: Order) -> list[UserMembership]:
    """One membership per paid order item whose product sells a membership type: starts now, ends
    after ``duration_days`` × quantity (fixed; also a recurring type bought once, which does not
    renew) or never (lifetime). Runs once per order: if the order has memberships already, nothing."""
    items = [
        (item.id, item.quantity, product) for item, product in lines_of(session, order.id)
        if isinstance(product.metadata_, dict) and PRODUCT_KEY in product.metadata_
    ]
    if not items or session.scalar(sa.select(UserMembership.id).where(UserMembership.order_id == order.id).limit(1)):
        return []
    granted = []
    for item_id, quantity, product in items:
        membership_type = membership_type_of(session, product)
        holder = _holder(session, user_id=order.user_id, organization_id=order.organization_id)
        if membership_type is None or holder is None:
            reason = "no such membership type" if membership_type is None else "the order has no customer"
            audit(session, "order", order.id, "membership.not_granted", order_item_id=item_id, product_id=product.id,
                  membership_type_id=str(product.metadata_.get(PRODUCT_KEY)), reason=reason)
            continue
        start = _now()
        end = None
        if membership_type.duration_type != "lifetime":
            end = _after(session, start, (membership_type.duration_days or 0) * max(quantity, 1))
        granted.append(_grant(
            session, user_id=holder, membership_type=membership_type, start=start, end=end, by=None,
            source="order", order_id=order.id,
        ))
    return granted


def end_for_refunded_order(session: Session, order: Order) -> list[UserMembership]:
    """A refund ends what it paid for: an order refunded in full (a refunded-order reaction, in
    the transaction that marks it refunded) cancels the memberships it granted, from now. A partial
    refund leaves the order paid and its memberships as they are."""
    ended = []
    now = _now()
    statement = sa.select(UserMembership).where(UserMembership.order_id == order.id, UserMembership.status != "cancelled")
    for membership in session.scalars(for_update(statement.order_by(UserMembership.id), session)):
        if MEMBERSHIP.move(session, membership, "cancelled", by="order.refunded", reason="order_refunded", order_id=order.id):
            if membership.end_date is None or membership.end_date > now:
                membership.end_date = max(now, membership.start_date)
            membership.auto_renew = False
            ended.append(membership)
    session.flush()
    return ended


def grant_for_subscription(
    session: Session, subscription: Subscription, *, membership_type_id: str | None = None
) -> UserMembership | None:
    """The membership that follows ``subscription``: made once (the existing one is returned on
    later calls), for the membership type ``membership_type_id`` or else the one the subscription's
    product sells (None, and nothing made, when it sells none). Held by the subscription's user,
    or its organization's primary owner; ``auto_renew`` unless the subscription ends at period end.
    Its state follows the subscription from then on (entitlements.standing, the expire sweep)."""
    existing = session.scalars(
        sa.select(UserMembership).where(UserMembership.subscription_id == subscription.id).limit(1)
    ).first()
    if existing is not None:
        return existing
    if membership_type_id is not None:
        membership_type = session.get(MembershipType, membership_type_id) if has_prefix(membership_type_id, "mtyp") else None
        if membership_type is None:
            raise NotFound(f"no membership type {membership_type_id}",
                           errors=[{"field": "membership_type_id", "message": "no such membership type"}])
    else:
        product = session.get(Product, subscription.product_id)
        membership_type = membership_type_of(session, product) if product is not None else None
        if membership_type is None:
            return None
    holder = _holder(session, user_id=subscription.user_id, organization_id=subscription.organization_id)
    if holder is None:
        return None
    return _grant(
        session, user_id=holder, membership_type=membership_type, start=_now(),
        end=_ceiling(session, subscription.current_period_end), by=None, source="subscription",
        subscription_id=subscription.id, auto_renew=renews(session, subscription),
    )


def grant_manually(
    session: Session,
    *,
    user_id: str,
    membership_type_id: str,
    by: str | None,
    start_date: datetime | None = None,
    end_date: datetime | None = None,
    reason: str | None = None,
) -> UserMembership:
    """An admin's grant (a comp): from ``start_date`` (default now) to ``end_date`` (default: after
    the type's ``duration_days``, or never for a lifetime type). Not linked to an order or a
    subscription, so it is the user's own."""
    if not has_prefix(user_id, "usr") or session.get(User, user_id) is None:
        raise NotFound(f"no user {user_id}")
    membership_type = session.get(MembershipType, membership_type_id) if has_prefix(membership_type_id, "mtyp") else None
    if membership_type is None:
        raise NotFound(f"no membership type {membership_type_id}",
                       errors=[{"field": "membership_type_id", "message": "no such membership type"}])
    start = clock.ensure_utc(start_date).replace(microsecond=0) if start_date else _now()
    if end_date is not None:
        end: datetime | None = clock.ensure_utc(end_date).replace(microsecond=0)
    elif membership_type.duration_type == "lifetime":
        end = None
    else:
        end = _after(session, start, membership_type.duration_days or 0)
    _check_range(session, "start_date", start)
    if end is not None:
        _check_range(session, "end_date", end)
        if end <= start:
            raise InvalidInput("end_date: must be after start_date",
                               errors=[{"field": "end_date", "message": "must be after start_date"}])
    return _grant(
        session, user_id=user_id, membership_type=membership_type, start=start, end=end, by=by,
        source="manual", reason=reason,
    )


def _check_range(session: Session, field: str, moment: datetime) -> None:
    low = datetime(1970, 1, 2, tzinfo=clock.UTC)
    high = MYSQL_TIMESTAMP_MAX if session.get_bind().dialect.name in ("mysql", "mariadb") else datetime(9000, 1, 1, tzinfo=clock.UTC)
    if not low <= moment < high:
        message = f"must be between {low.date()} and {high.date()}"
        raise InvalidInput(f"{field}: {message}", errors=[{"field": field, "message": message}])


def cancel(session: Session, membership_id: str, *, by: str | None, reason: str | None = None) -> UserMembership:
    """End a membership now (an admin's decision: it grants nothing from this instant). A cancelled
    membership stays cancelled; cancelling it again changes nothing. The subscription it follows,
    if any, is not touched: cancel that through the subscriptions API."""
    membership = get_membership(session, membership_id, lock=True)
    now = _now()
    if MEMBERSHIP.move(session, membership, "cancelled", by=by, reason=reason):
        if membership.end_date is None or membership.end_date > now:
            membership.end_date = max(now, membership.start_date)
        membership.auto_renew = False
        session.flush()
    return membership


def add_addon(
    session: Session, membership_id: str, *, feature: str, expires_at: datetime | None, source: str | None, by: str | None
) -> UserMembership:
    """Add (or replace: one add-on per feature) an add-on that grants ``feature`` while the
    membership grants and until ``expires_at`` (exclusive; None: as long as the membership)."""
    membership = get_membership(session, membership_id, lock=True)
    feature = _feature(feature)
    entry = {
        "feature": feature,
        "expires_at": clock.ensure_utc(expires_at).replace(microsecond=0).isoformat() if expires_at else None,
        "source": source or "manual",
    }
    membership.addons = [a for a in _addons(membership) if a.get("feature") != feature] + [entry]
    session.flush()
    audit(session, "membership", membership.id, "membership.addon_added", by=by, **entry)
    return membership


def remove_addon(session: Session, membership_id: str, feature: str, *, by: str | None) -> UserMembership:
    membership = get_membership(session, membership_id, lock=True)
    kept = [a for a in _addons(membership) if a.get("feature") != feature]
    if len(kept) == len(_addons(membership)):
        raise NotFound(f"membership {membership.id} has no add-on {feature!r}")
    membership.addons = kept or None
    session.flush()
    audit(session, "membership", membership.id, "membership.addon_removed", by=by, feature=feature)
    return membership


def _addons(membership: UserMembership) -> list[dict[str, Any]]:
    return [dict(a) for a in membership.addons or [] if isinstance(a, dict)]


def _feature(feature: str) -> str:
    feature = feature.strip()
    if not feature or len(feature) > 100:
        raise InvalidInput("feature: 1 to 100 characters", errors=[{"field": "feature", "message": "1 to 100 characters"}])
    return feature


# Looking


def own_memberships(user_id: str) -> sa.Select[tuple[UserMembership]]:
    """A user's own memberships (not those they hold for an organization)."""
    return (
        sa.select(UserMembership)
        .outerjoin(Order, Order.id == UserMembership.order_id)
        .outerjoin(Subscription, Subscription.id == UserMembership.subscription_id)
        .where(UserMembership.user_id == user_id, Order.organization_id.is_(None), Subscription.organization_id.is_(None))
    )


def held_memberships(user_id: str) -> sa.Select[tuple[UserMembership]]:
    """Every membership a user holds, their organizations' included (for admins)."""
    return sa.select(UserMembership).where(UserMembership.user_id == user_id)


def organization_memberships(organization_id: str) -> sa.Select[tuple[UserMembership]]:
    """An organization's memberships: those whose order or subscription is the organization's."""
    return (
        sa.select(UserMembership)
        .outerjoin(Order, Order.id == UserMembership.order_id)
        .outerjoin(Subscription, Subscription.id == UserMembership.subscription_id)
        .where(sa.or_(Order.organization_id == organization_id, Subscription.organization_id == organization_id))
    )


class Described:
    """A membership with what it is and where it stands now."""

    def __init__(self, membership: UserMembership, membership_type: MembershipType, organization_id: str | None, place: Standing) -> None:
        self.membership = membership
        self.membership_type = membership_type
        self.organization_id = organization_id
        self.standing = place
        # Whether it will renew, now: for one following a subscription, computed from it as the
        # standing is (the stored column catches up when the subscription changes, or by the sweep).
        self.auto_renew = membership.auto_renew


def describe(session: Session, rows: list[UserMembership], *, grace: timedelta, at: datetime | None = None) -> list[Described]:
    at = at or clock.now()
    types = {t.id: t for t in session.scalars(
        sa.select(MembershipType).where(MembershipType.id.in_({r.membership_type_id for r in rows}))
    )} if rows else {}
    orders = dict(session.execute(
        sa.select(Order.id, Order.organization_id).where(Order.id.in_({r.order_id for r in rows if r.order_id}))
    ).all()) if any(r.order_id for r in rows) else {}
    subscriptions = followed(session, rows)
    described = []
    for row in rows:
        subscription = subscriptions.get(row.subscription_id) if row.subscription_id else None
        organization_id = orders.get(row.order_id) if row.order_id else None
        if subscription is not None and organization_id is None:
            organization_id = subscription[0].organization_id
        place = standing_of(row, subscription, at=at, grace=grace)
        one = Described(row, types[row.membership_type_id], organization_id, place)
        if subscription is not None:
            one.auto_renew = subscription[2] and subscription[0].status != "cancelled" and row.status != "cancelled"
        described.append(one)
    return described


def followed(session: Session, rows: list[UserMembership]) -> dict[str, tuple[Subscription, datetime, bool]]:
    """The subscriptions these memberships follow, each with the end of the period it has paid for
    (``entitlements.paid_until``) and whether it will renew (``entitlements.renews_column``), by id."""
    return _subscriptions(session, {r.subscription_id for r in rows if r.subscription_id})


def _subscriptions(session: Session, ids: set[str]) -> dict[str, tuple[Subscription, datetime, bool]]:
    if not ids:
        return {}
    sb = SubscriptionBilling.__table__
    found = session.execute(
        sa.select(Subscription, SubscriptionBilling.outstanding_invoice_id,
                  sa.case((renews_column(Subscription.__table__, sb), 1), else_=0))
        .outerjoin(SubscriptionBilling, SubscriptionBilling.subscription_id == Subscription.id)
        .where(Subscription.id.in_(ids))
    ).all()
    return {
        s.id: (s, paid_until(s.current_period_start, s.current_period_end, outstanding), bool(renews))
        for s, outstanding, renews in found
    }


def standing_of(
    membership: UserMembership, subscription: tuple[Subscription, datetime, bool] | None, *, at: datetime, grace: timedelta
) -> Standing:
    return standing(
        status=membership.status, start_date=membership.start_date, end_date=membership.end_date,
        subscription_status=subscription[0].status if subscription else None,
        period_end=subscription[1] if subscription else None, at=at, grace=grace,
        renews=subscription[2] if subscription else True,
    )


def renews(session: Session, subscription: Subscription) -> bool:
    """Whether ``subscription`` will charge another period (see ``entitlements.renews_column``)."""
    row = _subscriptions(session, {subscription.id}).get(subscription.id)
    return bool(row and row[2])


def follow_renewal(session: Session, subscription: Subscription) -> None:
    """Store on the memberships that follow ``subscription`` whether it will renew
    (``auto_renew``): the subscriptions code calls it when that changes (cancel at period end,
    resume, pause, a trial's payment method)."""
    will = renews(session, subscription) and subscription.status != "cancelled"
    for membership in session.scalars(
        sa.select(UserMembership).where(UserMembership.subscription_id == subscription.id, UserMembership.status != "cancelled")
    ):
        membership.auto_renew = will
    session.flush()


# Keeping stored statuses up to date (the memberships.expire sweep)


def due_for_update(at: datetime, grace: timedelta) -> sa.Select[tuple[UserMembership]]:
    """Memberships whose stored status, end_date or auto_renew no longer says where they stand at
    ``at``: a fixed one past its end still ``active``; one following a subscription whose status,
    paid period or renewal moved on. One following a subscription that will not renew stops
    granting at its period's end (the check computes it); its stored status waits for the
    subscription's own sweep to cancel it (or, paused, for the grace line), so it moves once."""
    s = Subscription
    grace_line = at - grace
    paid = paid_until_column(Subscription.__table__, SubscriptionBilling.__table__)
    will_renew = renews_column(Subscription.__table__, SubscriptionBilling.__table__)
    following = (
        sa.select(UserMembership.id)
        .join(s, s.id == UserMembership.subscription_id)
        .outerjoin(SubscriptionBilling, SubscriptionBilling.subscription_id == s.id)
        .where(
            UserMembership.status.in_(("active", "expired")),
            sa.or_(
                UserMembership.end_date.is_(None),
                UserMembership.end_date != paid,
                sa.and_(
                    UserMembership.status == "active",
                    sa.or_(
                        sa.and_(s.status == "cancelled", paid <= at),
                        sa.and_(s.status != "cancelled", paid <= grace_line),
                    ),
                ),
                UserMembership.auto_renew != sa.and_(s.status != "cancelled", will_renew),
                sa.and_(
                    UserMembership.status == "expired",
                    sa.or_(s.status == "cancelled", sa.and_(paid > grace_line, will_renew), paid > at),
                ),
            ),
        )
    )
    ended = sa.select(UserMembership.id).where(
        UserMembership.status == "active",
        UserMembership.subscription_id.is_(None),
        UserMembership.end_date.is_not(None),
        UserMembership.end_date <= at,
    )
    return sa.select(UserMembership).where(
        sa.or_(UserMembership.id.in_(ended), UserMembership.id.in_(following))
    )


def bring_up_to_date(session: Session, *, at: datetime, grace: timedelta, limit: int = 500) -> int:
    """Claim up to ``limit`` memberships due for an update (skipping rows another worker holds)
    and store where each stands; how many changed."""
    statement = for_update(due_for_update(at, grace).order_by(UserMembership.id).limit(limit), session, skip_locked=True)
    rows = list(session.scalars(statement.execution_options(populate_existing=True)))
    if not rows:
        return 0
    subscriptions = followed(session, rows)
    changed = 0
    for row in rows:
        subscription = subscriptions.get(row.subscription_id) if row.subscription_id else None
        place = standing_of(row, subscription, at=at, grace=grace)
        moved = place.status != row.status and MEMBERSHIP.can(row.status, place.status)
        if moved:
            MEMBERSHIP.move(
                session, row, place.status, by="memberships.expire", subscription_id=row.subscription_id,
                subscription_status=subscription[0].status if subscription else None,
            )
        end = _ceiling(session, place.end_date)
        if subscription is not None and row.end_date != end:
            row.end_date = end
            moved = True
        if subscription is not None:
            will = subscription[2] and place.status != "cancelled" and subscription[0].status != "cancelled"
            if row.auto_renew != will:
                row.auto_renew = will
                moved = True
        changed += moved
    session.flush()
    return changed
