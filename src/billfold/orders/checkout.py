"""Checkout: paying an order through a provider, safe to retry at every step.

The order is what is paid for; the payment itself runs through the payment engine
(payments/engine.py), in three phases, each its own transaction, bounded by the one call to the
provider (reference/providers.md §1):

1. **prepare** (order row locked): refuse an order that is not payable; otherwise find the payment
   already under way for this order, or route a new one (payments/routing.py: the method, the
   provider, what it can do) and start it (``pending``). Its id makes the provider's idempotency
   key (``engine.provider_key(payment id, "charge")``).
2. **charge**: one call to the provider, outside any transaction.
3. **record** (payment and order locked): move the payment, and the order once paid in full
   (``OrderPayments``, the order's side of the engine), by their state machines; an outcome
   recorded already is left alone.

A refusal that is not "outcome unknown" (a decline, a token or request the provider refuses, a
capability it lacks) settles the payment as ``failed`` at once: the order can be paid again, with
another token, or cancelled.

A crash or a provider timeout (``ProviderUnavailable``) between 2 and 3 leaves the payment
``pending`` with its outcome unknown. Whoever takes it up asks the provider first what the
payment's key made (``engine.ask``) and records that, without charging again: the next checkout
of the order (with or without the same ``Idempotency-Key``), or the sweep (orders/sweeps.py),
which settles every such payment ``engine.STALE_AFTER`` after it began. When the provider made no
charge, a payment that young is charged now with the same key (its first request may still be
under way, so this stays safe however many requests race), and an older one is settled ``failed``:
its request is gone, and the order is free again. Many checkouts of one order at once therefore
share one payment and one provider charge. A payment waiting for the customer's action (3-D
Secure) is finished with ``confirm`` or ended with ``cancel_payment``; a new checkout meanwhile is
refused.

A keyed retry resumes from its recovery point (``payment:<id>``): it answers what its own payment
became, even when another request or the sweep finished it meanwhile.

``buy`` is a checkout in one request (``POST /v1/checkouts``): phase 1 also writes the order, in
the same transaction, so a refusal before the provider leaves nothing; the rest is the above.

Every function answers an ``engine.Outcome``; the routes (orders/api.py) answer it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from billfold.accounts.access import owner_of, readable
from billfold.accounts.security import Principal, Security
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit.db import hold, reading, transaction
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import NotFound
from billfold.idempotency import Claim, advance, finish
from billfold.kit.ids import has_prefix
from billfold.models import Order, Payment, Subscription
from billfold.orders import events, service
from billfold.orders.service import OrderNotPayable, actor
from billfold.orders.states import ORDER
from billfold.payments import customers, engine, routing
from billfold.payments.states import waiting
from billfold.payments.engine import ChargeFor, ChargeNotMade, Outcome, PaymentNotWaiting, PaymentRequiresAction, Result

RECOVERY_POINT = "payment:"


class OrderPayments:
    """An order, as what its payments pay for: paid once its completed payments cover its total,
    refunded once every payment of it is."""

    def __init__(self, settings: Settings) -> None:
        self._orders: dict[str, Order] = {}

    def read(self, session: Session, payments: Sequence[Payment]) -> None:
        for payment in payments:
            order = session.get(Order, payment.order_id)
            assert order is not None
            self._orders[order.id] = order

    def describe(self, payment: Payment) -> ChargeFor:
        order = self._orders[payment.order_id or ""]
        return ChargeFor(f"Order {order.order_number}", {"payment_id": payment.id, "order_id": order.id})

    def lock(self, session: Session, payments: Sequence[Payment]) -> None:
        """Nothing before the payments: an order is locked after its payment, as a refund does."""

    def charged(self, session: Session, payment: Payment, error: Exception | None, *, by: str | None) -> None:
        order = _lock_order(session, payment.order_id or "")
        hold(session, order)  # the reactions and the answer read it again in this transaction
        if payment.status == "completed" and order.status == "pending" and _paid_in_full(session, order, payment):
            ORDER.move(session, order, "paid", by=by, payment_id=payment.id)
            order.completed_at = clock.now()
            session.flush()
            events.order_paid(session, order, payment)

    def refunded(self, session: Session, payment: Payment, *, by: str | None) -> None:
        order = _lock_order(session, payment.order_id or "")
        still_paid = session.scalar(
            sa.select(sa.func.count()).select_from(Payment).where(Payment.order_id == order.id, Payment.status == "completed")
        )
        if order.status == "paid" and not still_paid:
            ORDER.move(session, order, "refunded", by=by, payment_id=payment.id)
            session.flush()
            events.order_refunded(session, order)


def _lock_order(session: Session, order_id: str) -> Order:
    statement = sa.select(Order).where(Order.id == order_id).execution_options(populate_existing=True)
    return session.scalars(for_update(statement, session)).one()


_PAID = sa.select(sa.func.coalesce(sa.func.sum(Payment.amount_cents), 0)).where(
    Payment.order_id == sa.bindparam("order_id"), Payment.status == "completed"
)
_UNDER_WAY = (
    sa.select(Payment).where(Payment.order_id == sa.bindparam("order_id"), Payment.status == "pending")
    .order_by(Payment.id.desc()).limit(1)
)


def _paid_in_full(session: Session, order: Order, completed: Payment) -> bool:
    """Whether the order's completed payments, ``completed`` among them, cover its total; a payment
    of the whole total covers it alone, with no sum to read."""
    if completed.currency == order.currency and completed.amount_cents >= order.total_cents:
        return True
    paid = session.scalar(_PAID, {"order_id": order.id})
    return int(paid or 0) >= order.total_cents


def _prepare(
    session: Session, security: Security, principal: Principal, order_id: str, pay: routing.PayWith,
    *, placed: Order | None = None,
) -> tuple[str, bool]:
    """The payment this request drives, and whether it was taken up (an earlier request's payment,
    whose outcome this request did not hear). ``placed``: the order, placed by this transaction
    (``buy``): no one else can see it yet, so it is neither read nor locked again, and has no
    payment under way."""
    if placed is not None:
        order = placed
        service.require_buyer(session, principal, order)
        under_way = None
    else:
        order = service.get_order(session, principal, order_id, lock=True, change=True)
        service.require_buyer(session, principal, order)
        if order.status != "pending":
            raise OrderNotPayable(f"order {order.order_number} is {order.status}; only a pending order can be paid")
        under_way = session.scalars(_UNDER_WAY, {"order_id": order.id}).first()
    if under_way is not None:
        if waiting(under_way):
            raise PaymentRequiresAction(
                f"payment {under_way.id} of order {order.order_number} waits for the customer: "
                f"confirm it (POST /v1/payments/{under_way.id}/confirm) or cancel it first",
                payment_id=under_way.id,
            )
        return under_way.id, True
    owner = owner_of(order)
    route = routing.route(
        session, security, owner, order.currency, pay, without_method="give payment_method_id or token",
        facts=routing.order_facts(session, order),
    )
    customer = customers.ensure_provider_customer(session, route.adapter, owner) if route.method else None
    payment = engine.start_payment(
        session, amount_cents=order.total_cents, currency=order.currency, provider_id=route.provider.id,
        method=route.method, user_id=order.user_id, organization_id=order.organization_id, order_id=order.id,
        token=pay.token, customer_id=customer.provider_customer_id if customer else None,
        approval=route.adapter.capabilities.buyer_approval, by=actor(principal), write=True,
    )
    session.flush()
    hold(session, payment, order, route.provider)  # phase 2's read in this transaction (_read_new) finds them
    return payment.id, False


def checkout(
    sessions: sessionmaker[Session],
    security: Security,
    principal: Principal,
    order_id: str,
    pay: routing.PayWith,
    *,
    claim: Claim | None = None,
    respond: Any = None,
) -> Outcome:
    """Pay an order (see the module's docstring). ``claim`` and ``respond`` (outcome → (status,
    body)) store the answer under the caller's ``Idempotency-Key`` in the recording transaction."""
    if claim is not None and claim.recovery_point.startswith(RECOVERY_POINT):
        return _resume(sessions, security, principal, claim, respond)

    def prepare(claim: Claim | None) -> tuple[str, bool, Claim | None, Any]:
        with transaction(sessions) as session:
            payment_id, taken_up = _prepare(session, security, principal, order_id, pay)
            if claim is not None:  # the key's recovery point: the payment this request is driving
                claim = advance(session, claim, f"{RECOVERY_POINT}{payment_id}")
            read = None if taken_up else _read_new(sessions, session, security, principal, payment_id)
        return payment_id, taken_up, claim, read

    payment_id, taken_up, claim, read = prepare(claim)
    if taken_up and _stale_payment(sessions, payment_id):
        # An attempt whose request is gone: settle it by asking the provider. Unless the provider
        # made no charge, what it made is this request's answer; if it made none, pay anew.
        settled = _drive(sessions, security, principal, payment_id, engine.ask, claim=None, respond=None)
        if not isinstance(settled.error, ChargeNotMade):
            if claim is not None and respond is not None:
                with transaction(sessions) as session:
                    finish(session, claim, *respond(session, settled))
            return settled
        payment_id, taken_up, claim, read = prepare(claim)
    call = engine.ask if taken_up else engine.charge
    return _drive(sessions, security, principal, payment_id, call, claim=claim, respond=respond, read=read)


def buy(
    sessions: sessionmaker[Session],
    security: Security,
    principal: Principal,
    place: Callable[[Session, Callable[[Order], None]], Order],
    pay: routing.PayWith,
    *,
    claim: Claim | None = None,
    respond: Any = None,
) -> Outcome:
    """Place an order and pay it in one request (``POST /v1/checkouts``): ``place(session, then)``
    writes the order (``service.create_order`` with ``before_numbering=then``); phase 1 starts its
    payment in the same transaction, before the order's number is taken (so the number's row lock
    is held no longer than for an order alone), with the key's recovery point: everything is
    recorded before the provider is called, and a refusal before it (a bad item, an unknown method
    or provider) leaves nothing. Phases 2 and 3, a retry of the key, a crash and the sweep are
    exactly a checkout's."""
    if claim is not None and claim.recovery_point.startswith(RECOVERY_POINT):
        return _resume(sessions, security, principal, claim, respond)
    with transaction(sessions) as session:
        started: list[tuple[str, bool]] = []
        place(session, lambda order: started.append(_prepare(session, security, principal, order.id, pay, placed=order)))
        [(payment_id, taken_up)] = started
        assert not taken_up, "a new order has no payment under way"
        if claim is not None:
            claim = advance(session, claim, f"{RECOVERY_POINT}{payment_id}")
        read = _read_new(sessions, session, security, principal, payment_id)  # after the number: the charge names it
    return _drive(sessions, security, principal, payment_id, engine.charge, claim=claim, respond=respond, read=read)


def _read_new(
    sessions: sessionmaker[Session], session: Session, security: Security, principal: Principal, payment_id: str
) -> tuple[engine.Charges, engine.Read]:
    """Phase 2's read of a payment this transaction has just started, made before it commits."""
    return engine.charges_read(sessions, session, security, payment_id, engine.charge, by=actor(principal))


def _resume(sessions: sessionmaker[Session], security: Security, principal: Principal, claim: Claim, respond: Any) -> Outcome:
    """A retry of a key that reached its payment: its own payment, whatever became of it meanwhile."""
    payment_id = claim.recovery_point.removeprefix(RECOVERY_POINT)
    with reading(sessions) as session:
        payment = payment_for(session, principal, payment_id)
        while (following := routing.followed_by(payment)) is not None:  # failed over: its successor's outcome
            payment = payment_for(session, principal, following)
        payment_id = payment.id
    return _drive(sessions, security, principal, payment_id, engine.ask, claim=claim, respond=respond)


def _stale_payment(sessions: sessionmaker[Session], payment_id: str) -> bool:
    with reading(sessions) as session:
        payment = session.get(Payment, payment_id)
        return payment is not None and payment.status == "pending" and engine.stale(payment)


def _drive(
    sessions: sessionmaker[Session],
    security: Security,
    principal: Principal | None,
    payment_id: str,
    call: engine.Call,
    *,
    claim: Claim | None,
    respond: Any,
    by: str | None = None,
    read: tuple[engine.Charges, engine.Read] | None = None,
) -> Outcome:
    """Phases 2 and 3 for ``payment_id`` (``engine.run``): ``call`` the provider (unless the
    payment is settled already: then it answers what it became) and record its answer.
    ProviderUnavailable propagates: the payment stays pending, asked about by the next taker or
    the sweep."""
    after = None
    if claim is not None and respond is not None:
        after = lambda session, outcome: finish(session, claim, *respond(session, outcome))  # noqa: E731
    outcome = engine.settle_charge(
        sessions, security, security.settings, payment_id, call, by=by if by is not None else actor(principal), after=after,
        read=read,
    )
    if outcome.result is Result.UNKNOWN:
        assert outcome.error is not None
        raise outcome.error
    return outcome


ASK_WAITING_FOR = timedelta(days=3)
"""How long after it began a payment still waiting at the provider is asked about by the sweep."""


def unknown_outcomes(session: Session, limit: int) -> list[str]:
    """Order payments still pending ``engine.STALE_AFTER`` after they began, oldest first: those with
    no charge recorded (their request crashed or timed out before the provider's answer was
    written), and, for ``ASK_WAITING_FOR``, those recorded under a provider's charge but left alone
    for ``STALE_AFTER`` (waiting for the customer, or processing): a confirm whose answer was lost,
    or a buyer who approved at the provider and never came back. The sweep stamps each of those it
    asks, so one still waiting is asked again only ``STALE_AFTER`` later."""
    now = clock.now()
    quiet = sa.and_(
        Payment.provider_payment_id.is_not(None),
        Payment.updated_at <= now - engine.STALE_AFTER,
        Payment.created_at >= now - ASK_WAITING_FOR,
    )
    statement = sa.select(Payment.id).where(
        Payment.order_id.is_not(None), sa.or_(Payment.provider_payment_id.is_(None), quiet)
    )
    return list(session.scalars(engine.stale_pending(statement).limit(limit)))


def asked(session: Session, payment_id: str) -> None:
    """Stamp a payment the sweep asked about and found still pending, so it waits its turn again."""
    session.execute(
        sa.update(Payment).where(Payment.id == payment_id, Payment.status == "pending").values(updated_at=clock.now())
    )


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
    if not waiting(payment):
        raise PaymentNotWaiting(f"payment {payment.id} is not waiting for the customer's action")
    return payment


def confirm(
    sessions: sessionmaker[Session], security: Security, principal: Principal, payment_id: str, *, claim: Claim | None = None, respond: Any = None
) -> Outcome:
    """Finish a payment after the customer's action (3-D Secure)."""
    with transaction(sessions) as session:
        _waiting(session, principal, payment_id)
    return _drive(sessions, security, principal, payment_id, engine.confirm, claim=claim, respond=respond)


def cancel_payment(
    sessions: sessionmaker[Session], security: Security, principal: Principal, payment_id: str, *, claim: Claim | None = None, respond: Any = None
) -> Outcome:
    """End a payment that waits for the customer's action; the order can be paid again. If the
    provider cannot cancel the charge because it was completed or ended meanwhile, the payment
    records what the charge became (paid: the order is paid)."""
    with transaction(sessions) as session:
        _waiting(session, principal, payment_id)
    return _drive(sessions, security, principal, payment_id, engine.cancel, claim=claim, respond=respond)
