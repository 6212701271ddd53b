"""Orders, checkout and payments under /v1 (refunds: payments/api.py). Every POST that creates or
moves money takes an optional ``Idempotency-Key`` (see docs/api.md)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status
from pydantic import AwareDatetime, BeforeValidator
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from billfold.accounts.access import readable
from billfold.accounts.auth import Authenticated, SecurityDep
from billfold.config import Settings
from billfold.kit.errors import BillfoldError
from billfold.kit.http import DbSession, Page, Paging, paginate, problems
from billfold.idempotency_http import Answer, Idempotent, idempotently
from billfold.models import Order, Payment
from billfold.orders import checkout as checkout_service
from billfold.orders import service
from billfold.orders.schemas import BuyIn, CancelIn, CheckoutIn, CheckoutOut, OrderIn, OrderOut, PaymentOut
from billfold.payments import refunds as refund_service
from billfold.payments.engine import Outcome, Result
from billfold.payments.routing import PayWith
from billfold.providers.errors import Declined

router = APIRouter(prefix="/v1", responses=problems(400, 401, 403, 404, 422))
orders = APIRouter(prefix="/orders", tags=["orders"])
payments = APIRouter(prefix="/payments", tags=["payments"])
checkouts = APIRouter(prefix="/checkouts", tags=["orders"])


def order_out(session: Session, order: Order, *, new: bool = False) -> OrderOut:
    """``new``: placed by this transaction, so it has no payments yet (none are read)."""
    return orders_out(session, [order], new=new)[0]


def orders_out(session: Session, rows: list[Order], *, new: bool = False) -> list[OrderOut]:
    ids = [o.id for o in rows]
    items = service.items_of(session, ids)
    paid = {order_id: [] for order_id in ids} if new else service.payments_of(session, ids)
    return [OrderOut.of(o, items[o.id], [PaymentOut.of(p, refunds) for p, refunds in paid[o.id]]) for o in rows]


def payment_out(session: Session, payment: Payment) -> PaymentOut:
    return PaymentOut.of(payment, refund_service.refunds_of(session, [payment.id])[payment.id])


def _settings(request: Request) -> Settings:
    return request.app.state.security.settings


_CHECKOUT_ANSWERS = {
    **problems(402, 409, 503),
    202: {"model": CheckoutOut, "description": "Waiting for the customer's action (see payment.next_action) or for the provider."},
}


# Orders


@orders.post("", status_code=status.HTTP_201_CREATED, response_model=OrderOut, responses=problems(409))
def create_order(body: OrderIn, request: Request, principal: Authenticated, idempotent: Idempotent) -> Any:
    """Place an order for yourself, an organization you buy for, or (admins) any customer. Prices
    come from the catalog now; tax from the billing address's country."""

    def handler(session: Session) -> OrderOut:
        order = service.create_order(
            session, _settings(request), principal,
            items=[service.ItemIn(i.product_id, i.quantity) for i in body.items],
            user_id=body.user_id, organization_id=body.organization_id,
            billing_address_id=body.billing_address_id, shipping_address_id=body.shipping_address_id,
        )
        return order_out(session, order, new=True)

    return idempotent.respond(principal.idempotency_scope, body, handler, status_code=201)


@orders.get("", response_model=Page[OrderOut])
def list_orders(principal: Authenticated, session: DbSession, paging: Paging) -> Page[OrderOut]:
    """Your orders and your organizations' (everyone's for the shop's admins), oldest first."""
    page = paginate(session, readable(principal, Order), Order.id, paging, lambda row: row)
    return Page[OrderOut](data=orders_out(session, list(page.data)), has_more=page.has_more)


@orders.get("/{order_id}", response_model=OrderOut)
def get_order(order_id: str, principal: Authenticated, session: DbSession) -> OrderOut:
    return order_out(session, service.get_order(session, principal, order_id))


@orders.post("/{order_id}/cancel", response_model=OrderOut, responses=problems(409))
def cancel_order(order_id: str, body: CancelIn, principal: Authenticated, idempotent: Idempotent) -> Any:
    """Cancel an unpaid order (a paid one is refunded instead)."""

    def handler(session: Session) -> OrderOut:
        return order_out(session, service.cancel_order(session, principal, order_id, body.reason))

    return idempotent.respond(principal.idempotency_scope, body, handler)


def _checkout_answer(session: Session, outcome: Outcome) -> tuple[int, Any]:
    """200 paid (or ended as asked), 202 waiting for the customer or the provider; a failed payment
    answers its error (402 declined or never made, 400/422 refused by the provider): the order can
    be paid again. The provider not answering is raised (503) before this."""
    if outcome.result is Result.FAILED:
        error = outcome.error if isinstance(outcome.error, BillfoldError) else Declined("the payment was declined", "generic_decline")
        return error.status, {**error.to_problem(), "payment_id": outcome.payment_id, "order_id": outcome.order_id or ""}
    order = session.get(Order, outcome.order_id)
    assert order is not None
    order_body = order_out(session, order)
    [payment_body] = [p for p in order_body.payments if p.id == outcome.payment_id]  # the same answer, read once
    body = CheckoutOut(order=order_body, payment=payment_body)
    return (202 if outcome.result is Result.PENDING else 200), jsonable_encoder(body)


@orders.post("/{order_id}/checkout", response_model=CheckoutOut, responses=_CHECKOUT_ANSWERS)
def checkout(
    order_id: str, body: CheckoutIn, request: Request, principal: Authenticated, idempotent: Idempotent, security: SecurityDep
) -> JSONResponse:
    """Pay an order with a saved method or a provider token. 200: paid. 202: the customer must act
    (3-D Secure: see `payment.next_action`, then confirm the payment). 402: declined; the order can
    be paid again. 400: the provider refused the request (an unknown token, say); the payment failed
    and the order can be paid again. 503: the provider did not answer; retry (with the same
    Idempotency-Key): it never charges twice, and a payment left unknown is settled by asking the
    provider."""
    pay = PayWith(body.payment_method_id, body.token, body.provider_id)
    answer = Answer(_checkout_answer)
    sessions = request.app.state.sessions
    return idempotently(
        request, idempotent, principal.idempotency_scope, body, answer,
        lambda claimed: checkout_service.checkout(sessions, security, principal, order_id, pay, claim=claimed, respond=answer),
    )


@checkouts.post("", response_model=CheckoutOut, responses=_CHECKOUT_ANSWERS)
def buy(body: BuyIn, request: Request, principal: Authenticated, idempotent: Idempotent, security: SecurityDep) -> JSONResponse:
    """Place an order and pay it in one request: the fields of `POST /v1/orders` and of its
    checkout together, answered as the checkout answers (200 paid, 202 waiting for the customer,
    402 declined with `order_id`: the order stays and can be paid again). A refusal before the
    provider is called (a bad item, address, method or provider) leaves no order. 503: the provider
    did not answer; retry with the same Idempotency-Key: it never makes a second order or charge."""
    pay = PayWith(body.payment_method_id, body.token, body.provider_id)
    answer = Answer(_checkout_answer)
    sessions = request.app.state.sessions
    settings = _settings(request)

    def place(session: Session, then: Callable[[Order], None]) -> Order:
        return service.create_order(
            session, settings, principal,
            items=[service.ItemIn(i.product_id, i.quantity) for i in body.items],
            user_id=body.user_id, organization_id=body.organization_id,
            billing_address_id=body.billing_address_id, shipping_address_id=body.shipping_address_id,
            before_numbering=then,
        )

    return idempotently(
        request, idempotent, principal.idempotency_scope, body, answer,
        lambda claimed: checkout_service.buy(sessions, security, principal, place, pay, claim=claimed, respond=answer),
    )


# Payments (their refunds: payments/api.py)


def _a_time(value: object) -> object:
    # Pydantic reads a number as a Unix time; a query's time is written out (ISO 8601, with a zone).
    if not isinstance(value, str) or re.fullmatch(r"[\d.eE+-]*", value.strip()):
        raise ValueError("a time is written in ISO 8601 with a zone, such as 2026-12-01T00:00:00Z")
    return value


Time = Annotated[AwareDatetime, BeforeValidator(_a_time)]
PaymentStatus = Literal["pending", "completed", "failed", "refunded"]
IdQuery = Query(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$")


@payments.get("", response_model=Page[PaymentOut])
def list_payments(
    principal: Authenticated,
    session: DbSession,
    paging: Paging,
    status: Annotated[PaymentStatus | None, Query(description="Only payments in this status.")] = None,
    user_id: Annotated[str | None, IdQuery] = None,
    organization_id: Annotated[str | None, IdQuery] = None,
    order_id: Annotated[str | None, IdQuery] = None,
    subscription_id: Annotated[str | None, IdQuery] = None,
    provider_id: Annotated[str | None, Query(min_length=1, max_length=50)] = None,
    created_from: Annotated[Time | None, Query(description="Made at or after this time (ISO 8601 with a zone).")] = None,
    created_to: Annotated[Time | None, Query(description="Made before this time (ISO 8601 with a zone).")] = None,
) -> Page[PaymentOut]:
    """Payments of orders and subscriptions, oldest first: everyone's for the shop's admins and read
    API keys; your own and your organizations' for a customer. Filters combine."""
    statement = checkout_service.visible_payments(session, principal)
    for column, value in (
        (Payment.status, status), (Payment.user_id, user_id), (Payment.organization_id, organization_id),
        (Payment.order_id, order_id), (Payment.subscription_id, subscription_id), (Payment.provider_id, provider_id),
    ):
        if value is not None:
            statement = statement.where(column == value)
    if created_from is not None:
        statement = statement.where(Payment.created_at >= created_from)
    if created_to is not None:
        statement = statement.where(Payment.created_at < created_to)
    page = paginate(session, statement, Payment.id, paging, lambda row: row)
    rows = list(page.data)
    refunds = refund_service.refunds_of(session, [p.id for p in rows])
    return Page[PaymentOut](data=[PaymentOut.of(p, refunds[p.id]) for p in rows], has_more=page.has_more)


@payments.get("/{payment_id}", response_model=PaymentOut)
def get_payment(payment_id: str, principal: Authenticated, session: DbSession) -> PaymentOut:
    return payment_out(session, checkout_service.payment_for(session, principal, payment_id))


@payments.post("/{payment_id}/confirm", response_model=CheckoutOut, responses=problems(402, 409, 503))
def confirm_payment(
    payment_id: str, request: Request, principal: Authenticated, idempotent: Idempotent, security: SecurityDep
) -> JSONResponse:
    """Finish a payment after the customer's action (3-D Secure)."""
    answer = Answer(_checkout_answer)
    sessions = request.app.state.sessions
    return idempotently(
        request, idempotent, principal.idempotency_scope, None, answer,
        lambda claimed: checkout_service.confirm(sessions, security, principal, payment_id, claim=claimed, respond=answer),
    )


@payments.post("/{payment_id}/cancel", response_model=CheckoutOut, responses=problems(409, 503))
def cancel_payment(
    payment_id: str, request: Request, principal: Authenticated, idempotent: Idempotent, security: SecurityDep
) -> JSONResponse:
    """End a payment that waits for the customer's action; the order can be paid again."""
    answer = Answer(_checkout_answer)
    sessions = request.app.state.sessions
    return idempotently(
        request, idempotent, principal.idempotency_scope, None, answer,
        lambda claimed: checkout_service.cancel_payment(sessions, security, principal, payment_id, claim=claimed, respond=answer),
    )


router.include_router(orders)
router.include_router(payments)
router.include_router(checkouts)
