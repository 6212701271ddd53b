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

import logging

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from billfold import tax as taxes
from billfold.accounts.access import Owner, owner_of
from billfold.accounts.security import Security
from billfold.config import Settings
from billfold.invoices import receipts
from billfold.invoices import service as invoices
from billfold.kit import clock
from billfold.kit.db import reading, transaction
from billfold.kit.db.dialects import for_update
from billfold.kit.ids import new_id
from billfold.kit.money import Money
from billfold.models import Invoice, Payment, PaymentMethod, Product, Subscription, SubscriptionBilling, User
from billfold.orders import checkout
from billfold.orders.states import PAYMENT
from billfold.payments import customers, gateways
from billfold.providers.base import ChargeResult, ChargeStatus
from billfold.providers.errors import Declined, IdempotencyMismatch, ProviderError, ProviderUnavailable
from billfold.subscriptions import dunning, periods
from billfold.subscriptions.states import SUBSCRIPTION, record

log = logging.getLogger("billfold.subscriptions")
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


def invoice_in(settings: Settings, subscription: Subscription, lines: list[invoices.LineIn]) -> invoices.InvoiceIn:
    """The invoice of these lines, taxed by the country of the billing address the customer
    subscribed with."""
    amount = sum(line.amount_cents for line in lines)
    country = meta(subscription).get("billing_country")
    tax = taxes.calculator(settings).tax(max(amount, 0), subscription.currency, country)
    return invoices.InvoiceIn(
        currency=subscription.currency,
        lines=lines,
        user_id=subscription.user_id,
        organization_id=subscription.organization_id,
        subscription_id=subscription.id,
        billing_address_id=meta(subscription).get("billing_address_id"),
        tax_cents=tax,
        provider_id=subscription.provider_id,
    )


def issue(
    session: Session, settings: Settings, subscription: Subscription, lines: list[invoices.LineIn], *, by: str | None
) -> Invoice:
    """An open invoice of these lines (see :func:`invoice_in`)."""
    wanted = invoice_in(settings, subscription, lines)
    return invoices.issue_invoice(session, **{f: getattr(wanted, f) for f in wanted.__dataclass_fields__}, by=by)


def method_to_charge(session: Session, subscription: Subscription) -> PaymentMethod | None:
    """The subscription's own method while the customer still has it, else their default."""
    return methods_to_charge(session, [subscription])[subscription.id]


def methods_to_charge(session: Session, subscriptions: list[Subscription]) -> dict[str, PaymentMethod | None]:
    """:func:`method_to_charge` of each subscription (by id), in two reads for all of them."""
    own_ids = {s.payment_method_id for s in subscriptions if s.payment_method_id}
    own = {m.id: m for m in session.scalars(sa.select(PaymentMethod).where(PaymentMethod.id.in_(own_ids)))} if own_ids else {}
    chosen: dict[str, PaymentMethod | None] = {}
    for subscription in subscriptions:
        method = own.get(subscription.payment_method_id or "")
        if method is not None and owner_of(method) == owner_of(subscription):
            chosen[subscription.id] = method
    lacking = {owner_of(s) for s in subscriptions if s.id not in chosen}
    defaults: dict[Owner, PaymentMethod] = {}
    if lacking:
        rows = session.scalars(
            sa.select(PaymentMethod)
            .where(PaymentMethod.is_default.is_(True), sa.or_(*(owner.owns(PaymentMethod) for owner in lacking)))
            .order_by(PaymentMethod.id.desc())  # the first by id wins, as in methods.default_method
        )
        for row in rows:
            defaults[owner_of(row)] = row
    for subscription in subscriptions:
        if subscription.id not in chosen:
            chosen[subscription.id] = defaults.get(owner_of(subscription))
    return chosen


@dataclass(frozen=True)
class ToCharge:
    """A payment to start: of ``invoice`` for ``subscription``."""

    subscription: Subscription
    invoice: Invoice
    purpose: str
    extra: dict[str, Any] | None = None


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
    payment_id = start_payments(session, security, [ToCharge(subscription, invoice, purpose, extra)], by=by)[0]
    session.flush()
    return payment_id


def start_payments(session: Session, security: Security, wanted: list[ToCharge], *, by: str | None) -> list[str | None]:
    """:func:`start_payment` for many: the methods, adapters and provider customers read once for
    all of them. The payments are added to the session, not flushed."""
    owed = [one for one in wanted if one.invoice.total_cents > 0]
    chosen = methods_to_charge(session, [one.subscription for one in owed]) if owed else {}
    by_provider: dict[str, list[Owner]] = {}
    for one in owed:
        method = chosen[one.subscription.id]
        if method is not None:
            by_provider.setdefault(method.provider_id, []).append(owner_of(one.subscription))
    adapters = {provider_id: gateways.adapter_for_provider(session, security, provider_id) for provider_id in by_provider}
    known = {
        provider_id: customers.provider_customers_of(session, provider_id, owners)
        for provider_id, owners in by_provider.items()
    }
    started: list[str | None] = []
    for one in wanted:
        subscription, invoice = one.subscription, one.invoice
        if invoice.total_cents <= 0:
            invoices.mark_paid(session, invoice, by=by)
            started.append(None)
            continue
        method = chosen[subscription.id]
        data: dict[str, Any] = {
            "provider_status": "created", "invoice_id": invoice.id, "purpose": one.purpose, **(one.extra or {})
        }
        provider_id = subscription.provider_id
        if method is not None:
            provider_id = method.provider_id
            owner = owner_of(subscription)
            customer = known[provider_id].get(owner)
            if customer is None:  # first charge at this provider: made (owner locked) and remembered
                customer = customers.ensure_provider_customer(session, adapters[provider_id], owner)
                known[provider_id][owner] = customer
            data |= {
                "provider_payment_method_id": method.provider_payment_method_id,
                "provider_customer_id": customer.provider_customer_id,
            }
        payment = Payment(
            id=new_id("pay"),
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
        PAYMENT.start(
            session, payment, "pending", by=by, subscription_id=subscription.id, invoice_id=invoice.id,
            amount_cents=payment.amount_cents,
        )
        started.append(payment.id)
    return started


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
    except IdempotencyMismatch as mismatch:  # something was made under this key: not a refusal
        raise ProviderUnavailable(f"the provider holds another request under this payment's key: {mismatch.detail}") from mismatch
    except ProviderError as refused:  # e.g. the provider no longer knows the saved method
        return None, refused
    if result.status == ChargeStatus.REQUIRES_ACTION:
        # No one is there to authenticate a recurring charge: end it, and treat it as declined.
        ended = adapter.cancel(charge_id=result.id, idempotency_key=f"billfold-{payment.id}-cancel")
        return ended, Declined("the bank asks the customer to authenticate this payment", "authentication_required")
    return result, None


@dataclass(frozen=True)
class _Answer:
    """What the provider answered about one payment, to be recorded."""

    payment_id: str
    subscription_id: str
    result: ChargeResult | None
    error: Exception | None


def _charge_all(
    sessions: sessionmaker[Session], security: Security, payment_ids: list[str]
) -> tuple[list[_Answer], list[Charged]]:
    """Phase 2 for each payment: the provider's answers, and the payments it did not answer about
    (left pending, for the stale-payment sweep)."""
    with reading(sessions) as session:
        payments = {p.id: p for p in session.scalars(sa.select(Payment).where(Payment.id.in_(payment_ids)))}
        provider_ids = {p.provider_id for p in payments.values() if meta(p).get("provider_payment_method_id")}
        adapters = {provider_id: gateways.adapter_for_provider(session, security, provider_id) for provider_id in provider_ids}
    answers: list[_Answer] = []
    unanswered: list[Charged] = []
    for payment_id in payment_ids:
        payment = payments[payment_id]
        assert payment.subscription_id is not None
        off_session = meta(payment).get("purpose") not in ("first", "change")
        try:
            result, error = _call(adapters.get(payment.provider_id), payment, off_session)
        except ProviderUnavailable as unavailable:
            unanswered.append(Charged("pending", payment.subscription_id, payment.id, meta(payment).get("invoice_id"), unavailable))
            continue
        answers.append(_Answer(payment.id, payment.subscription_id, result, error))
    return answers, unanswered


def _record_all(session: Session, settings: Settings, answers: list[_Answer], *, by: str | None) -> list[Charged]:
    """Phase 3 for each answer, in the caller's transaction: the subscriptions, their billing rows
    and the payments locked (in that order, each by id), the invoices read once, one flush."""
    subscription_ids = sorted({a.subscription_id for a in answers})
    statement = (
        sa.select(Subscription, SubscriptionBilling)
        .join(SubscriptionBilling, SubscriptionBilling.subscription_id == Subscription.id)
        .where(Subscription.id.in_(subscription_ids))
        .order_by(Subscription.id)
    )
    locked = {
        row[0].id: (row[0], row[1])
        for row in session.execute(for_update(statement, session).execution_options(populate_existing=True))
    }
    payments = {
        p.id: p
        for p in session.scalars(
            for_update(sa.select(Payment).where(Payment.id.in_([a.payment_id for a in answers])).order_by(Payment.id), session)
            .execution_options(populate_existing=True)
        )
    }
    invoice_ids = [meta(p)["invoice_id"] for p in payments.values() if meta(p).get("invoice_id")]
    invoices_read = session.scalars(sa.select(Invoice).where(Invoice.id.in_(invoice_ids))).all()  # noqa: F841  (held in the identity map for record_outcome)
    # The receipts' and dunning mails' plans and addressees, read once for the batch (identity map).
    held = [subscription for subscription, _ in locked.values()]
    products_read = session.scalars(sa.select(Product).where(Product.id.in_({s.product_id for s in held}))).all()  # noqa: F841
    users_read = session.scalars(sa.select(User).where(User.id.in_({s.user_id for s in held if s.user_id}))).all()  # noqa: F841
    charged: list[Charged] = []
    for answer in answers:
        subscription, billing = locked[answer.subscription_id]
        payment, result, error = payments[answer.payment_id], answer.result, answer.error
        if payment.status == "pending" or (
            payment.status == "failed" and result is not None and result.status == ChargeStatus.SUCCEEDED
        ):
            checkout.apply_outcome(session, payment, result, by=by, error=error)
            if payment.status in ("completed", "failed"):
                record_outcome(session, settings, subscription, billing, payment, error, by=by)
        outcome = {"completed": "paid", "refunded": "paid", "failed": "declined"}.get(payment.status, "pending")
        charged.append(
            Charged(outcome, subscription.id, payment.id, meta(payment).get("invoice_id"), error if outcome == "declined" else None)
        )
    session.flush()
    return charged


def settle(
    sessions: sessionmaker[Session], security: Security, settings: Settings, payment_id: str, *, by: str | None = None,
    after: Callable[[Session, Charged], None] | None = None,
) -> Charged:
    """Phases 2 and 3 for a pending payment of a subscription. ``after`` runs in the recording
    transaction (the API stores its answer under the Idempotency-Key there); not when the
    provider did not answer."""
    answers, unanswered = _charge_all(sessions, security, [payment_id])
    if unanswered:
        return unanswered[0]
    with transaction(sessions) as session:
        [charged] = _record_all(session, settings, answers, by=by)
        if after is not None:
            after(session, charged)
        return charged


def settle_many(
    sessions: sessionmaker[Session], security: Security, settings: Settings, payment_ids: list[str], *, by: str | None = None,
) -> list[Charged]:
    """:func:`settle` for a batch: each payment charged with its own key, then every outcome
    recorded in one transaction. Should that transaction fail (a deadlock, a bug one payment
    trips), each outcome is recorded in a transaction of its own instead, so one payment cannot
    hold back the others; an outcome that still cannot be recorded leaves its payment pending
    for the stale-payment sweep, which asks the provider again with the same key."""
    if not payment_ids:
        return []
    answers, charged = _charge_all(sessions, security, payment_ids)
    if not answers:
        return charged
    try:
        with transaction(sessions) as session:
            return charged + _record_all(session, settings, answers, by=by)
    except Exception:  # noqa: BLE001  (each alone below; what fails there is logged)
        if len(answers) == 1:
            raise
    for answer in answers:
        try:
            with transaction(sessions) as session:
                charged += _record_all(session, settings, [answer], by=by)
        except Exception as error:  # noqa: BLE001
            log.warning("outcome of subscription payment %s not recorded, left pending: %s", answer.payment_id, error)
            charged.append(Charged("pending", answer.subscription_id, answer.payment_id, None, error))
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
        receipts.subscription_receipt(session, settings, subscription, invoice, payment, quantity=billing.quantity)
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


@dataclass(frozen=True)
class PeriodToCharge:
    """A subscription to move into its period ``index`` and charge for it."""

    subscription: Subscription
    billing: SubscriptionBilling
    index: int
    purpose: str


def charge_period(
    session: Session, security: Security, settings: Settings, subscription: Subscription, billing: SubscriptionBilling,
    index: int, purpose: str, *, by: str | None,
) -> str | None:
    """Phase 1 for period ``index``: move the subscription into it, invoice it, and start its
    payment (the payment's id, or None when nothing is owed)."""
    return charge_periods(session, security, settings, [PeriodToCharge(subscription, billing, index, purpose)], by=by)[0]


def charge_periods(
    session: Session, security: Security, settings: Settings, wanted: list[PeriodToCharge], *, by: str | None
) -> list[str | None]:
    """:func:`charge_period` for a batch, in the caller's transaction: products, methods, adapters
    and provider customers read once, rows written a table at a time, and the invoice numbers
    taken last, so the series' lock is held only until the commit that follows."""
    if not wanted:
        return []
    product_ids = {one.subscription.product_id for one in wanted}
    products = session.scalars(sa.select(Product).where(Product.id.in_(product_ids))).all()  # noqa: F841  (held in the identity map for plan_lines)
    to_issue = []
    for one in wanted:
        subscription, billing = one.subscription, one.billing
        start, end = periods.period(billing.billing_anchor, interval_of(subscription), one.index)
        billing.period_index = one.index
        subscription.current_period_start, subscription.current_period_end = start, end
        to_issue.append(invoice_in(settings, subscription, plan_lines(session, subscription, billing)))
    issued = invoices.draft_invoices(session, to_issue, by=by)
    for one, invoice in zip(wanted, issued, strict=True):
        record(session, one.subscription, "invoiced", by=by, invoice_id=invoice.id, purpose=one.purpose,
               period_start=one.subscription.current_period_start.isoformat(),
               period_end=one.subscription.current_period_end.isoformat(), total_cents=invoice.total_cents)
    owed = [ToCharge(one.subscription, invoice, one.purpose) for one, invoice in zip(wanted, issued, strict=True) if invoice.total_cents > 0]
    started = dict(zip((o.invoice.id for o in owed), start_payments(session, security, owed, by=by), strict=True))
    session.flush()
    invoices.open_invoices(session, issued, by=by)
    for one, invoice in zip(wanted, issued, strict=True):
        if invoice.id not in started:  # nothing owed: paid at once
            invoices.mark_paid(session, invoice, by=by)
            if one.subscription.status == "trialing":
                SUBSCRIPTION.move(session, one.subscription, "active", by=by, invoice_id=invoice.id)
    session.flush()
    return [started.get(invoice.id) for invoice in issued]


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
