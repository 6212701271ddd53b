"""The worker's side of subscriptions: renewals, trial ends and dunning retries, found in the
database and claimed with ``FOR UPDATE SKIP LOCKED`` (DESIGN.md rule 7). Each sweep claims a
batch in one transaction (phase 1 of billing.py for every row), commits, then charges each
payment with its own key and records the batch's outcomes in one transaction. Each returns how many subscriptions
(or payments) it moved; run again while it returns more than nothing."""

from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa

from billfold.kit import clock
from billfold.kit.db import transaction
from billfold.kit.errors import BillfoldError
from billfold.kit.sweeps import Context, sweep
from billfold.models import Invoice, Payment, Subscription, SubscriptionBilling
from billfold.subscriptions import charging, dunning
from billfold.subscriptions.states import SUBSCRIPTION, record

BATCH = 50
log = logging.getLogger("billfold.subscriptions")
SYSTEM = "system"


def _settle_all(context: Context, payment_ids: list[str]) -> None:
    try:
        charging.settle_many(context.sessions, context.security, context.settings, payment_ids, by=SYSTEM)
    except BillfoldError:  # e.g. a provider was switched off: settle those one by one, the rest go on
        for payment_id in payment_ids:
            try:
                charging.settle(context.sessions, context.security, context.settings, payment_id, by=SYSTEM)
            except BillfoldError as error:  # the payment stays pending
                log.warning("subscription payment %s left pending: %s", payment_id, error.detail)


@sweep("subscriptions.renew", every=timedelta(minutes=1), drain=True)
def renew_due_subscriptions(context: Context) -> int:
    """Active subscriptions whose period has ended: the next period invoiced and charged off-session
    (or, with ``cancel_at_period_end``, cancelled). Paused ones are left alone. Also takes up
    subscription payments that lost their worker (see engine.STALE_AFTER)."""
    now = clock.now()
    payment_ids: list[str] = []
    with transaction(context.sessions) as session:
        claimed = charging.claim_due(
            session,
            charging.due(now).where(Subscription.status == "active", SubscriptionBilling.paused_at.is_(None)),
            BATCH,
        )
        # Before the renewals: their invoice numbers, taken last, hold the series' lock until the commit.
        stale = charging.stale_payments(session, BATCH)
        renewing = []
        for subscription, row in claimed:
            if subscription.cancel_at_period_end:
                SUBSCRIPTION.move(session, subscription, "cancelled", by=SYSTEM, reason="period_end")
                row.cancelled_at = subscription.current_period_end
                continue
            renewing.append(charging.PeriodToCharge(subscription, row, row.period_index + 1, "renewal"))
        started = charging.charge_periods(session, context.security, context.settings, renewing, by=SYSTEM)
        payment_ids += [payment_id for payment_id in started if payment_id]
    _settle_all(context, payment_ids + stale)
    return len(claimed) + len(stale)


@sweep("subscriptions.trials", every=timedelta(minutes=1), drain=True)
def end_due_trials(context: Context) -> int:
    """Trials that have ended: the first period charged off-session (→ active, or past_due and
    dunning on a decline); a trial without a payment method, or cancelled at its end, is cancelled."""
    now = clock.now()
    payment_ids: list[str] = []
    with transaction(context.sessions) as session:
        claimed = charging.claim_due(session, charging.due(now).where(Subscription.status == "trialing"), BATCH)
        for subscription, row in claimed:
            if subscription.cancel_at_period_end:
                SUBSCRIPTION.move(session, subscription, "cancelled", by=SYSTEM, reason="trial_end")
                row.cancelled_at = now
                continue
            if charging.method_to_charge(session, subscription) is None:  # policy: trial_end_without_method
                SUBSCRIPTION.move(session, subscription, "cancelled", by=SYSTEM, reason="trial_ended_without_payment_method")
                row.cancelled_at = now
                plan = dunning.plan_name(session, subscription)
                dunning.notify(
                    session, context.settings, subscription, "Your trial has ended",
                    f"Your trial of {plan} ended without a payment method, so your subscription to {plan} has been "
                    "cancelled. Subscribe again whenever you like.",
                )
                continue
            payment_id = charging.charge_period(
                session, context.security, context.settings, subscription, row, 0, "trial_end", by=SYSTEM
            )
            if payment_id:
                payment_ids.append(payment_id)
    _settle_all(context, payment_ids)
    return len(claimed)


@sweep("subscriptions.dunning", every=timedelta(minutes=1), drain=True)
def retry_past_due_subscriptions(context: Context) -> int:
    """Past-due subscriptions whose next retry is due: their outstanding invoice charged again."""
    now = clock.now()
    payment_ids: list[str] = []
    with transaction(context.sessions) as session:
        statement = (
            sa.select(Subscription, SubscriptionBilling)
            .join(SubscriptionBilling, SubscriptionBilling.subscription_id == Subscription.id)
            .where(Subscription.status == "past_due", SubscriptionBilling.next_retry_at <= now)
            .order_by(SubscriptionBilling.next_retry_at, Subscription.id)
        )
        claimed = charging.claim_due(session, statement, BATCH)
        for subscription, row in claimed:
            row.next_retry_at = None  # claimed: this retry happens once
            invoice = session.get(Invoice, row.outstanding_invoice_id) if row.outstanding_invoice_id else None
            if invoice is None or invoice.status not in ("open", "uncollectible"):
                continue
            pending = session.scalar(
                sa.select(Payment.id).where(Payment.subscription_id == subscription.id, Payment.status == "pending").limit(1)
            )
            if pending:
                continue
            record(session, subscription, "retrying", by=SYSTEM, invoice_id=invoice.id, attempt=row.retries_done + 1)
            payment_id = charging.start_payment(session, context.security, subscription, invoice, "retry", by=SYSTEM)
            if payment_id:
                payment_ids.append(payment_id)
    _settle_all(context, payment_ids)
    return len(claimed)
