"""Checkout: paying an order through a provider, safe to retry at every step.

A checkout runs in three phases, each its own transaction, bounded by the one call to the provider
(reference/providers.md §1):

1. **prepare** (order row locked): refuse an order that is not payable; otherwise find the payment
   already under way for this order, or create one (``pending``). Its id is the provider's
   idempotency key (``billfold-<payment id>-charge``).
2. **charge**: one call to the provider, outside any transaction.
3. **record** (order and payment locked): move the payment, and the order once paid in full, by
   their state machines; an outcome recorded already is left alone.

A refusal that is not "outcome unknown" (a decline, a token or request the provider refuses, a
capability it lacks) settles the payment as ``failed`` at once: the order can be paid again, with
another token, or cancelled.

A crash or a provider timeout (``ProviderUnavailable``) between 2 and 3 leaves the payment
``pending`` with its outcome unknown. Whoever takes it up asks the provider first what the
payment's key made (``find_charge``) and records that, without charging again: the next checkout
of the order (with or without the same ``Idempotency-Key``), or the sweep (orders/sweeps.py),
which settles every such payment ``STALE_AFTER`` after it began. When the provider made no charge,
a payment that young is charged now with the same key (its first request may still be under way,
so this stays safe however many requests race), and an older one is settled ``failed``: its
request is gone, and the order is free again. Many checkouts of one order at once therefore share
one payment and one provider charge. A payment waiting for the customer's action (3-D Secure) is
finished with ``confirm`` or ended with ``cancel``; a new checkout meanwhile is refused.

A keyed retry resumes from its recovery point (``payment:<id>``): it answers what its own payment
became, even when another request or the sweep finished it meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from billfold.accounts.access import owner_of, readable
from billfold.accounts.security import Principal, Security
from billfold.kit import clock
from billfold.kit.db import reading, transaction
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import BillfoldError, Conflict, InvalidInput, NotFound
from billfold.idempotency import Claim, advance, finish
from billfold.kit.ids import has_prefix
from billfold.kit.money import Money
from billfold.models import Order, Payment, Subscription
from billfold.orders import events, service
from billfold.orders.service import OrderNotPayable, actor
from billfold.orders.states import ORDER, PAYMENT
from billfold.payments import customers, gateways, methods
from billfold.providers.base import ChargeResult, ChargeStatus
from billfold.providers.errors import Declined, IdempotencyMismatch, ProviderError, ProviderUnavailable

WAITING_FOR_CUSTOMER = "requires_action"
STALE_AFTER = timedelta(minutes=10)
"""A payment whose outcome is still unknown this long after it began has lost its request (a crash,
a timeout): the provider's answer is recorded, and if it made no charge the payment fails."""
RECOVERY_POINT = "payment:"


class PaymentNotWaiting(Conflict):
    code = "payment_not_waiting"
    title = "The payment is not waiting for the customer"


class PaymentRequiresAction(Conflict):
    code = "payment_requires_action"
    title = "A payment waits for the customer"


class ChargeNotMade(BillfoldError):
    """The provider made no charge for a payment whose request never heard its answer."""

    status = 402
    code = "payment_not_made"
    title = "The payment was never made"


def _failure_of(payment: Payment) -> BillfoldError:
    """The error a failed payment answers with to a request that did not hear the provider itself."""
    meta = _meta(payment)
    if meta.get("failure") == ChargeNotMade.code:
        return ChargeNotMade(payment.error_message or "the provider made no charge for this payment")
    return Declined(payment.error_message or "The payment was declined.", meta.get("decline_code") or "generic_decline")


@dataclass(frozen=True)
class PayWith:
    """How the customer pays: a saved method, or a one-time provider token; and through which
    provider (the method's, or the default)."""

    payment_method_id: str | None = None
    token: str | None = None
    provider_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What a checkout, confirmation or cancellation ended in: the HTTP status and the ids to
    show. ``error`` is the provider's refusal, raised to the caller after it was recorded."""

    status: int
    order_id: str
    payment_id: str
    error: Exception | None = None


def _lock_order(session: Session, order_id: str) -> Order:
    statement = sa.select(Order).where(Order.id == order_id).execution_options(populate_existing=True)
    return session.scalars(for_update(statement, session)).one()


def lock_payment(session: Session, payment_id: str) -> Payment:
    statement = sa.select(Payment).where(Payment.id == payment_id).execution_options(populate_existing=True)
    return session.scalars(for_update(statement, session)).one()


def _meta(payment: Payment) -> dict[str, Any]:
    return dict(payment.metadata_ or {})


def charge_key(payment_id: str) -> str:
    return f"billfold-{payment_id}-charge"


@dataclass(frozen=True)
class _Prepared:
    payment_id: str
    taken_up: bool  # an earlier request's payment, whose outcome this request did not hear


def _stale(payment: Payment) -> bool:
    return payment.created_at <= clock.now() - STALE_AFTER


def _prepare(session: Session, security: Security, principal: Principal, order_id: str, pay: PayWith) -> _Prepared:
    order = service.get_order(session, principal, order_id, change=True)
    service.require_buyer(session, principal, order)
    order = _lock_order(session, order.id)
    if order.status != "pending":
        raise OrderNotPayable(f"order {order.order_number} is {order.status}; only a pending order can be paid")
    under_way = session.scalars(
        sa.select(Payment)
        .where(Payment.order_id == order.id, Payment.status == "pending")
        .order_by(Payment.id.desc())
        .limit(1)
    ).first()
    if under_way is not None:
        if _meta(under_way).get("provider_status") == WAITING_FOR_CUSTOMER:
            raise PaymentRequiresAction(
                f"payment {under_way.id} of order {order.order_number} waits for the customer: "
                f"confirm it (POST /v1/payments/{under_way.id}/confirm) or cancel it first",
                payment_id=under_way.id,
            )
        return _Prepared(under_way.id, taken_up=True)
    if pay.payment_method_id and pay.token:
        raise InvalidInput(
            "pay with a saved payment method or a token, not both",
            errors=[{"field": "token", "message": "give payment_method_id or token"}],
        )
    owner = owner_of(order)
    method = None
    if pay.token is None:
        method = (
            methods.method_for_charge(session, owner, pay.payment_method_id)
            if pay.payment_method_id
            else methods.default_method(session, owner)
        )
        if method is None:
            raise InvalidInput(
                "the customer has no saved payment method: give payment_method_id or token",
                errors=[{"field": "payment_method_id", "message": "required"}],
            )
    provider_id = method.provider_id if method else pay.provider_id
    if method and pay.provider_id and pay.provider_id != method.provider_id:
        raise InvalidInput(
            f"payment method {method.id} belongs to provider {method.provider_id}, not {pay.provider_id}",
            errors=[{"field": "provider_id", "message": "not the method's provider"}],
        )
    provider = (
        gateways.active_provider(session, provider_id, field="provider_id")
        if provider_id
        else gateways.default_provider(session, security)
    )
    adapter = gateways.adapter_for_provider(session, security, provider.id)
    adapter.capabilities.require_currency(order.currency, provider.id)
    if pay.token is not None:
        adapter.capabilities.require_token(pay.token, provider.id)
    provider_customer = customers.ensure_provider_customer(session, adapter, owner) if method else None
    payment = Payment(
        order_id=order.id,
        user_id=order.user_id,
        organization_id=order.organization_id,
        payment_method_id=method.id if method else None,
        provider_id=provider.id,
        amount_cents=order.total_cents,
        currency=order.currency,
        status="pending",
        metadata_={
            "provider_status": "created",
            **({"token": pay.token} if pay.token else {}),
            **({"provider_payment_method_id": method.provider_payment_method_id} if method else {}),
            **({"provider_customer_id": provider_customer.provider_customer_id} if provider_customer else {}),
        },
    )
    session.add(payment)
    session.flush()
    PAYMENT.start(session, payment, "pending", by=actor(principal), order_id=order.id, amount_cents=order.total_cents)
    return _Prepared(payment.id, taken_up=False)


def apply_outcome(session: Session, payment: Payment, result: ChargeResult | None, *, by: str | None, error: Exception | None) -> int:
    """Record what the provider said about ``payment``; the HTTP status to answer with. The
    changes are flushed with the caller's next query or commit (a batch of renewals records many
    outcomes in one flush)."""
    order = _lock_order(session, payment.order_id) if payment.order_id else None
    meta = _meta(payment)
    if result is not None:
        payment.provider_payment_id = result.id
        meta["provider_status"] = result.provider_status
        meta.pop("next_action", None)
        if result.next_action:
            meta["next_action"] = result.next_action
    if isinstance(error, Declined):
        meta["decline_code"] = error.decline_code
        payment.error_message = error.detail
    elif isinstance(error, BillfoldError):  # a refusal, or no charge made: the payment failed all the same
        meta["failure"] = error.code
        payment.error_message = error.detail
    payment.metadata_ = meta
    status = result.status if result is not None else ChargeStatus.FAILED
    if status == ChargeStatus.SUCCEEDED:
        if PAYMENT.move(session, payment, "completed", by=by, provider_payment_id=payment.provider_payment_id):
            payment.completed_at = clock.now()
        if order is not None and order.status == "pending" and _paid_in_full(session, order):
            ORDER.move(session, order, "paid", by=by, payment_id=payment.id)
            order.completed_at = clock.now()
            session.flush()
            events.order_paid(session, order)
        return 200
    if status in (ChargeStatus.FAILED, ChargeStatus.CANCELED):
        PAYMENT.move(session, payment, "failed", by=by, reason=meta.get("decline_code") or meta.get("failure") or status.value)
        return 402 if status == ChargeStatus.FAILED else 200  # a cancellation asked for is a success
    if status == ChargeStatus.REQUIRES_ACTION:
        meta["provider_status"] = WAITING_FOR_CUSTOMER
        payment.metadata_ = meta
    return 202  # waiting for the customer, or the provider is still processing


def _paid_in_full(session: Session, order: Order) -> bool:
    paid = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Payment.amount_cents), 0)).where(
            Payment.order_id == order.id, Payment.status == "completed"
        )
    )
    return int(paid or 0) >= order.total_cents


def _call(adapter: Any, payment: Payment, order: Order | None) -> tuple[ChargeResult | None, Exception | None]:
    meta = _meta(payment)
    try:
        result = adapter.charge(
            amount=Money(payment.amount_cents, payment.currency),
            idempotency_key=charge_key(payment.id),
            customer_id=meta.get("provider_customer_id"),
            payment_method_id=meta.get("provider_payment_method_id"),
            token=meta.get("token"),
            off_session=False,
            description=f"Order {order.order_number}" if order else None,
            metadata={"payment_id": payment.id, **({"order_id": order.id} if order else {})},
        )
        return result, None
    except Declined as declined:
        return declined.charge, declined
    except (ProviderUnavailable, IdempotencyMismatch):
        raise  # outcome unknown (a mismatch: something was charged under this key): asked about later
    except ProviderError as refused:  # a definite refusal: nothing was charged, the payment failed
        return None, refused


def _ask(adapter: Any, payment: Payment, order: Order | None) -> tuple[ChargeResult | None, Exception | None]:
    """For a payment whose outcome this request did not hear: what the provider made under its key,
    without charging again. No charge there: a young payment is charged now with the same key (its
    first request may still be under way; the provider makes one charge for both), a stale one
    failed (``ChargeNotMade``)."""
    if payment.provider_payment_id:
        found: ChargeResult | None = adapter.get_charge(payment.provider_payment_id)
    else:
        found = adapter.find_charge(idempotency_key=charge_key(payment.id))
    if found is None:
        if _stale(payment):
            return None, ChargeNotMade(
                f"the provider made no charge for payment {payment.id}, and its request never heard an answer; "
                "pay the order again"
            )
        return _call(adapter, payment, order)
    if found.status == ChargeStatus.FAILED:
        return found, Declined(found.failure_message or "The payment was declined.", found.failure_code or "generic_decline", charge=found)
    return found, None


def checkout(
    sessions: sessionmaker[Session],
    security: Security,
    principal: Principal,
    order_id: str,
    pay: PayWith,
    *,
    claim: Claim | None = None,
    respond: Any = None,
) -> Outcome:
    """Pay an order (see the module's docstring). ``claim`` and ``respond`` (outcome → (status,
    body)) store the answer under the caller's ``Idempotency-Key`` in the recording transaction."""
    if claim is not None and claim.recovery_point.startswith(RECOVERY_POINT):
        # A retry of this key: its own payment, whatever became of it meanwhile.
        payment_id = claim.recovery_point.removeprefix(RECOVERY_POINT)
        with reading(sessions) as session:
            payment_for(session, principal, payment_id)
        return _drive(sessions, security, principal, payment_id, claim=claim, respond=respond, call=_ask)

    def prepare(claim: Claim | None) -> tuple[_Prepared, Claim | None]:
        with transaction(sessions) as session:
            prepared = _prepare(session, security, principal, order_id, pay)
            if claim is not None:  # the key's recovery point: the payment this request is driving
                claim = advance(session, claim, f"{RECOVERY_POINT}{prepared.payment_id}")
        return prepared, claim

    prepared, claim = prepare(claim)
    if prepared.taken_up and _stale_payment(sessions, prepared.payment_id):
        # An attempt whose request is gone: settle it by asking the provider. Unless the provider
        # made no charge, what it made is this request's answer; if it made none, pay anew.
        settled = _drive(sessions, security, principal, prepared.payment_id, claim=None, respond=None, call=_ask)
        if not isinstance(settled.error, ChargeNotMade):
            if claim is not None and respond is not None:
                with transaction(sessions) as session:
                    finish(session, claim, *respond(session, settled))
            return settled
        prepared, claim = prepare(claim)
    call = _ask if prepared.taken_up else _call
    return _drive(sessions, security, principal, prepared.payment_id, claim=claim, respond=respond, call=call)


def _stale_payment(sessions: sessionmaker[Session], payment_id: str) -> bool:
    with reading(sessions) as session:
        payment = session.get(Payment, payment_id)
        return payment is not None and payment.status == "pending" and _stale(payment)


def _drive(
    sessions: sessionmaker[Session],
    security: Security,
    principal: Principal | None,
    payment_id: str,
    *,
    claim: Claim | None,
    respond: Any,
    call: Any,
    by: str | None = None,
) -> Outcome:
    """Phases 2 and 3 for ``payment_id``: ``call`` the provider (unless the payment is settled
    already: then it answers what it became) and record its answer."""
    with reading(sessions) as session:
        payment = session.get(Payment, payment_id)
        assert payment is not None
        order = session.get(Order, payment.order_id) if payment.order_id else None
        called = payment.status == "pending"
        adapter = gateways.adapter_for_provider(session, security, payment.provider_id) if called else None
    result, error = call(adapter, payment, order) if called else (None, None)
    # ProviderUnavailable propagates: the payment stays pending, asked about by the next taker or the sweep
    by = by if by is not None else actor(principal)
    with transaction(sessions) as session:
        payment = lock_payment(session, payment_id)
        if called and (
            payment.status == "pending" or (payment.status == "failed" and result and result.status == ChargeStatus.SUCCEEDED)
        ):
            status = apply_outcome(session, payment, result, by=by, error=error)
            if status == 402 and isinstance(error, BillfoldError) and not isinstance(error, (Declined, ChargeNotMade)):
                status = error.status  # a refusal answers as itself (400 invalid_provider_request, ...)
        elif payment.status == "pending":  # still waiting (for the customer, or the provider)
            status = 202
        else:
            status = {"completed": 200, "refunded": 200, "failed": 402}[payment.status]
        if status >= 400 and error is None:
            error = _failure_of(payment)
        outcome = Outcome(status, payment.order_id or "", payment.id, error if status >= 400 else None)
        if claim is not None and respond is not None:
            finish(session, claim, *respond(session, outcome))
    return outcome


def unknown_outcomes(session: Session, limit: int) -> list[str]:
    """Order payments still pending ``STALE_AFTER`` after they began with no charge recorded (their
    request crashed or timed out before the provider's answer was written), oldest first."""
    statement = (
        sa.select(Payment.id)
        .where(
            Payment.order_id.is_not(None),
            Payment.status == "pending",
            Payment.provider_payment_id.is_(None),
            Payment.created_at <= clock.now() - STALE_AFTER,
        )
        .order_by(Payment.id)
        .limit(limit)
    )
    return list(session.scalars(statement))


def settle(sessions: sessionmaker[Session], security: Security, payment_id: str, *, by: str) -> Outcome:
    """Record what the provider made for a payment whose answer was never heard (the sweep's work):
    its charge as it is now, or ``failed`` when it made none (``STALE_AFTER`` has passed)."""
    return _drive(sessions, security, None, payment_id, claim=None, respond=None, call=_ask, by=by)


def visible_payments(session: Session, principal: Principal) -> sa.Select[tuple[Payment]]:
    """Every payment for the shop's admins and read API keys; for a user, the payments of the
    orders and subscriptions they may see (their own and their organizations')."""
    if principal.is_admin:
        principal.require_scope("read")
        return sa.select(Payment)
    orders = readable(principal, Order).with_only_columns(Order.id)
    subscribed = readable(principal, Subscription).with_only_columns(Subscription.id)
    return sa.select(Payment).where(sa.or_(Payment.order_id.in_(orders), Payment.subscription_id.in_(subscribed)))


def payment_for(session: Session, principal: Principal, payment_id: str, *, change: bool = False) -> Payment:
    """A payment of an order the principal may see; NotFound otherwise."""
    payment = session.get(Payment, payment_id) if has_prefix(payment_id, "pay") else None
    if payment is None or payment.order_id is None:
        raise NotFound(f"no payment {payment_id}")
    service.get_order(session, principal, payment.order_id, change=change)
    return payment


def _waiting(session: Session, principal: Principal, payment_id: str) -> Payment:
    payment = payment_for(session, principal, payment_id, change=True)
    order = session.get(Order, payment.order_id)
    assert order is not None
    service.require_buyer(session, principal, order)
    if payment.status != "pending" or _meta(payment).get("provider_status") != WAITING_FOR_CUSTOMER:
        raise PaymentNotWaiting(f"payment {payment.id} is not waiting for the customer's action")
    return payment


def confirm(
    sessions: sessionmaker[Session], security: Security, principal: Principal, payment_id: str, *, claim: Claim | None = None, respond: Any = None
) -> Outcome:
    """Finish a payment after the customer's action (3-D Secure)."""
    with transaction(sessions) as session:
        _waiting(session, principal, payment_id)

    def call(adapter: Any, payment: Payment, order: Order | None) -> tuple[ChargeResult | None, Exception | None]:
        try:
            return adapter.confirm(charge_id=payment.provider_payment_id, idempotency_key=f"billfold-{payment.id}-confirm"), None
        except Declined as declined:
            return declined.charge, declined

    return _drive(sessions, security, principal, payment_id, claim=claim, respond=respond, call=call)


def cancel_payment(
    sessions: sessionmaker[Session], security: Security, principal: Principal, payment_id: str, *, claim: Claim | None = None, respond: Any = None
) -> Outcome:
    """End a payment that waits for the customer's action; the order can be paid again. If the
    provider cannot cancel the charge because it was completed or ended meanwhile, the payment
    records what the charge became (paid: the order is paid)."""
    with transaction(sessions) as session:
        _waiting(session, principal, payment_id)

    def call(adapter: Any, payment: Payment, order: Order | None) -> tuple[ChargeResult | None, Exception | None]:
        try:
            return adapter.cancel(charge_id=payment.provider_payment_id, idempotency_key=f"billfold-{payment.id}-cancel"), None
        except (ProviderUnavailable, IdempotencyMismatch):
            raise
        except ProviderError:
            # The charge is no longer where our books say (confirmed, or ended, meanwhile): record
            # where it is, so the payment does not wait for an action that cannot come.
            return _ask(adapter, payment, order)

    return _drive(sessions, security, principal, payment_id, claim=claim, respond=respond, call=call)
