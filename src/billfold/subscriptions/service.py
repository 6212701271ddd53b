"""The subscription lifecycle: subscribe, change plan or quantity, cancel (now or at period end),
resume, pause and unpause; who may do each. Charging is in billing.py, dunning in dunning.py.

Who may: a user for themselves; for an organization its owners and billing members
(``Permission.BILLING``); the shop's admins and write API keys for anyone. Everyone who may see a
customer sees its subscriptions (an organization's members included). Services never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.accounts.access import owner_of, readable, require_payer
from billfold.accounts.addresses import defaults_of
from billfold.accounts.security import Principal, Security
from billfold.catalog.service import purchasable_product
from billfold.config import Settings
from billfold.invoices import service as invoices
from billfold.kit import clock
from billfold.kit.errors import Conflict, InvalidInput, NotFound
from billfold.kit.ids import has_prefix
from billfold.memberships import service as memberships
from billfold.models import Address, Invoice, Payment, Product, Subscription, SubscriptionBilling
from billfold.orders.service import actor, buyer
from billfold.payments import methods, routing
from billfold.payments.refunds import refunded_cents
from billfold.subscriptions import charging
from billfold.subscriptions import periods
from billfold.subscriptions.proration import Proration, prorate
from billfold.subscriptions.states import SUBSCRIPTION, record

MAX_QUANTITY = 10_000


class SubscriptionNotChangeable(Conflict):
    code = "subscription_not_changeable"
    title = "The subscription cannot be changed in its current state"


class PaymentInProgress(Conflict):
    code = "payment_in_progress"
    title = "A payment of this subscription is under way"


class NotRecurring(InvalidInput):
    code = "product_not_recurring"
    title = "This product is not sold by subscription"


# Reading


def get(session: Session, principal: Principal, subscription_id: str, *, change: bool = False) -> Subscription:
    """A subscription the principal may see (and, with ``change``, change: the right to buy for
    its customer); NotFound otherwise (docs/permissions.md, ``accounts.access``)."""
    found = None
    if has_prefix(subscription_id, "sub"):
        found = session.scalars(readable(principal, Subscription, change=change).where(Subscription.id == subscription_id)).one_or_none()
    if found is None:
        raise NotFound(f"no subscription {subscription_id}")
    if change:
        require_payer(session, principal, found, "only the customer may change this subscription")
    return found


def billing_of(session: Session, subscription_ids: list[str]) -> dict[str, SubscriptionBilling]:
    if not subscription_ids:
        return {}
    rows = session.scalars(sa.select(SubscriptionBilling).where(SubscriptionBilling.subscription_id.in_(subscription_ids)))
    return {row.subscription_id: row for row in rows}


def _locked(session: Session, principal: Principal, subscription_id: str) -> tuple[Subscription, SubscriptionBilling]:
    get(session, principal, subscription_id, change=True)
    subscription, billing = charging.lock_subscription(session, subscription_id)
    if billing is None:
        raise SubscriptionNotChangeable(
            f"subscription {subscription_id} has no billing record in Billfold (it was imported or made outside "
            "Billfold): it can be read, not changed here"
        )
    return subscription, billing


def _no_payment_under_way(session: Session, subscription: Subscription) -> None:
    pending = session.scalar(
        sa.select(Payment.id).where(Payment.subscription_id == subscription.id, Payment.status == "pending").limit(1)
    )
    if pending:
        raise PaymentInProgress(f"payment {pending} of subscription {subscription.id} is under way; try again shortly")


def _recurring(session: Session, product_id: str, field: str = "product_id") -> Product:
    try:
        product = purchasable_product(session, product_id)
    except NotFound as error:
        raise NotFound(f"no product {product_id}", errors=[{"field": field, "message": "no such product"}]) from error
    if not product.is_recurring or product.billing_interval not in periods.INTERVAL_MONTHS:
        raise NotRecurring(
            f"{product.name} ({product.id}) is not sold by subscription",
            errors=[{"field": field, "message": "not a recurring product"}],
        )
    return product


# Subscribing


@dataclass(frozen=True)
class Started:
    subscription_id: str
    payment_id: str | None  # the first period's payment to charge now (phases 2 and 3)


def subscribe(
    session: Session,
    security: Security,
    settings: Settings,
    principal: Principal,
    *,
    product_id: str,
    quantity: int = 1,
    payment_method_id: str | None = None,
    user_id: str | None = None,
    organization_id: str | None = None,
) -> Started:
    """Phase 1 of subscribing. With a trial (the product's ``trial_days``) the subscription is
    ``trialing`` until ``trial_end`` and needs no payment method. Without one, it starts
    ``trialing`` with a trial of no length while its first period is charged on-session: paid →
    ``active``; declined → ``cancelled`` (and the caller answers 402)."""
    owner = buyer(session, principal, user_id=user_id, organization_id=organization_id)
    product = _recurring(session, product_id)
    if not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidInput(f"quantity is 1 to {MAX_QUANTITY}", errors=[{"field": "quantity", "message": "out of range"}])
    trial_days = product.trial_days or 0
    billing_address_id = defaults_of(session, owner).get("billing")
    address = session.get(Address, billing_address_id) if billing_address_id else None
    # The routing rules choose the provider only for a trial without a method (a method fixes it).
    facts = routing.Facts(
        product.currency, product.price_cents * quantity, address.country if address else None,
        frozenset({product.product_type}), f"{owner.id}:{product.id}",
    )
    route = routing.route(
        session, security, owner, product.currency, routing.PayWith(payment_method_id=payment_method_id),
        without_method="save one first, or name payment_method_id" if trial_days <= 0 else None, provider_field=None,
        facts=facts,
    )
    method, provider = route.method, route.provider
    now = clock.now()
    trial_end = now + timedelta(days=trial_days) if trial_days > 0 else None
    subscription = Subscription(
        user_id=owner.user_id,
        organization_id=owner.organization_id,
        product_id=product.id,
        payment_method_id=method.id if method else None,
        provider_id=provider.id,
        status="trialing",
        current_period_start=now,
        current_period_end=trial_end or now,
        trial_end=trial_end,
        price_cents=product.price_cents,
        currency=product.currency,
        metadata_={
            "billing_interval": product.billing_interval,
            **({"billing_address_id": address.id, "billing_country": address.country} if address else {}),
        },
    )
    session.add(subscription)
    session.flush()
    row = SubscriptionBilling(subscription_id=subscription.id, quantity=quantity, billing_anchor=trial_end or now)
    session.add(row)
    session.flush()
    by = actor(principal)
    SUBSCRIPTION.start(session, subscription, "trialing", by=by, product_id=product.id, trial_end=trial_end and trial_end.isoformat())
    # A product that sells a membership type: the membership follows this subscription from now on
    # (it grants nothing once the subscription is cancelled, e.g. after a declined first charge).
    memberships.grant_for_subscription(session, subscription)
    if trial_end is not None:
        return Started(subscription.id, None)
    return Started(subscription.id, charging.charge_period(session, security, settings, subscription, row, 0, "first", by=by))


# Changing


@dataclass(frozen=True)
class Changed:
    subscription_id: str
    proration: Proration | None
    invoice_id: str | None
    payment_id: str | None  # a positive net to charge now (phases 2 and 3)


def change(
    session: Session,
    security: Security,
    settings: Settings,
    principal: Principal,
    subscription_id: str,
    *,
    product_id: str | None = None,
    quantity: int | None = None,
    payment_method_id: str | None = None,
) -> Changed:
    """Phase 1 of a change of plan, quantity or payment method (see docs/subscriptions.md)."""
    subscription, row = _locked(session, principal, subscription_id)
    by = actor(principal)
    if subscription.status == "cancelled":
        raise SubscriptionNotChangeable(f"subscription {subscription.id} is cancelled; subscribe again instead")
    _no_payment_under_way(session, subscription)
    if payment_method_id is not None:
        method = methods.method_for_charge(session, owner_of(subscription), payment_method_id)
        subscription.payment_method_id, subscription.provider_id = method.id, method.provider_id
        record(session, subscription, "payment_method_changed", by=by, payment_method_id=method.id)
        if subscription.status == "past_due" and row.outstanding_invoice_id:
            row.next_retry_at = clock.now()  # a new method is worth trying at once
    if product_id is None and quantity is None:
        session.flush()
        return Changed(subscription.id, None, None, None)
    if subscription.status == "past_due":
        raise SubscriptionNotChangeable(
            f"subscription {subscription.id} is past due: pay its outstanding invoice (update the payment method) first"
        )
    new_product = _recurring(session, product_id) if product_id and product_id != subscription.product_id else None
    new_quantity = quantity if quantity is not None else row.quantity
    if not 1 <= new_quantity <= MAX_QUANTITY:
        raise InvalidInput(f"quantity is 1 to {MAX_QUANTITY}", errors=[{"field": "quantity", "message": "out of range"}])
    if new_product is not None:
        if new_product.currency != subscription.currency:
            raise InvalidInput(
                f"{new_product.name} is priced in {new_product.currency}, the subscription in {subscription.currency}",
                errors=[{"field": "product_id", "message": "another currency"}],
            )
        if new_product.billing_interval != charging.interval_of(subscription):
            raise InvalidInput(
                f"{new_product.name} is billed {new_product.billing_interval}; the subscription {charging.interval_of(subscription)}: "
                "cancel and subscribe again to change the interval",
                errors=[{"field": "product_id", "message": "another billing interval"}],
            )
    old_product = session.get(Product, subscription.product_id)
    revert = {"product_id": subscription.product_id, "price_cents": subscription.price_cents, "quantity": row.quantity, "credit_cents": row.credit_cents}
    new_price = new_product.price_cents if new_product is not None else subscription.price_cents
    if new_product is not None:
        subscription.product_id = new_product.id
    old_price, old_quantity = subscription.price_cents, row.quantity
    subscription.price_cents, row.quantity = new_price, new_quantity
    if subscription.status == "trialing":  # nothing was paid yet: the trial ends on the new plan
        record(session, subscription, "changed", by=by, **_changes(revert, subscription, row))
        session.flush()
        return Changed(subscription.id, None, None, None)
    at = clock.now()
    proration = prorate(
        period_start=subscription.current_period_start, period_end=subscription.current_period_end, at=at,
        old_unit_cents=old_price, old_quantity=old_quantity, new_unit_cents=new_price, new_quantity=new_quantity,
    )
    record(
        session, subscription, "changed", by=by, proration_date=at.isoformat(), credit_cents=proration.credit_cents,
        charge_cents=proration.charge_cents, net_cents=proration.net_cents, **_changes(revert, subscription, row),
    )
    if proration.net_cents <= 0:
        row.credit_cents += -proration.net_cents  # never refunded: taken off the next invoices
        session.flush()
        return Changed(subscription.id, proration, None, None)
    new_name = (new_product or old_product).name if (new_product or old_product) else subscription.product_id
    old_name = old_product.name if old_product else revert["product_id"]
    period = {"period_start": at, "period_end": subscription.current_period_end}
    lines = [
        invoices.LineIn(f"Unused time on {old_name} × {old_quantity}", proration.credit_cents, kind="proration",
                        product_id=revert["product_id"], **period),
        invoices.LineIn(f"Remaining time on {new_name} × {new_quantity}", proration.charge_cents, kind="proration",
                        product_id=subscription.product_id, **period),
    ]
    used = min(row.credit_cents, proration.net_cents)
    if used:
        row.credit_cents -= used
        lines.append(invoices.LineIn("Credit from earlier changes", -used, kind="credit"))
    invoice = charging.issue(session, settings, subscription, lines, by=by)
    payment_id = charging.start_payment(session, security, subscription, invoice, "change", by=by, revert=revert)
    session.flush()
    return Changed(subscription.id, proration, invoice.id, payment_id)


def _changes(before: dict[str, Any], subscription: Subscription, row: SubscriptionBilling) -> dict[str, Any]:
    return {
        "from_product_id": before["product_id"], "to_product_id": subscription.product_id,
        "from_quantity": before["quantity"], "to_quantity": row.quantity,
        "from_price_cents": before["price_cents"], "to_price_cents": subscription.price_cents,
    }


# Cancelling, resuming, pausing


@dataclass(frozen=True)
class Cancelled:
    subscription_id: str
    refund_payment_id: str | None = None
    refund_cents: int = 0


def cancel(
    session: Session, principal: Principal, subscription_id: str, *, at_period_end: bool, refund: bool = False
) -> Cancelled:
    """At period end: the subscription stays as it is until its period ends, then the renewal
    sweep cancels it (``resume`` undoes this). Now: cancelled at once, an outstanding invoice
    voided; with ``refund`` (the shop's admins) the unused time of the period paid is refunded,
    prorated to the second, after this transaction (see the API)."""
    subscription, row = _locked(session, principal, subscription_id)
    by = actor(principal)
    if refund and at_period_end:
        raise InvalidInput(
            "a refund goes with cancelling now: give at_period_end false",
            errors=[{"field": "refund", "message": "only with at_period_end false"}],
        )
    if refund:
        principal.require_admin()
    if subscription.status == "cancelled":
        raise SubscriptionNotChangeable(f"subscription {subscription.id} is cancelled already")
    if at_period_end:
        if subscription.status == "past_due":
            raise SubscriptionNotChangeable(f"subscription {subscription.id} is past due: cancel it now instead")
        if not subscription.cancel_at_period_end:
            subscription.cancel_at_period_end = True
            record(session, subscription, "cancel_scheduled", by=by, at=subscription.current_period_end.isoformat())
        session.flush()
        memberships.follow_renewal(session, subscription)
        return Cancelled(subscription.id)
    _no_payment_under_way(session, subscription)
    now = clock.now()
    refund_payment_id, refund_cents = None, 0
    if refund and subscription.status == "active":
        refund_payment_id, refund_cents = _unused_time(session, subscription, row, now)
    # Now means now: the period ends here, so what it granted (a membership) ends with it, whether
    # or not the unused time is refunded. Cancel at period end to keep the time paid for.
    was = subscription.current_period_end
    subscription.current_period_end = max(min(now, was), subscription.current_period_start)
    SUBSCRIPTION.move(
        session, subscription, "cancelled", by=by, reason="cancelled_now", refund_cents=refund_cents or None,
        period_end_was=was.isoformat(),
    )
    row.cancelled_at = now
    row.next_retry_at = None
    if row.outstanding_invoice_id:
        outstanding = session.get(Invoice, row.outstanding_invoice_id)
        if outstanding is not None and outstanding.status in ("open", "uncollectible"):
            invoices.void(session, outstanding, by=by)
    session.flush()
    memberships.follow_renewal(session, subscription)
    return Cancelled(subscription.id, refund_payment_id, refund_cents)


def _unused_time(session: Session, subscription: Subscription, row: SubscriptionBilling, now: Any) -> tuple[str | None, int]:
    """The last completed payment of the subscription, and the unused time of the period to give back from it."""
    from billfold.subscriptions.proration import prorated, seconds

    paid = session.scalars(
        sa.select(Payment).where(Payment.subscription_id == subscription.id, Payment.status == "completed")
        .order_by(Payment.id.desc()).limit(1)
    ).first()
    total = seconds(subscription.current_period_start, subscription.current_period_end)
    if paid is None or total <= 0:
        return None, 0
    remaining = seconds(min(max(now, subscription.current_period_start), subscription.current_period_end), subscription.current_period_end)
    unused = prorated(subscription.price_cents, row.quantity, remaining, total)
    amount = min(unused, paid.amount_cents - refunded_cents(session, paid.id))
    return (paid.id, amount) if amount > 0 else (None, 0)


def resume(session: Session, principal: Principal, subscription_id: str) -> Subscription:
    """Undo a cancellation at period end, before the period ends."""
    subscription, _ = _locked(session, principal, subscription_id)
    if subscription.status == "cancelled":
        raise SubscriptionNotChangeable(f"subscription {subscription.id} is cancelled; subscribe again instead")
    if subscription.cancel_at_period_end:
        ended = subscription.current_period_end
        if ended is not None and clock.ensure_utc(ended) <= clock.now():
            # The worker may not have ended it yet, but the cancellation took effect when the period did.
            raise SubscriptionNotChangeable(
                f"subscription {subscription.id} ended with its period at {ended.isoformat()}; subscribe again instead"
            )
        subscription.cancel_at_period_end = False
        record(session, subscription, "cancel_undone", by=actor(principal))
        session.flush()
        memberships.follow_renewal(session, subscription)
    return subscription


def pause(session: Session, principal: Principal, subscription_id: str) -> Subscription:
    """Stop renewals: the paid period runs out, and nothing more is invoiced until ``unpause``.
    The spec's status stays ``active``; ``subscription_billing.paused_at`` says it is paused."""
    subscription, row = _locked(session, principal, subscription_id)
    if subscription.status != "active":
        raise SubscriptionNotChangeable(f"subscription {subscription.id} is {subscription.status}; only an active one pauses")
    if row.paused_at is None:
        row.paused_at = clock.now()
        record(session, subscription, "paused", by=actor(principal))
        session.flush()
        memberships.follow_renewal(session, subscription)
    return subscription


def unpause(session: Session, principal: Principal, subscription_id: str) -> Subscription:
    """Renewals go on. If the paid period ended during the pause, billing starts again from now:
    the subscription becomes due at once, and the renewal sweep charges a new period anchored on
    this moment."""
    subscription, row = _locked(session, principal, subscription_id)
    if row.paused_at is None:
        return subscription
    now = clock.now()
    row.paused_at = None
    restarted = subscription.current_period_end <= now
    if restarted:
        row.billing_anchor, row.period_index = now, -1
        subscription.current_period_start = subscription.current_period_end = now
    record(session, subscription, "unpaused", by=actor(principal), restarted=restarted or None)
    session.flush()
    memberships.follow_renewal(session, subscription)
    return subscription


def migrate_price(session: Session, principal: Principal, subscription_id: str, price_cents: int | None) -> Subscription:
    """(The shop's admins.) Move a subscription to a new price from its next period: the catalog's
    current price, or ``price_cents``. Without this, a subscription keeps the price agreed to."""
    principal.require_admin()
    subscription, _ = _locked(session, principal, subscription_id)
    if subscription.status == "cancelled":
        raise SubscriptionNotChangeable(f"subscription {subscription.id} is cancelled")
    product = session.get(Product, subscription.product_id)
    assert product is not None
    new = price_cents if price_cents is not None else product.price_cents
    if new != subscription.price_cents:
        record(session, subscription, "price_migrated", by=actor(principal), from_price_cents=subscription.price_cents, to_price_cents=new)
        subscription.price_cents = new
        session.flush()
    return subscription
