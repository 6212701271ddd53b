"""What the orders, checkout, payments and refunds API takes and gives. Requests refuse unknown
fields, so a card number or CVC sent by mistake is refused (422) and never stored."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from billfold.accounts.schemas import In
from billfold.kit.inputs import Integer, SingleLine
from billfold.models import Order, OrderItem, Payment, Refund
from billfold.payments.details import PaymentDetails

Id = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$")
Reason = Annotated[str, Field(min_length=1, max_length=255), SingleLine]


class ItemIn(In):
    product_id: str = Id
    quantity: Integer = Field(1, ge=1, le=10_000)


class OrderIn(In):
    items: list[ItemIn] = Field(min_length=1, max_length=100)
    user_id: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$", description="Admins and API keys: the customer.")
    organization_id: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$", description="Buy for an organization (owners and billing members).")
    billing_address_id: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$", description="Default: the customer's default billing address.")
    shipping_address_id: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$", description="Default: the default shipping address (needed for physical products).")


class CancelIn(In):
    reason: Reason | None = None


class CheckoutIn(In):
    payment_method_id: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$", description="A saved method of the customer's; default: their default method.")
    token: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$", description="A one-time provider token instead of a saved method (sandbox: tok_sandbox_visa, ...).")
    provider_id: str | None = Field(None, min_length=1, max_length=50, pattern=r"^[a-z][a-z0-9_]*$", description="Which provider to use with a token; default: the shop's default provider.")


class BuyIn(OrderIn, CheckoutIn):
    """``POST /v1/checkouts``: an order's fields and a checkout's, in one request."""


class RefundIn(In):
    amount_cents: Integer | None = Field(None, ge=1, le=10**15, description="Default: everything not yet refunded.")
    reason: Reason | None = None


class ItemOut(BaseModel):
    id: str
    product_id: str
    name: str | None
    quantity: int
    unit_price_cents: int
    total_cents: int

    @classmethod
    def of(cls, item: OrderItem) -> ItemOut:
        return cls(
            id=item.id, product_id=item.product_id, name=(item.metadata_ or {}).get("name"), quantity=item.quantity,
            unit_price_cents=item.unit_price_cents, total_cents=item.total_cents,
        )


class RefundOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    payment_id: str
    order_id: str | None
    amount_cents: int
    currency: str
    status: Literal["pending", "succeeded", "failed"]
    reason: str | None
    provider_refund_id: str | None
    error_message: str | None
    created_at: datetime
    completed_at: datetime | None


class PaymentOut(BaseModel):
    id: str
    order_id: str | None
    subscription_id: str | None
    user_id: str | None = Field(description="The customer: a user, or (organization_id) an organization.")
    organization_id: str | None
    provider_id: str
    provider_payment_id: str | None
    provider_status: str | None = Field(description="The provider's own word for the payment's state.")
    payment_method_id: str | None
    amount_cents: int
    refunded_cents: int
    currency: str
    status: Literal["pending", "completed", "failed", "refunded"]
    next_action: dict[str, Any] | None = Field(None, description="What the customer must do before the payment can be confirmed.")
    decline_code: str | None = None
    error_message: str | None
    refunds: list[RefundOut]
    created_at: datetime
    completed_at: datetime | None

    @classmethod
    def of(cls, payment: Payment, refunds: list[Refund]) -> PaymentOut:
        details = PaymentDetails.of(payment)
        return cls(
            id=payment.id, order_id=payment.order_id, subscription_id=payment.subscription_id,
            user_id=payment.user_id, organization_id=payment.organization_id, provider_id=payment.provider_id,
            provider_payment_id=payment.provider_payment_id, provider_status=details.provider_status,
            payment_method_id=payment.payment_method_id, amount_cents=payment.amount_cents,
            refunded_cents=sum(r.amount_cents for r in refunds if r.status == "succeeded"),
            currency=payment.currency, status=payment.status,  # type: ignore[arg-type]
            next_action=details.next_action, decline_code=details.decline_code,
            error_message=payment.error_message, refunds=[RefundOut.model_validate(r) for r in refunds],
            created_at=payment.created_at, completed_at=payment.completed_at,
        )


class OrderOut(BaseModel):
    id: str
    order_number: str
    user_id: str | None
    organization_id: str | None
    status: Literal["pending", "paid", "cancelled", "refunded"]
    items: list[ItemOut]
    subtotal_cents: int
    discount_cents: int
    tax_cents: int
    total_cents: int
    refunded_cents: int
    currency: str
    billing_address_id: str | None
    shipping_address_id: str | None
    billing_address: dict[str, Any] | None = Field(description="The billing address as it was when the order was placed.")
    shipping_address: dict[str, Any] | None
    payments: list[PaymentOut]
    created_at: datetime
    completed_at: datetime | None

    @classmethod
    def of(cls, order: Order, items: list[OrderItem], payments: list[PaymentOut]) -> OrderOut:
        meta = order.metadata_ or {}
        return cls(
            id=order.id, order_number=order.order_number, user_id=order.user_id, organization_id=order.organization_id,
            status=order.status,  # type: ignore[arg-type]
            items=[ItemOut.of(i) for i in items], subtotal_cents=order.subtotal_cents,
            discount_cents=order.discount_cents, tax_cents=order.tax_cents, total_cents=order.total_cents,
            refunded_cents=sum(p.refunded_cents for p in payments), currency=order.currency,
            billing_address_id=order.billing_address_id, shipping_address_id=order.shipping_address_id,
            billing_address=meta.get("billing_address"), shipping_address=meta.get("shipping_address"),
            payments=payments, created_at=order.created_at, completed_at=order.completed_at,
        )


class CheckoutOut(BaseModel):
    order: OrderOut
    payment: PaymentOut
