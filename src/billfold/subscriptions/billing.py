"""Charging a subscription: the first period, a trial's end, a renewal, a dunning retry, a plan
change. Every charge runs in three phases around the one provider call, as checkout does
(orders/checkout.py):

1. **claim** (subscription row locked; by a sweep with ``FOR UPDATE SKIP LOCKED``): decide what is
   owed, issue the invoice, advance the period, and create a ``pending`` payment of the invoice,
   all in one transaction. The payment's id is the provider's idempotency key
   (``billfold-<payment id>-charge``). Because the period moves forward in the same transaction
   that issues its invoice, a period is invoiced exactly once however many workers look at it.
2. **charge**: one call to the provider, outside any transaction.
3. **record** (subscription and payment locked): move the payment by its state machine, and the
   invoice and the subscription with it (paid → active; declined → dunning, see dunning.py). An
   outcome recorded already is left alone.

A crash or a provider timeout between 2 and 3 leaves the payment ``pending``; the renewal sweep
takes such payments up again after ``STALE_AFTER`` with the same provider key, so the provider
answers with the charge it made instead of charging twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from billfold.accounts.addresses import Owner
from billfold.accounts.security import Security
from billfold.config import Settings
from billfold.invoices import service as invoices
from billfold.kit import clock
from billfold.kit.db import reading, transaction
from billfold.kit.db.dialects import for_update
from billfold.kit.money import Money
from billfold.models import Invoice, Payment, PaymentMethod, Product, Subscription, SubscriptionBilling
from billfold.orders import checkout, totals
from billfold.orders.states import PAYMENT
from billfold.payments import customers, gateways, methods
from billfold.providers.base import ChargeResult, ChargeStatus
from billfold.providers.errors import Declined, ProviderError, ProviderUnavailable
from billfold.subscriptions import dunning, periods
from billfold.subscriptions.states import SUBSCRIPTION, record

STALE_AFTER = timedelta(minutes=10)  # a pending payment this old lost its worker: take it up again
NO_METHOD = "no_payment_method"


@dataclass(frozen=True)
class Charged:
    """How a charge ended: ``paid``, ``declined`` or ``pending`` (the provider did not answer)."""

    outcome: str
    subscription_id: str
    payment_id: str | None
    invoice_id: str | None
    error: Exception | None = None


def owner_of(subscription: Subscription) -> Owner:
    if subscription.organization_id:
        return Owner.organization(subscription.organization_id)
    return Owner.user(subscription.user_id or "")


def meta(row: Any) -> dict[str, Any]:
    return dict(row.metadata_ or {})


def lock_subscription(session: Session, subscription_id: str) -> tuple[Subscription, SubscriptionBilling]:
    statement = (
        sa.select(Subscription).where(Subscription.id == subscription_id).execution_options(populate_existing=True)
    )
    subscription = session.scalars(for_update(statement, session)).one()
    billing = session.scalars(
        for_update(sa.select(SubscriptionBilling).where(SubscriptionBilling.subscription_id == subscription_id), session)
        .execution_options(populate_existing=True)
    ).one()
    return subscription, billing


def interval_of(subscription: Subscription) -> str:
    return meta(subscription).get("billing_interval", "monthly")


def amount_of(subscription: Subscription, billing: SubscriptionBilling) -> int:
    return subscription.price_cents * billing.quantity


def plan_lines(
    session: Session, subscription: Subscription, billing: SubscriptionBilling
) -> list[invoices.LineIn]:
    """The plan for the current period, and any credit carried (used up to the plan's amount)."""
    product = session.get(Product, subscription.product_id)
    name = product.name if product else subscription.product_id
    amount = amount_of(subscription, billing)
    lines = [
        invoices.LineIn(
            description=f"{name} × {billing.quantity}" if billing.quantity > 1 else name,
            amount_cents=amount,
            quantity=billing.quantity,
            unit_amount_cents=subscription.price_cents,
            kind="item",
            product_id=subscription.product_id,
            period_start=subscription.current_period_start,
            period_end=subscription.current_period_end,
        )
    ]
    used = min(billing.credit_cents, amount)
    if used:
        billing.credit_cents -= used
        lines.append(invoices.LineIn(description="Credit from earlier changes", amount_cents=-used, kind="credit"))
    return lines


def issue(
    session: Session, settings: Settings, subscription: Subscription, lines: list[invoices.LineIn], *, by: str | None
) -> Invoice:
    """An open invoice of these lines, taxed by the country of the billing address the customer
    subscribed with."""
    amount = sum(line.amount_cents for line in lines)
    rates = settings.tax_rates if settings.tax_rates is not None else totals.DEFAULT_TAX_RATES
    country = meta(subscription).get("billing_country")
    tax = totals.CountryTaxTable(rates).tax(max(amount, 0), subscription.currency, country)
    return invoices.issue_invoice(
        session,
        currency=subscription.currency,
        lines=lines,
        user_id=subscription.user_id,
        organization_id=subscription.organization_id,
        subscription_id=subscription.id,
        billing_address_id=meta(subscription).get("billing_address_id"),
        tax_cents=tax,
        provider_id=subscription.provider_id,
        by=by,
    )


def method_to_charge(session: Session, subscription: Subscription) -> PaymentMethod | None:
    """The subscription's own method while the customer still has it, else their default."""
    owner = owner_of(subscription)
    if subscription.payment_method_id:
        found = session.scalars(
            methods.methods_of(owner).where(PaymentMethod.id == subscription.payment_method_id)
        ).one_or_none()
        if found is not None:
            return found
    return methods.default_method(session, owner)


def start_payment(
    session: Session,
    security: Security,
    subscription: Subscription,
    invoice: Invoice,
    purpose: str,
    *,
    by: str | None,
    extra: dict[str, Any] | None = None,
) -> str | None:
    """A pending payment of ``invoice`` (its id), or None when there is nothing to charge (the
    invoice is paid at once)."""
    if invoice.total_cents <= 0:
        invoices.mark_paid(session, invoice, by=by)
        return None
    method = method_to_charge(session, subscription)
    data: dict[str, Any] = {"provider_status": "created", "invoice_id": invoice.id, "purpose": purpose, **(extra or {})}
    provider_id = subscription.provider_id
    if method is not None:
        provider_id = method.provider_id
        adapter = gateways.adapter_for_provider(session, security, provider_id)
        customer = customers.ensure_provider_customer(session, adapter, owner_of(subscription))
        data |= {
            "provider_payment_method_id": method.provider_payment_method_id,
            "provider_customer_id": customer.provider_customer_id,
        }
    payment = Payment(
        subscription_id=subscription.id,
        user_id=subscription.user_id,
        organization_id=subscription.organization_id,
        payment_method_id=method.id if method else None,
        provider_id=provider_id,
        amount_cents=invoice.total_cents,
        currency=invoice.currency,
        status="pending",
        metadata_=data,
    )
    session.add(payment)
    session.flush()
    PAYMENT.start(
        session, payment, "pending", by=by, subscription_id=subscription.id, invoice_id=invoice.id, amount_cents=payment.amount_cents
    )
    return payment.id


def _call(adapter: Any, payment: Payment, off_session: bool) -> tuple[ChargeResult | None, Exception | None]:
    data = meta(payment)
    if not data.get("provider_payment_method_id"):
        return None, Declined("the customer has no payment method to charge", "generic_decline")
    try:
        result = adapter.charge(
            amount=Money(payment.amount_cents, payment.currency),
            idempotency_key=checkout.charge_key(payment.id),
            customer_id=data.get("provider_customer_id"),
            payment_method_id=data.get("provider_payment_method_id"),
            off_session=off_session,
            description=f"Subscription {payment.subscription_id}",
            metadata={"payment_id": payment.id, "subscription_id": payment.subscription_id or "", "invoice_id": data.get("invoice_id", "")},
        )
    except Declined as declined:
        return declined.charge, declined
    except ProviderUnavailable:
        raise
    except ProviderError as refused:  # e.g. the provider no longer knows the saved method
        return None, refused
    if result.status == ChargeStatus.REQUIRES_ACTION:
        # No one is there to authenticate a recurring charge: end it, and treat it as declined.
        ended = adapter.cancel(charge_id=result.id, idempotency_key=f"billfold-{payment.id}-cancel")
        return ended, Declined("the bank asks the customer to authenticate this payment", "authentication_required")
    return result, None


def settle(
    sessions: sessionmaker[Session], security: Security, settings: Settings, payment_id: str, *, by: str | None = None,
    after: Callable[[Session, Charged], None] | None = None,
) -> Charged:
    """Phases 2 and 3 for a pending payment of a subscription. ``after`` runs in the recording
    transaction (the API stores its answer under the Idempotency-Key there); not when the
    provider did not answer."""
    with reading(sessions) as session:
        payment = session.get(Payment, payment_id)
        assert payment is not None and payment.subscription_id is not None
        adapter = None
        if meta(payment).get("provider_payment_method_id"):
            adapter = gateways.adapter_for_provider(session, security, payment.provider_id)
    off_session = meta(payment).get("purpose") not in ("first", "change")
    try:
        result, error = _call(adapter, payment, off_session)
    except ProviderUnavailable as unavailable:
        return Charged("pending", payment.subscription_id, payment.id, meta(payment).get("invoice_id"), unavailable)
    with transaction(sessions) as session:
        subscription, billing = lock_subscription(session, payment.subscription_id)
        payment = checkout.lock_payment(session, payment_id)
        if payment.status == "pending" or (
            payment.status == "failed" and result is not None and result.status == ChargeStatus.SUCCEEDED
        ):
            checkout.apply_outcome(session, payment, result, by=by, error=error)
            if payment.status in ("completed", "failed"):
                record_outcome(session, settings, subscription, billing, payment, error, by=by)
        outcome = {"completed": "paid", "refunded": "paid", "failed": "declined"}.get(payment.status, "pending")
        charged = Charged(outcome, subscription.id, payment.id, meta(payment).get("invoice_id"), error if outcome == "declined" else None)
        if after is not None:
            after(session, charged)
        return charged


def record_outcome(
    session: Session,
    settings: Settings,
    subscription: Subscription,
    billing: SubscriptionBilling,
    payment: Payment,
    error: Exception | None,
    *,
    by: str | None,
) -> None:
    data = meta(payment)
    invoice = session.get(Invoice, data["invoice_id"])
    assert invoice is not None
    purpose = data.get("purpose")
    if payment.status == "completed":
        invoices.mark_paid(session, invoice, by=by)
        if subscription.status in ("trialing", "past_due"):
            SUBSCRIPTION.move(session, subscription, "active", by=by, invoice_id=invoice.id, payment_id=payment.id)
        dunning.clear(billing, invoice.id)
        return
    if subscription.status == "cancelled":
        invoices.void(session, invoice, by=by)
        return
    if purpose == "first":  # the customer is there: refused (402), the subscription never was active
        SUBSCRIPTION.move(session, subscription, "cancelled", by=by, reason="first_payment_declined", payment_id=payment.id)
        billing.cancelled_at = clock.now()
        # No period was paid for: none runs on (a membership following it grants until this end).
        subscription.current_period_end = subscription.current_period_start
        invoices.void(session, invoice, by=by)
    elif purpose == "change":  # the upgrade did not go through: the plan stays as it was
        revert = data["revert"]
        subscription.product_id, subscription.price_cents = revert["product_id"], revert["price_cents"]
        billing.quantity, billing.credit_cents = revert["quantity"], revert["credit_cents"]
        invoices.void(session, invoice, by=by)
        record(session, subscription, "change_reverted", by=by, payment_id=payment.id, invoice_id=invoice.id)
    else:
        dunning.failed(session, settings, subscription, billing, invoice, error, by=by)


def charge_period(
    session: Session, security: Security, settings: Settings, subscription: Subscription, billing: SubscriptionBilling,
    index: int, purpose: str, *, by: str | None,
) -> str | None:
    """Phase 1 for period ``index``: move the subscription into it, invoice it, and start its
    payment (the payment's id, or None when nothing is owed)."""
    start, end = periods.period(billing.billing_anchor, interval_of(subscription), index)
    billing.period_index = index
    subscription.current_period_start, subscription.current_period_end = start, end
    invoice = issue(session, settings, subscription, plan_lines(session, subscription, billing), by=by)
    record(session, subscription, "invoiced", by=by, invoice_id=invoice.id, purpose=purpose,
           period_start=start.isoformat(), period_end=end.isoformat(), total_cents=invoice.total_cents)
    payment_id = start_payment(session, security, subscription, invoice, purpose, by=by)
    if payment_id is None and subscription.status == "trialing":
        SUBSCRIPTION.move(session, subscription, "active", by=by, invoice_id=invoice.id)
    session.flush()
    return payment_id


def claim_due(session: Session, statement: sa.Select[Any], limit: int) -> list[tuple[Subscription, SubscriptionBilling]]:
    """Due subscriptions with their billing rows, locked; rows another worker holds are passed over."""
    statement = statement.order_by(Subscription.current_period_end, Subscription.id).limit(limit)
    rows = session.execute(
        for_update(statement, session, skip_locked=True).execution_options(populate_existing=True)
    ).all()
    return [(row[0], row[1]) for row in rows]


def due(now: Any) -> sa.Select[Any]:
    return sa.select(Subscription, SubscriptionBilling).join(
        SubscriptionBilling, SubscriptionBilling.subscription_id == Subscription.id
    ).where(Subscription.current_period_end <= now)


def stale_payments(session: Session, limit: int) -> list[str]:
    """Subscription payments whose worker never recorded an outcome, claimed for taking up again."""
    statement = (
        sa.select(Payment.id)
        .where(
            Payment.subscription_id.is_not(None),
            Payment.status == "pending",
            Payment.created_at <= clock.now() - STALE_AFTER,
        )
        .order_by(Payment.id)
        .limit(limit)
    )
    return list(session.scalars(for_update(statement, session, skip_locked=True)))
