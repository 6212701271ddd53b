"""Refunds: giving back all or part of a completed payment, any number of times until it is used up.

Like checkout, a refund runs in three phases around the one provider call: a ``pending`` refund row
is created with the payment locked (so two refunds at once cannot together exceed what was paid:
pending refunds count against what is left), the provider is asked with the refund's own
idempotency key, and the outcome is recorded. A refund whose outcome is unknown (the provider
timed out) stays ``pending`` and is taken up again by the next refund request for the same amount,
with the same provider key. The payment, and its order, become ``refunded`` only when fully
refunded; a partial refund leaves them ``completed``/``paid`` with the refunds listed.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from billfold.accounts.security import Principal, Security
from billfold.kit import clock
from billfold.kit.db import reading, transaction
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import Conflict, InvalidAmount, NotFound
from billfold.kit.idempotency import Claim, finish
from billfold.kit.ids import has_prefix
from billfold.kit.money import Money
from billfold.models import Order, Payment, Refund
from billfold.orders import events
from billfold.orders.service import actor
from billfold.orders.states import ORDER, PAYMENT, REFUND
from billfold.payments import gateways
from billfold.providers.base import RefundStatus
from billfold.providers.errors import InvalidProviderRequest


class NotRefundable(Conflict):
    code = "payment_not_refundable"
    title = "The payment cannot be refunded"


class RefundInProgress(Conflict):
    code = "refund_in_progress"
    title = "A refund is under way"


def refunded_cents(session: Session, payment_id: str, statuses: tuple[str, ...] = ("succeeded",)) -> int:
    return int(
        session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(Refund.amount_cents), 0)).where(
                Refund.payment_id == payment_id, Refund.status.in_(statuses)
            )
        )
        or 0
    )


def refunds_of(session: Session, payment_ids: list[str]) -> dict[str, list[Refund]]:
    grouped: dict[str, list[Refund]] = {payment_id: [] for payment_id in payment_ids}
    if payment_ids:
        for refund in session.scalars(sa.select(Refund).where(Refund.payment_id.in_(payment_ids)).order_by(Refund.id)):
            grouped[refund.payment_id].append(refund)
    return grouped


def _lock_payment(session: Session, payment_id: str) -> Payment:
    payment = None
    if has_prefix(payment_id, "pay"):
        statement = sa.select(Payment).where(Payment.id == payment_id).execution_options(populate_existing=True)
        payment = session.scalars(for_update(statement, session)).one_or_none()
    if payment is None:
        raise NotFound(f"no payment {payment_id}")
    return payment


def _prepare(session: Session, principal: Principal, payment_id: str, amount_cents: int | None, reason: str | None) -> str:
    principal.require_admin()
    principal.require_scope("write")
    payment = _lock_payment(session, payment_id)
    if payment.status not in ("completed", "refunded") or not payment.provider_payment_id:
        raise NotRefundable(f"payment {payment.id} is {payment.status}; only a completed payment can be refunded")
    pending = session.scalars(
        sa.select(Refund).where(Refund.payment_id == payment.id, Refund.status == "pending").order_by(Refund.id)
    ).first()
    if pending is not None:
        if amount_cents in (None, pending.amount_cents):
            return pending.id  # its outcome is unknown: ask the provider again with its key
        raise RefundInProgress(
            f"refund {pending.id} of {pending.amount_cents} on payment {payment.id} is under way; retry it first",
            refund_id=pending.id,
        )
    left = payment.amount_cents - refunded_cents(session, payment.id)
    amount = left if amount_cents is None else amount_cents
    if amount <= 0 or amount > left:
        shown = Money(left, payment.currency)
        raise InvalidAmount(
            f"payment {payment.id} has {shown.format()} left to refund; cannot refund {Money(max(amount, 0), payment.currency).format()}"
            if left > 0
            else f"payment {payment.id} is refunded in full already",
            errors=[{"field": "amount_cents", "message": f"at most {left}"}],
        )
    refund = Refund(
        payment_id=payment.id,
        order_id=payment.order_id,
        provider_id=payment.provider_id,
        amount_cents=amount,
        currency=payment.currency,
        status="pending",
        reason=reason,
    )
    session.add(refund)
    session.flush()
    REFUND.start(session, refund, "pending", by=actor(principal), payment_id=payment.id, amount_cents=amount)
    return refund.id


def refund(
    sessions: sessionmaker[Session],
    security: Security,
    principal: Principal,
    payment_id: str,
    *,
    amount_cents: int | None = None,
    reason: str | None = None,
    claim: Claim | None = None,
    respond: Any = None,
) -> str:
    """Refund ``amount_cents`` (all that is left when None) of a completed payment; the refund's id."""
    with transaction(sessions) as session:
        refund_id = _prepare(session, principal, payment_id, amount_cents, reason)
    with reading(sessions) as session:
        row = session.get(Refund, refund_id)
        payment = session.get(Payment, payment_id)
        assert row is not None and payment is not None
        adapter = gateways.adapter_for_provider(session, security, payment.provider_id)
    failure: str | None = None
    try:
        result = adapter.refund(
            charge_id=payment.provider_payment_id,
            idempotency_key=f"billfold-{row.id}-refund",
            amount=Money(row.amount_cents, row.currency),
            reason=reason,
            metadata={"refund_id": row.id, "payment_id": payment.id},
        )
        succeeded, provider_refund_id = result.status == RefundStatus.SUCCEEDED, result.id
        failed = result.status == RefundStatus.FAILED
    except InvalidProviderRequest as error:  # e.g. the provider says it is refunded already
        succeeded, failed, provider_refund_id, failure = False, True, None, error.detail
    with transaction(sessions) as session:
        payment = _lock_payment(session, payment_id)
        row = session.scalars(for_update(sa.select(Refund).where(Refund.id == refund_id), session)).one()
        by = actor(principal)
        if row.status == "pending":
            row.provider_refund_id = provider_refund_id
            if succeeded:
                REFUND.move(session, row, "succeeded", by=by, provider_refund_id=provider_refund_id)
                row.completed_at = clock.now()
                _settle(session, payment, by)
            elif failed:
                row.error_message = failure
                REFUND.move(session, row, "failed", by=by, reason=failure)
        session.flush()
        if claim is not None and respond is not None:
            finish(session, claim, *respond(session, row.id))
    return refund_id


def _settle(session: Session, payment: Payment, by: str | None) -> None:
    """A payment refunded in full becomes refunded; its order too once every payment is. Called
    after each refund that succeeded: what hangs on refunds (credit notes, the end of what a
    refunded order granted) runs here, through ``orders.events``."""
    session.flush()
    events.refund_succeeded(session, payment)
    if refunded_cents(session, payment.id) < payment.amount_cents:
        return
    PAYMENT.move(session, payment, "refunded", by=by)
    if payment.order_id is None:
        return
    order = session.scalars(for_update(sa.select(Order).where(Order.id == payment.order_id), session)).one()
    still_paid = session.scalar(
        sa.select(sa.func.count()).select_from(Payment).where(Payment.order_id == order.id, Payment.status == "completed")
    )
    if order.status == "paid" and not still_paid:
        ORDER.move(session, order, "refunded", by=by, payment_id=payment.id)
        session.flush()
        events.order_refunded(session, order)
