"""Dunning: what happens after a recurring charge is declined (reference/providers.md §4).

The first failure makes the subscription ``past_due`` and keeps its invoice open. Retries follow
at ``BILLFOLD_DUNNING_RETRY_DAYS`` (default 3, 5 and 7) days **after the first failure** (offsets,
not gaps), each a new payment of the same invoice (the ``subscriptions.dunning`` sweep). When the
customer changes the subscription's payment method while it is past due, the next retry is due at
once. A success marks the invoice paid and the subscription active again. After the last retry
fails, or at once on a hard decline (an expired, lost or stolen card: retrying cannot help), the
final action applies (``BILLFOLD_DUNNING_FINAL_ACTION``): ``cancel`` (default) cancels the
subscription, ``leave_past_due`` leaves it past due with no more retries; the invoice becomes
``uncollectible`` either way (a later payment can still pay it). The customer gets an email at
every step, written to the outbox with the change (billfold/mailer.py) and sent once it commits.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from billfold.config import Settings
from billfold.invoices import service as invoices
from billfold.invoices.receipts import day, plan_name, recipient
from billfold.kit import clock
from billfold import mailer
from billfold.kit.money import Money
from billfold.models import Invoice, Subscription, SubscriptionBilling
from billfold.providers.errors import Declined
from billfold.subscriptions.states import SUBSCRIPTION, record


def clear(billing: SubscriptionBilling, invoice_id: str) -> None:
    """A paid invoice ends its dunning."""
    if billing.outstanding_invoice_id in (None, invoice_id):
        billing.outstanding_invoice_id = None
        billing.first_failed_at = None
        billing.next_retry_at = None
        billing.retries_done = 0


def failed(
    session: Session,
    settings: Settings,
    subscription: Subscription,
    billing: SubscriptionBilling,
    invoice: Invoice,
    error: Exception | None,
    *,
    by: str | None,
) -> None:
    """A declined renewal, trial-end charge or retry."""
    now = clock.now()
    hard = isinstance(error, Declined) and error.hard
    reason = str(error.decline_code) if isinstance(error, Declined) else "declined"
    if billing.outstanding_invoice_id != invoice.id or billing.first_failed_at is None:
        billing.outstanding_invoice_id = invoice.id
        billing.first_failed_at = now
        billing.retries_done = 0
        SUBSCRIPTION.move(session, subscription, "past_due", by=by, invoice_id=invoice.id, reason=reason)
    else:
        billing.retries_done += 1
        record(session, subscription, "retry_failed", by=by, invoice_id=invoice.id, reason=reason, attempt=billing.retries_done)
    days = list(settings.dunning_retry_days)
    amount = Money(invoice.total_cents, invoice.currency).format()
    if hard or billing.retries_done >= len(days):
        final(session, settings, subscription, billing, invoice, by=by, reason="hard_decline" if hard else "retries_exhausted")
        return
    assert billing.first_failed_at is not None
    billing.next_retry_at = billing.first_failed_at + timedelta(days=days[billing.retries_done])
    last = billing.retries_done == len(days) - 1
    notify(
        session, settings, subscription,
        f"Your payment of {amount} did not go through",
        f"We could not charge {amount} for {plan_name(session, subscription)} (invoice {invoice.invoice_number}; "
        f"the bank said: {reason.replace('_', ' ')}). We will try again on {day(billing.next_retry_at)}"
        + (", for the last time" if last else "")
        + ". To avoid an interruption, update the payment method of your subscription.",
        update_method=True,
    )


def final(
    session: Session, settings: Settings, subscription: Subscription, billing: SubscriptionBilling, invoice: Invoice,
    *, by: str | None, reason: str,
) -> None:
    billing.next_retry_at = None
    invoices.mark_uncollectible(session, invoice, by=by)
    amount = Money(invoice.total_cents, invoice.currency).format()
    plan = plan_name(session, subscription)
    if settings.dunning_final_action == "cancel":
        SUBSCRIPTION.move(session, subscription, "cancelled", by=by, reason=reason, invoice_id=invoice.id)
        billing.cancelled_at = clock.now()
        notify(
            session, settings, subscription, "Your subscription has been cancelled",
            f"We could not collect {amount} for {plan} (invoice {invoice.invoice_number}), so your subscription "
            f"to {plan} has been cancelled. Subscribe again whenever you like.",
        )
    else:
        record(session, subscription, "dunning_exhausted", by=by, reason=reason, invoice_id=invoice.id)
        notify(
            session, settings, subscription, "Your subscription is unpaid",
            f"We could not collect {amount} for {plan} (invoice {invoice.invoice_number}). Update your payment "
            "method to settle it; your subscription stays past due until then.",
            update_method=True,
        )


def notify(
    session: Session, settings: Settings, subscription: Subscription, subject: str, what: str, *, update_method: bool = False
) -> None:
    """An email to the customer (the user, or the organization's business address, else its
    owner), written to the outbox with the change; links go to the installation's public URL."""
    to = recipient(session, subscription.user_id, subscription.organization_id)
    if to is None:
        return
    address, name = to
    url = settings.public_url.rstrip("/")
    how = (
        f"\nTo use another card, save it and POST {{\"payment_method_id\": \"...\"}} to "
        f"{url}/v1/subscriptions/{subscription.id}/change.\n" if update_method else ""
    )
    mailer.queue(session, mailer.Email(
        to=address, subject=subject,
        body=f"Hello {name},\n\n{what}\n{how}\nYour subscription: {url}/v1/subscriptions/{subscription.id}\n",
    ))
