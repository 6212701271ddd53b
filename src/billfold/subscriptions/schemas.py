"""What the subscriptions API takes and gives. Requests refuse unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from billfold.accounts.schemas import In
from billfold.kit.inputs import Integer
from billfold.models import Subscription, SubscriptionBilling

Id = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$")


def _id(description: str) -> object:
    return Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$", description=description)


class SubscriptionIn(In):
    product_id: str = Id
    quantity: Integer = Field(1, ge=1, le=10_000)
    payment_method_id: str | None = _id("A saved method of the customer's; default: their default method (none needed for a trial).")  # type: ignore[assignment]
    user_id: str | None = _id("Admins and API keys: the customer.")  # type: ignore[assignment]
    organization_id: str | None = _id("Subscribe an organization (owners and billing members).")  # type: ignore[assignment]


class ChangeIn(In):
    product_id: str | None = _id("Another recurring product with the same currency and billing interval.")  # type: ignore[assignment]
    quantity: Integer | None = Field(None, ge=1, le=10_000)
    payment_method_id: str | None = _id("Charge this saved method from now on; a past-due subscription is retried at once.")  # type: ignore[assignment]


class CancelIn(In):
    at_period_end: StrictBool = Field(True, description="Cancel when the paid period ends (undo with /resume); false: now.")
    refund: StrictBool = Field(False, description="With at_period_end false (the shop's admins): refund the unused time of the period, prorated to the second.")


class MigratePriceIn(In):
    price_cents: Integer | None = Field(None, ge=0, le=10**12, description="Default: the product's current catalog price.")


class SubscriptionOut(BaseModel):
    id: str
    user_id: str | None
    organization_id: str | None
    product_id: str
    payment_method_id: str | None
    provider_id: str
    status: Literal["active", "cancelled", "past_due", "trialing"]
    paused: bool
    paused_at: datetime | None
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    cancelled_at: datetime | None
    trial_end: datetime | None
    price_cents: int = Field(description="The unit price agreed to, per period.")
    quantity: int
    amount_cents: int = Field(description="price_cents × quantity, before tax and credit.")
    currency: str
    credit_cents: int = Field(description="Credit from downgrades, taken off the next invoices.")
    outstanding_invoice_id: str | None
    next_retry_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, subscription: Subscription, billing: SubscriptionBilling) -> SubscriptionOut:
        return cls(
            id=subscription.id, user_id=subscription.user_id, organization_id=subscription.organization_id,
            product_id=subscription.product_id, payment_method_id=subscription.payment_method_id,
            provider_id=subscription.provider_id, status=subscription.status,  # type: ignore[arg-type]
            paused=billing.paused_at is not None, paused_at=billing.paused_at,
            current_period_start=subscription.current_period_start, current_period_end=subscription.current_period_end,
            cancel_at_period_end=subscription.cancel_at_period_end, cancelled_at=billing.cancelled_at,
            trial_end=subscription.trial_end, price_cents=subscription.price_cents, quantity=billing.quantity,
            amount_cents=subscription.price_cents * billing.quantity, currency=subscription.currency,
            credit_cents=billing.credit_cents, outstanding_invoice_id=billing.outstanding_invoice_id,
            next_retry_at=billing.next_retry_at, created_at=subscription.created_at,
        )


class ProrationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    credit_cents: int
    charge_cents: int
    net_cents: int
    remaining_seconds: int
    period_seconds: int


class ChangeOut(BaseModel):
    subscription: SubscriptionOut
    proration: ProrationOut | None
    invoice_id: str | None = Field(description="The invoice of a positive net, charged at once.")
    payment_id: str | None


class CancelOut(BaseModel):
    subscription: SubscriptionOut
    refund_id: str | None
    refund_cents: int
    refund_status: str | None = Field(
        None, description="The refund's state: succeeded, pending (the provider will settle it, or did not "
        "answer: the worker asks again) or failed (nothing was given back); null when nothing was refunded.",
    )
