"""Receipts: an email to the customer for every successful charge (a paid order, a subscription's
first period, renewal, retry or change), written to the outbox in the transaction that records
the charge. They name what was bought and the amount (``kit/money``), and link to the invoice on
the installation's public URL (``BILLFOLD_PUBLIC_URL``).

``billfold.wiring.wire()`` attaches the paid-order reaction after the invoice's own, so the
receipt can name the invoice the order was given.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from billfold.invoices import service as invoices
from billfold import mailer
from billfold.kit.db import columns_of
from billfold.kit.money import Money
from billfold.models import Invoice, Order, Organization, Payment, Product, Subscription, User
from billfold.orders.lines import lines_of
from billfold.payments.details import PaymentDetails

if TYPE_CHECKING:
    from billfold.config import Settings


def recipient(session: Session, user_id: str | None, organization_id: str | None) -> tuple[str, str] | None:
    """Whom to write to about a customer's money, and how to greet them: the user, or the
    organization's business address (else its owner's)."""
    if organization_id:
        organization = session.get(Organization, organization_id)
        if organization is None:
            return None
        if organization.business_email:
            return organization.business_email, organization.name
        owner = session.get(User, organization.owner_user_id)
        return (owner.email, owner.name) if owner else None
    found = columns_of(session, User, user_id, User.email, User.name) if user_id else None
    return (found[0], found[1]) if found else None


def day(moment: datetime | None) -> str:
    return f"{moment:%d %B %Y}".lstrip("0") if moment else ""


def plan_name(session: Session, subscription: Subscription) -> str:
    product = session.get(Product, subscription.product_id)
    return product.name if product else "your plan"


def order_receipt(session: Session, order: Order) -> None:
    """A paid order's receipt: its items, its total, and its invoice."""
    to = recipient(session, order.user_id, order.organization_id)
    if to is None:
        return
    invoice = invoices.invoice_for_order(session, order)
    items = [(item, product.name) for item, product in lines_of(session, order.id)]

    def money(cents: int) -> str:
        return Money(cents, order.currency).format()

    lines = [f"  {item.quantity} × {name}: {money(item.total_cents)}" for item, name in items]
    if order.discount_cents:
        lines.append(f"  Discount: -{money(order.discount_cents)}")
    if order.tax_cents:
        lines.append(f"  Tax: {money(order.tax_cents)}")
    url = mailer.public_url(session)
    address, name = to
    mailer.queue(session, mailer.Email(
        address, f"Your receipt for order {order.order_number}",
        f"Hello {name},\n\nThank you for your order {order.order_number}. We charged {money(order.total_cents)} "
        f"on {day(order.completed_at)}.\n\n" + "\n".join(lines) + f"\n  Total: {money(order.total_cents)}\n\n"
        f"Your invoice {invoice.invoice_number}: {url}/v1/invoices/{invoice.id}/pdf\n"
        f"Your order: {url}/v1/orders/{order.id}\n",
    ))


PURPOSES = {
    "first": "the first period of",
    "trial_end": "the first period after your trial of",
    "renewal": "the renewal of",
    "retry": "the renewal of",
    "change": "the change of your subscription to",
}


def subscription_receipt(
    session: Session, settings: Settings, subscription: Subscription, invoice: Invoice, payment: Payment, *, quantity: int = 1
) -> None:
    """A subscription payment's receipt: the plan, the amount, the period and the invoice."""
    to = recipient(session, subscription.user_id, subscription.organization_id)
    if to is None:
        return
    plan = plan_name(session, subscription)
    amount = Money(payment.amount_cents, payment.currency).format()
    purpose = PURPOSES.get(str(PaymentDetails.of(payment).purpose), "")
    seats = f" ({quantity} seats)" if quantity > 1 else ""
    if purpose == PURPOSES["change"]:
        period = f"for the rest of the period to {day(subscription.current_period_end)}"
    else:
        period = f"for {day(subscription.current_period_start)} to {day(subscription.current_period_end)}"
    url = settings.public_url
    address, name = to
    mailer.queue(session, mailer.Email(
        address, f"Your receipt for {plan}",
        f"Hello {name},\n\nWe charged {amount} for {purpose + ' ' if purpose else ''}{plan}{seats}, "
        f"{period}. Thank you.\n\n"
        f"Your invoice {invoice.invoice_number}: {url}/v1/invoices/{invoice.id}/pdf\n"
        f"Your subscription: {url}/v1/subscriptions/{subscription.id}\n",
    ))
