"""Charging a subscription: the first period, a trial's end, a renewal, a dunning retry, a plan
change. Billing decides what is owed and issues the invoice; the payment runs through the payment
engine (payments/engine.py), as a checkout's does, in three phases around the one provider call:

1. **claim** (subscription row locked; by a sweep with ``FOR UPDATE SKIP LOCKED``): decide what is
   owed, issue the invoice, advance the period, and start a ``pending`` payment of the invoice
   (``engine.start_payment``), all in one transaction. The payment's id makes the provider's
   idempotency key (``engine.provider_key(payment id, "charge")``). Because the period moves
   forward in the same transaction that issues its invoice, a period is invoiced exactly once
   however many workers look at it.
2. **charge** (``engine.charge``): one call to the provider, outside any transaction; a charge that
   would wait for the customer's action is ended and declined (no one is there to authenticate).
3. **record** (subscriptions, then payments, locked): the engine moves the payment by its state
   machine, and ``SubscriptionCharges`` (the subscription's side of the engine) the invoice and the
   subscription with it (paid → active; declined → dunning, see dunning.py). An outcome recorded
   already is left alone.

A crash or a provider timeout between 2 and 3 leaves the payment ``pending``; the renewal sweep
takes such payments up again after ``engine.STALE_AFTER`` with the same provider key, so the
provider answers with the charge it made instead of charging twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from billfold.kit.db.dialects import for_update
from billfold.models import Invoice, Payment, PaymentMethod, Product, Subscription, SubscriptionBilling, User
from billfold.payments import customers, engine, provider_config
from billfold.payments.details import PaymentDetails
from billfold.payments.engine import ChargeFor, Outcome
from billfold.subscriptions import dunning, periods
from billfold.subscriptions.states import SUBSCRIPTION, record

log = logging.getLogger("billfold.subscriptions")
NO_METHOD = "no_payment_method"




def meta(row: Any) -> dict[str, Any]:
    return dict(row.metadata_ or {})


def lock_subscription(session: Session, subscription_id: str) -> tuple[Subscription, SubscriptionBilling | None]:
    """The subscription and its billing row, locked; the billing row is None for a subscription
    Billfold did not make (an import, a row made by hand), which it can show but not bill."""
    statement = (
        sa.select(Subscription).where(Subscription.id == subscription_id).execution_options(populate_existing=True)
    )
    subscription = session.scalars(for_update(statement, session)).one()
    billing = session.scalars(
        for_update(sa.select(SubscriptionBilling).where(SubscriptionBilling.subscription_id == subscription_id), session)
        .execution_options(populate_existing=True)
    ).one_or_none()
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
    revert: dict[str, Any] | None = None  # a plan change's: the plan to go back to if it is declined


def start_payment(
    session: Session,
    security: Security,
    subscription: Subscription,
    invoice: Invoice,
    purpose: str,
    *,
    by: str | None,
    revert: dict[str, Any] | None = None,
) -> str | None:
    """A pending payment of ``invoice`` (its id), or None when there is nothing to charge (the
    invoice is paid at once)."""
    payment_id = start_payments(session, security, [ToCharge(subscription, invoice, purpose, revert)], by=by)[0]
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
    adapters = {provider_id: provider_config.adapter_for_provider(session, security, provider_id) for provider_id in by_provider}
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
        provider_id, customer_id = subscription.provider_id, None
        if method is not None:
            provider_id = method.provider_id
            owner = owner_of(subscription)
            customer = known[provider_id].get(owner)
            if customer is None:  # first charge at this provider: made (owner locked) and remembered
                customer = customers.ensure_provider_customer(session, adapters[provider_id], owner)
                known[provider_id][owner] = customer
            customer_id = customer.provider_customer_id
        payment = engine.start_payment(
            session, amount_cents=invoice.total_cents, currency=invoice.currency, provider_id=provider_id, method=method,
            user_id=subscription.user_id, organization_id=subscription.organization_id, subscription_id=subscription.id,
            customer_id=customer_id, details=PaymentDetails(invoice_id=invoice.id, purpose=one.purpose, revert=one.revert), by=by,
        )
        started.append(payment.id)
    return started


class SubscriptionCharges:
    """A subscription's invoice, as what its payments pay for: paid → the invoice paid and the
    subscription active; declined → the first period never was, a change is undone, or dunning."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._locked: dict[str, tuple[Subscription, SubscriptionBilling]] = {}
        self._held: list[object] = []

    def read(self, session: Session, payments: Sequence[Payment]) -> None:
        """Nothing more to read: the payment says what it charges for."""

    def describe(self, payment: Payment) -> ChargeFor:
        details = PaymentDetails.of(payment)
        return ChargeFor(
            f"Subscription {payment.subscription_id}",
            {"payment_id": payment.id, "subscription_id": payment.subscription_id or "", "invoice_id": details.invoice_id or ""},
            off_session=details.purpose not in ("first", "change"),  # else the customer is there, asking
            may_wait=False,  # no one waits to authenticate a recurring charge
        )

    def lock(self, session: Session, payments: Sequence[Payment]) -> None:
        """The subscriptions and their billing rows locked (in that order, each by id), before
        their payments; the invoices, plans and addressees read once for the batch."""
        subscription_ids = sorted({p.subscription_id for p in payments if p.subscription_id})
        statement = (
            sa.select(Subscription, SubscriptionBilling)
            .join(SubscriptionBilling, SubscriptionBilling.subscription_id == Subscription.id)
            .where(Subscription.id.in_(subscription_ids))
            .order_by(Subscription.id)
        )
        self._locked = {
            row[0].id: (row[0], row[1])
            for row in session.execute(for_update(statement, session).execution_options(populate_existing=True))
        }
        # Held in the identity map for record_outcome, the receipts and the dunning mails.
        invoice_ids = [i for i in (PaymentDetails.of(p).invoice_id for p in payments) if i]
        held = [subscription for subscription, _ in self._locked.values()]
        # Kept referenced here: the identity map holds unchanged rows only weakly, so a list read
        # and dropped would be gone again (and each later get a query, and an autoflush).
        self._held = [
            *session.scalars(sa.select(Invoice).where(Invoice.id.in_(invoice_ids))).all(),
            *session.scalars(sa.select(Product).where(Product.id.in_({s.product_id for s in held}))).all(),
            *session.scalars(sa.select(User).where(User.id.in_({s.user_id for s in held if s.user_id}))).all(),
        ]

    def charged(self, session: Session, payment: Payment, error: Exception | None, *, by: str | None) -> None:
        if payment.status in ("completed", "failed"):
            subscription, billing = self._locked[payment.subscription_id or ""]
            record_outcome(session, self.settings, subscription, billing, payment, error, by=by)

    def refunded(self, session: Session, payment: Payment, *, by: str | None) -> None:
        """A refunded subscription payment changes nothing more (cancelling refunds the unused time)."""


def settle(
    sessions: sessionmaker[Session], security: Security, settings: Settings, payment_id: str, *, by: str | None = None,
    after: Callable[[Session, Outcome], None] | None = None,
) -> Outcome:
    """Phases 2 and 3 for a pending payment of a subscription (``engine.settle_charge``). ``after``
    runs in the recording transaction (the API stores its answer under the Idempotency-Key
    there); not when the provider did not answer (``UNKNOWN``: the payment stays pending)."""
    return engine.settle_charge(sessions, security, settings, payment_id, engine.charge, by=by, after=after)


def settle_many(
    sessions: sessionmaker[Session], security: Security, settings: Settings, payment_ids: list[str], *, by: str | None = None,
) -> list[Outcome]:
    """:func:`settle` for a batch (``engine.run``): each payment charged with its own key, up to
    ``settings.provider_calls_at_once`` at a time, with no transaction open; then
    every outcome recorded in one transaction (or, should that fail, each in its own); an outcome
    that cannot be recorded leaves its payment pending for the stale-payment sweep, which asks the
    provider again with the same key."""
    if not payment_ids:
        return []
    return engine.run(sessions, security, engine.Charges(engine.charge, settings, by, sessions), payment_ids,
                      concurrency=settings.provider_calls_at_once)


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
    details = PaymentDetails.of(payment)
    invoice = session.get(Invoice, details.invoice_id)
    assert invoice is not None
    purpose = details.purpose
    if payment.status == "completed":
        invoices.mark_paid(session, invoice, by=by)
        if subscription.status in ("trialing", "past_due"):
            SUBSCRIPTION.move(session, subscription, "active", by=by, invoice_id=invoice.id, payment_id=payment.id)
        dunning.clear(billing, invoice.id)
        if purpose in ("renewal", "retry"):  # a period after the first, paid (webhooks out tell it)
            record(session, subscription, "renewed", by=by, invoice_id=invoice.id, payment_id=payment.id)
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
        revert = details.revert
        assert revert is not None
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
            elif one.purpose == "renewal":
                record(session, one.subscription, "renewed", by=by, invoice_id=invoice.id)
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
    statement = engine.stale_pending(sa.select(Payment.id).where(Payment.subscription_id.is_not(None))).limit(limit)
    return list(session.scalars(for_update(statement, session, skip_locked=True)))
