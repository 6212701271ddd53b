"""``analytics_events``: what a customer did that the business counts, one row per event, written
in the transaction of the change it records. ``billfold.audit.audit`` calls ``record`` for every
audit row (beside ``outbox.enqueue``), so no service writes these rows itself; an audit event of
another kind costs a dictionary lookup. See docs/analytics.md, "Events and cohorts".

Cheap on the hot paths (checkout, renewals): the row is a plain value, written with the
transaction's other analytics events by one INSERT at its commit (``kit.db.insert_at_commit``,
as the audit rows are), with no ORM object; what it says
is read from the rows the change just moved, already in the session's identity map (never a query:
a linked row that is not there leaves its fields out). A first purchase or first subscription also
names the user's cohort (``billfold.analytics.cohorts.note_first``), written once per transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from billfold.kit import clock
from billfold.kit.db import insert_at_commit
from billfold.kit.ids import new_id
from billfold.models import AnalyticsEvent, Payment, Refund, Subscription, UserMembership
from billfold.analytics import cohorts

REVENUE, CONVERSION, ENGAGEMENT = "revenue", "conversion", "engagement"

PAYMENT_COMPLETED = "payment_completed"
REFUND_COMPLETED = "refund_completed"
REFUND_REVERSED = "refund_reversed"
SUBSCRIPTION_CREATED = "subscription_created"
SUBSCRIPTION_UPGRADED = "subscription_upgraded"
SUBSCRIPTION_DOWNGRADED = "subscription_downgraded"
SUBSCRIPTION_CHANGE_REVERTED = "subscription_change_reverted"
SUBSCRIPTION_CANCELLED = "subscription_cancelled"
TRIAL_STARTED = "trial_started"
TRIAL_CONVERTED = "trial_converted"
MEMBERSHIP_STARTED = "membership_started"
MEMBERSHIP_EXPIRED = "membership_expired"

CATEGORIES = {
    PAYMENT_COMPLETED: REVENUE, REFUND_COMPLETED: REVENUE, REFUND_REVERSED: REVENUE,
    SUBSCRIPTION_CREATED: CONVERSION, TRIAL_STARTED: CONVERSION, TRIAL_CONVERTED: CONVERSION,
    SUBSCRIPTION_UPGRADED: CONVERSION, SUBSCRIPTION_DOWNGRADED: CONVERSION, SUBSCRIPTION_CHANGE_REVERTED: CONVERSION,
    SUBSCRIPTION_CANCELLED: CONVERSION,
    MEMBERSHIP_STARTED: ENGAGEMENT, MEMBERSHIP_EXPIRED: ENGAGEMENT,
}
"""Each event's ``event_category``: revenue (money moved), conversion (what a customer committed
to changed), engagement (access began or ended)."""


def _loaded(session: Session, model: type[Any], row_id: Any) -> dict[str, Any]:
    """The row's loaded attributes from the session (the identity map, else its rows not yet
    flushed), or {}: never a query, never a refresh."""
    if not row_id:
        return {}
    row = session.identity_map.get(identity_key(model, row_id))
    if row is None:
        row = next((new for new in session.new if type(new) is model and new.id == row_id), None)
    return dict(row.__dict__) if row is not None else {}


def _owner(row: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The event's user (a user's purchase) and, for an organization's, the organization in properties:
    the rows hold no buyer for an organization's purchase, so its events have no user."""
    if row.get("organization_id"):
        return None, {"organization_id": row["organization_id"]}
    return row.get("user_id"), {}


def _props(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


Event = tuple[str, str | None, str | None, int, dict[str, Any]]  # type, user, currency, revenue_cents, properties


def _payment(session: Session, payment_id: str, data: dict[str, Any]) -> list[Event]:
    if data.get("to") != "completed" or data.get("from") not in ("pending", "waiting", "failed"):
        return []  # "refunded" -> "completed" is a refund that failed: refund_reversed says it
    row = _loaded(session, Payment, payment_id)
    if not row:
        return []
    user_id, owner = _owner(row)
    subscription = _loaded(session, Subscription, row.get("subscription_id"))
    purpose = (row.get("metadata_") or {}).get("purpose")
    properties = _props(
        **owner, provider_id=row.get("provider_id"), order_id=row.get("order_id"),
        subscription_id=row.get("subscription_id"), product_id=subscription.get("product_id"), purpose=purpose,
    )
    return [(PAYMENT_COMPLETED, user_id, row.get("currency"), row.get("amount_cents") or 0, properties)]


def _refund(session: Session, refund_id: str, data: dict[str, Any]) -> list[Event]:
    moved = (data.get("from"), data.get("to"))
    if moved == ("pending", "succeeded"):
        kind, sign = REFUND_COMPLETED, -1
    elif moved == ("succeeded", "failed"):
        kind, sign = REFUND_REVERSED, 1
    else:
        return []
    row = _loaded(session, Refund, refund_id)
    if not row:
        return []
    payment = _loaded(session, Payment, row.get("payment_id"))
    user_id, owner = _owner(payment)
    properties = _props(
        **owner, payment_id=row.get("payment_id"), provider_id=row.get("provider_id"), order_id=row.get("order_id"),
        subscription_id=payment.get("subscription_id"), reason=row.get("reason"),
    )
    return [(kind, user_id, row.get("currency"), sign * (row.get("amount_cents") or 0), properties)]


def _subscription(session: Session, subscription_id: str, event_type: str, data: dict[str, Any]) -> list[Event]:
    row = _loaded(session, Subscription, subscription_id)
    if not row:
        return []
    user_id, owner = _owner(row)
    currency = row.get("currency")
    plan = _props(**owner, product_id=row.get("product_id"), price_cents=row.get("price_cents"),
                  provider_id=row.get("provider_id"))
    if event_type in ("subscription.trialing", "subscription.active") and data.get("from") is None:
        trial_end = row.get("trial_end")
        started = [(SUBSCRIPTION_CREATED, user_id, currency, 0, plan)]
        if trial_end is not None:
            started.append((TRIAL_STARTED, user_id, currency, 0, {**plan, "trial_end": trial_end.isoformat()}))
        return started
    if event_type == "subscription.active" and data.get("from") == "trialing" and row.get("trial_end") is not None:
        return [(TRIAL_CONVERTED, user_id, currency, 0, _props(**plan, payment_id=data.get("payment_id")))]
    if event_type == "subscription.changed":
        before = data["from_price_cents"] * data["from_quantity"]
        after = data["to_price_cents"] * data["to_quantity"]
        if before == after:
            return []
        change = _props(
            **owner, product_id=data["to_product_id"], previous_product_id=data["from_product_id"],
            amount_before_cents=before, amount_after_cents=after,
            from_quantity=data["from_quantity"], to_quantity=data["to_quantity"],
            net_cents=data.get("net_cents"), provider_id=row.get("provider_id"),
        )
        return [(SUBSCRIPTION_UPGRADED if after > before else SUBSCRIPTION_DOWNGRADED, user_id, currency, 0, change)]
    if event_type == "subscription.change_reverted":
        return [(SUBSCRIPTION_CHANGE_REVERTED, user_id, currency, 0, _props(**plan, payment_id=data.get("payment_id")))]
    if event_type == "subscription.cancelled":
        return [(SUBSCRIPTION_CANCELLED, user_id, currency, 0, _props(**plan, reason=data.get("reason"), previous_status=data.get("from")))]
    return []


def _membership(session: Session, membership_id: str, event_type: str, data: dict[str, Any]) -> list[Event]:
    if event_type == "membership.active" and data.get("from") in (None, "pending"):
        kind = MEMBERSHIP_STARTED
    elif event_type == "membership.expired":
        kind = MEMBERSHIP_EXPIRED
    else:
        return []
    row = _loaded(session, UserMembership, membership_id)
    if not row:
        return []
    properties = _props(
        membership_type_id=row.get("membership_type_id"), order_id=row.get("order_id"),
        subscription_id=row.get("subscription_id"), source=data.get("source"),
    )
    return [(kind, row.get("user_id"), None, 0, properties)]


_READERS: dict[str, Callable[[Session, str, str, dict[str, Any]], list[Event]]] = {
    "payment": lambda session, entity_id, event_type, data: (
        _payment(session, entity_id, data) if event_type == "payment.completed" else []
    ),
    "refund": lambda session, entity_id, event_type, data: (
        _refund(session, entity_id, data) if event_type in ("refund.succeeded", "refund.failed") else []
    ),
    "subscription": _subscription,
    "membership": _membership,
}

_FIRSTS = {PAYMENT_COMPLETED: cohorts.FIRST_PURCHASE, SUBSCRIPTION_CREATED: cohorts.FIRST_SUBSCRIPTION}


def record(session: Session, entity_type: str, entity_id: str, event_type: str, data: dict[str, Any]) -> None:
    """The analytics events an audit event makes (most make none), added to the session."""
    reader = _READERS.get(entity_type)
    if reader is None:
        return
    for kind, user_id, currency, revenue_cents, properties in reader(session, entity_id, event_type, data):
        insert_at_commit(session, AnalyticsEvent, {  # with the audit rows, at the commit (kit.db)
            "id": new_id("aev"), "user_id": user_id, "session_id": None, "event_type": kind,
            "event_category": CATEGORIES[kind], "entity_type": entity_type, "entity_id": entity_id,
            "properties": properties or None, "revenue_cents": revenue_cents, "currency": currency,
            "created_at": clock.now(),
        })
        first = _FIRSTS.get(kind)
        if first is not None and user_id is not None:
            cohorts.note_first(session, user_id, first)
        if kind == REFUND_REVERSED:  # its month's stored retention column counted it
            cohorts.note_changed(session, _loaded(session, Refund, entity_id).get("completed_at"))
