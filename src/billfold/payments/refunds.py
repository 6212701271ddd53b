"""Refunds: giving back all or part of a completed payment (of an order or of a subscription), any
number of times until it is used up.

A refund runs through the payment engine (engine.py), in three phases around the one provider call:

1. **prepare** (payment locked): refuse what cannot be refunded, and what the provider cannot do
   (``routing.require_refund``: refunds, partial refunds, the currency), before anything is written; then
   create this request's own ``pending`` refund. Pending refunds count against what is left, so
   refunds at once can never together exceed what was paid. Under an ``Idempotency-Key`` the
   key's recovery point names the refund, so a retry with that key drives the same refund.
2. **ask** the provider, with no transaction open, with the refund's own idempotency key
   (``engine.provider_key(refund id, "refund")``) and parameters read from the refund row, so asking again
   (after a timeout or a crash) gets the provider's first answer, never a second refund.
3. **record** (payment and refund locked) the answer by the refund state machine; an outcome
   recorded already is left alone. A payment refunded in full becomes ``refunded``, and what it
   paid for follows (its payable: an order is refunded once every payment of it is).

A request never takes up another request's refund. A refund whose outcome is unknown (the
provider timed out, or we crashed before recording) stays ``pending`` until the retry with its
own key, or the ``refunds.settle`` sweep, asks the provider again (``get_refund`` once the
provider's id is known). The payment, and its order, become ``refunded`` only when fully
refunded; a partial refund leaves them ``completed``/``paid`` with the refunds listed.

Services answer with an ``engine.Outcome``; the routes answer it (payments/api.py: 201, 202, 409).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from billfold.accounts.organizations.service import actor_id
from billfold.accounts.security import Principal, Security
from billfold.audit import audit
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit.db import transaction
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import BillfoldError, Conflict, InvalidAmount, NotFound
from billfold.idempotency import Claim, advance, finish
from billfold.kit.ids import has_prefix
from billfold.kit.sweeps import Context, claim_batch, sweep
from billfold.kit.money import Money
from billfold.models import Payment, Refund
from billfold.orders import events
from billfold.payments import engine, provider_config
from billfold.payments.engine import Answer, Outcome, Result
from billfold.payments.details import PaymentDetails
from billfold.payments.routing import require_refund
from billfold.payments.states import PAYMENT, REFUND
from billfold.providers.base import DisputeResult, DisputeStatus, ProviderAdapter, RefundResult, RefundStatus
from billfold.providers.errors import IdempotencyMismatch, NotSupported, ProviderError, ProviderUnavailable

log = logging.getLogger("billfold.refunds")

BATCH = 50
RECOVERY_PREFIX = "refund:"
SYSTEM = "system"


class NotRefundable(Conflict):
    code = "payment_not_refundable"
    title = "The payment cannot be refunded"


class RefundInProgress(Conflict):
    code = "refund_in_progress"
    title = "A refund is under way"


class RefundFailed(BillfoldError):
    """The provider refused the refund or said it failed: nothing was given back. A conflict with
    the payment's state at the provider (409), not a server error: the answer is final."""

    status = 409
    code = "refund_failed"
    title = "The payment provider did not make the refund"


def refunded_cents(session: Session, payment_id: str, statuses: tuple[str, ...] = ("succeeded",)) -> int:
    return int(
        session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(Refund.amount_cents), 0)).where(
                Refund.payment_id == payment_id, Refund.status.in_(statuses)
            )
        )
        or 0
    )


_REFUNDS_OF = sa.select(Refund).where(Refund.payment_id.in_(sa.bindparam("ids", expanding=True))).order_by(Refund.id)


def refunds_of(session: Session, payment_ids: list[str]) -> dict[str, list[Refund]]:
    grouped: dict[str, list[Refund]] = {payment_id: [] for payment_id in payment_ids}
    if payment_ids:
        for refund in session.scalars(_REFUNDS_OF, {"ids": payment_ids}):
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


def _lock_refund(session: Session, refund_id: str) -> Refund:
    statement = sa.select(Refund).where(Refund.id == refund_id).execution_options(populate_existing=True)
    return session.scalars(for_update(statement, session)).one()


def _prepare(
    session: Session, security: Security, principal: Principal, payment_id: str, amount_cents: int | None, reason: str | None
) -> str:
    principal.require_admin()
    principal.require_scope("write")
    payment = _lock_payment(session, payment_id)
    if payment.status not in ("completed", "refunded") or not payment.provider_payment_id:
        raise NotRefundable(f"payment {payment.id} is {payment.status}; only a completed payment can be refunded")
    # Inactive or misconfigured: refused here, before any row is written.
    adapter = provider_config.adapter_for_provider(session, security, payment.provider_id)
    pending = session.scalars(
        sa.select(Refund).where(Refund.payment_id == payment.id, Refund.status == "pending").order_by(Refund.id)
    ).all()
    unrefunded = payment.amount_cents - refunded_cents(session, payment.id)
    left = unrefunded - sum(p.amount_cents for p in pending)
    amount = left if amount_cents is None else amount_cents
    if amount <= 0 or amount > left:
        shown = Money(max(left, 0), payment.currency).format()
        if pending and amount <= unrefunded:  # it would fit once the pending refunds are settled
            raise RefundInProgress(
                f"refund{'s' if len(pending) > 1 else ''} {', '.join(p.id for p in pending)} of payment {payment.id} "
                f"{'are' if len(pending) > 1 else 'is'} under way; {shown} is left besides",
                pending_refund_ids=[p.id for p in pending], left_cents=max(left, 0),
            )
        raise InvalidAmount(
            f"payment {payment.id} has {shown} left to refund; cannot refund {Money(max(amount, 0), payment.currency).format()}"
            if unrefunded > 0
            else f"payment {payment.id} is refunded in full already",
            errors=[{"field": "amount_cents", "message": f"at most {max(left, 0)}"}],
        )
    require_refund(adapter.capabilities, payment, amount)
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
    REFUND.start(session, refund, "pending", by=actor_id(principal), payment_id=payment.id, amount_cents=amount)
    return refund.id


def _resumed(session: Session, principal: Principal, payment_id: str, claim: Claim | None) -> str | None:
    """The refund this request's Idempotency-Key started before (its recovery point), if any."""
    if claim is None or not claim.recovery_point.startswith(RECOVERY_PREFIX):
        return None
    principal.require_admin()
    principal.require_scope("write")
    refund_id = claim.recovery_point.removeprefix(RECOVERY_PREFIX)
    row = session.get(Refund, refund_id)
    if row is None or row.payment_id != payment_id:  # the key's hash covers the path: cannot happen
        raise NotFound(f"no refund {refund_id} of payment {payment_id}")
    return refund_id


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
) -> Outcome:
    """Refund ``amount_cents`` (all that is left when None) of a completed payment; what became of
    the refund (``refund_id``): succeeded, pending at the provider, or failed (refused, recorded).

    Raises ProviderUnavailable (with ``refund_id``) when the provider's answer is unknown: the
    refund stays pending for the retry with the same Idempotency-Key, or the sweep. ``claim`` and
    ``respond`` (outcome → (status, body)) store the answer under the caller's key in the
    recording transaction."""
    with transaction(sessions) as session:
        refund_id = _resumed(session, principal, payment_id, claim)
        if refund_id is None:
            refund_id = _prepare(session, security, principal, payment_id, amount_cents, reason)
            if claim is not None:  # the key's recovery point: the refund this request drives
                claim = advance(session, claim, f"{RECOVERY_PREFIX}{refund_id}")
    return settle(sessions, security, refund_id, by=actor_id(principal), claim=claim, respond=respond)


def settle(
    sessions: sessionmaker[Session],
    security: Security,
    refund_id: str,
    *,
    by: str | None,
    claim: Claim | None = None,
    respond: Any = None,
) -> Outcome:
    """Ask the provider about a pending refund and record its answer (engine.run). A refund settled
    already is only answered. ProviderUnavailable leaves it pending."""
    after = None
    if claim is not None and respond is not None:
        after = lambda session, outcomes: finish(session, claim, *respond(session, outcomes[0]))  # noqa: E731
    [outcome] = engine.run(sessions, security, Refunds(security.settings, by), [refund_id], after=after)
    if outcome.result is Result.UNKNOWN:
        assert outcome.error is not None
        raise outcome.error
    return outcome


@dataclass
class Refunds:
    """The payment engine's move for refunds: each asked about with its own key, its answer
    recorded by the refund state machine, and a payment refunded in full moved on, with what it
    paid for (its payable)."""

    settings: Settings
    by: str | None
    recheck: bool = False  # also ask about succeeded refunds: a refund may fail after succeeding (a webhook says so)
    _payments: dict[str, Payment] = field(default_factory=dict)

    def read(self, session: Session, ids: Sequence[str]) -> list[Refund]:
        rows = []
        for refund_id in ids:
            row = session.get(Refund, refund_id)
            payment = session.get(Payment, row.payment_id) if row is not None else None
            assert row is not None and payment is not None
            self._payments[row.id] = payment
            rows.append(row)
        return rows

    def asks(self, row: Refund) -> bool:
        return row.status == "pending" or (self.recheck and row.status == "succeeded" and bool(row.provider_refund_id))

    def provider(self, row: Refund) -> str | None:
        # Switched off or broken since the refund was prepared: it stays pending (an earlier ask
        # may have reached the provider), and is asked about once the provider works again.
        return self._payments[row.id].provider_id

    def ask(self, adapter: ProviderAdapter | None, row: Refund) -> Answer:
        """The provider's answer about this refund: its current state once we know its id, else the
        first answer to its own key (a refund it never received is made now, as it was asked)."""
        assert adapter is not None
        payment = self._payments[row.id]
        try:
            if row.provider_refund_id:
                return Answer(adapter.get_refund(row.provider_refund_id))
            return Answer(adapter.refund(
                charge_id=str(payment.provider_payment_id),
                idempotency_key=engine.provider_key(row.id, "refund"),
                amount=Money(row.amount_cents, row.currency),
                reason=row.reason,
                metadata={"refund_id": row.id, "payment_id": row.payment_id},
            ))
        except (ProviderUnavailable, IdempotencyMismatch) as error:
            # Unknown outcome. A mismatch means this key was once sent with other parameters (a
            # refund taken up by another request before this was fixed): only a person can tell.
            raise ProviderUnavailable(error.detail, refund_id=row.id, payment_id=payment.id) from error
        except NotSupported as error:
            # Checked before the refund was written, so the provider's config changed since: an
            # earlier ask may have been made, so it stays pending until the provider can answer.
            error.extra.update(refund_id=row.id, payment_id=payment.id)
            raise
        except ProviderError as error:  # refused: bad state, more than is left, no such charge
            return Answer(None, error)

    def record(self, session: Session, heard: list[tuple[Refund, Answer | None]]) -> list[Outcome]:
        outcomes = []
        for read, answer in heard:
            payment = _lock_payment(session, read.payment_id)
            row = _lock_refund(session, read.id)
            refusal = answer.error if answer is not None else None
            if row.status == "pending" and answer is not None:
                result = answer.result
                assert result is None or isinstance(result, RefundResult)
                if result is not None:
                    row.provider_refund_id = result.id
                    if result.status == RefundStatus.SUCCEEDED:
                        REFUND.move(session, row, "succeeded", by=self.by, provider_refund_id=result.id)
                        row.completed_at = clock.now()
                        self._settle_payment(session, payment)
                    elif result.status in (RefundStatus.FAILED, RefundStatus.CANCELED):
                        row.error_message = f"the provider says the refund {result.provider_status}"
                        REFUND.move(session, row, "failed", by=self.by, reason=row.error_message, provider_refund_id=result.id)
                elif isinstance(refusal, ProviderError):
                    row.error_message = refusal.detail
                    row.metadata_ = {**(row.metadata_ or {}), "provider_code": refusal.code}
                    REFUND.move(session, row, "failed", by=self.by, reason=refusal.detail, code=refusal.code)
            elif row.status == "succeeded" and answer is not None and isinstance(answer.result, RefundResult) \
                    and answer.result.status in (RefundStatus.FAILED, RefundStatus.CANCELED):
                # Failed after succeeding (the card was closed): the money stayed with the shop, so
                # the payment has it again, and the credit note issued for it is voided (kept, with
                # its number: docs/invoices.md "## Credit notes"), all in this transaction.
                row.error_message = f"the provider says the refund {answer.result.provider_status} after succeeding"
                REFUND.move(session, row, "failed", by=self.by, reason=row.error_message, provider_refund_id=row.provider_refund_id)
                if payment.status == "refunded":
                    PAYMENT.move(session, payment, "completed", by=self.by, reason="refund_failed", refund_id=row.id)
                session.flush()
                events.refund_reversed(session, payment, row)
            session.flush()
            ended = {"succeeded": Result.SUCCEEDED, "failed": Result.FAILED}.get(row.status, Result.PENDING)
            outcomes.append(engine.outcome_of(payment, ended, refund_id=row.id, error=refusal if ended is Result.FAILED else None))
        return outcomes

    def unknown(self, row: Refund, error: Exception) -> Outcome:
        return engine.outcome_of(self._payments[row.id], Result.UNKNOWN, refund_id=row.id, error=error)

    def _settle_payment(self, session: Session, payment: Payment) -> None:
        settle_payment(session, self.settings, payment, by=self.by)


def settle_payment(session: Session, settings: Settings, payment: Payment, *, by: str | None) -> None:
    """A payment refunded in full becomes refunded, and what it paid for follows (an order is
    refunded once every payment of it is). Called after each refund that succeeded: what hangs
    on refunds (credit notes, the end of what a refunded order granted) runs through
    ``orders.events``."""
    session.flush()
    events.refund_succeeded(session, payment)
    if refunded_cents(session, payment.id) < payment.amount_cents:
        return
    PAYMENT.move(session, payment, "refunded", by=by)
    engine.payable_for(engine.kind_of(payment), settings).refunded(session, payment, by=by)


def recheck(sessions: sessionmaker[Session], security: Security, refund_id: str, *, by: str | None) -> Outcome:
    """``settle`` that asks about a succeeded refund too, since a provider may fail one afterwards
    (a webhook says so): what the provider has now is recorded."""
    [outcome] = engine.run(sessions, security, Refunds(security.settings, by, recheck=True), [refund_id])
    if outcome.result is Result.UNKNOWN:
        assert outcome.error is not None
        raise outcome.error
    return outcome


# Disputes


DISPUTE_PREFIX = "dispute:"


def record_dispute(session: Session, settings: Settings, payment_id: str, dispute: DisputeResult, *, by: str | None) -> str:
    """Write what the provider says of a dispute of ``payment_id`` (locked here), once per dispute
    and state: its state in the payment's details and an event; a dispute lost takes the money back,
    so it becomes a succeeded refund on our books (``provider_refund_id`` = ``dispute:<id>``), with
    its credit note, and a payment disputed in full becomes refunded. What was done, as a note."""
    payment = _lock_payment(session, payment_id)
    details = PaymentDetails.of(payment)
    known = dict(details.disputes or {})
    state = str(dispute.status)
    if known.get(dispute.id) == state:
        return f"dispute {dispute.id} of payment {payment.id} is {state}, as recorded"
    known[dispute.id] = state
    details.but(disputes=known).write(payment)
    audit(session, "payment", payment.id, f"payment.dispute_{state}", dispute_id=dispute.id,
          amount_cents=dispute.amount.amount, reason=dispute.reason, by=by)
    if dispute.status is not DisputeStatus.LOST:
        return f"dispute {dispute.id} of payment {payment.id} is {state}"
    taken = f"{DISPUTE_PREFIX}{dispute.id}"
    exists = session.scalar(sa.select(Refund.id).where(Refund.payment_id == payment.id, Refund.provider_refund_id == taken))
    left = payment.amount_cents - refunded_cents(session, payment.id, ("succeeded", "pending"))
    amount = min(dispute.amount.amount, left)
    if exists is not None or amount <= 0 or payment.status not in ("completed", "refunded"):
        return f"dispute {dispute.id} of payment {payment.id} is lost; nothing is left to take back"
    refund = Refund(payment_id=payment.id, order_id=payment.order_id, provider_id=payment.provider_id,
                    amount_cents=amount, currency=payment.currency, status="pending", reason="dispute_lost",
                    provider_refund_id=taken)
    session.add(refund)
    session.flush()
    REFUND.start(session, refund, "pending", by=by, payment_id=payment.id, amount_cents=amount, dispute_id=dispute.id)
    REFUND.move(session, refund, "succeeded", by=by, provider_refund_id=taken)
    refund.completed_at = clock.now()
    settle_payment(session, settings, payment, by=by)
    return f"dispute {dispute.id} of payment {payment.id} is lost: refund {refund.id} of {Money(amount, payment.currency).format()}"


def failure_problem(row: Refund) -> dict[str, Any]:
    """The problem document a failed refund is answered with (409 ``refund_failed``): the refund's
    id, its payment, and the provider's code for the refusal when it gave one."""
    detail = row.error_message or "the provider did not make the refund"
    return RefundFailed(
        f"refund {row.id} of payment {row.payment_id} failed: {detail}", refund_id=row.id, payment_id=row.payment_id,
        provider_code=(row.metadata_ or {}).get("provider_code"),
    ).to_problem()


@sweep("refunds.settle", every=timedelta(minutes=1))
def settle_pending_refunds(context: Context, *, older_than: timedelta = engine.STALE_AFTER, limit: int = BATCH) -> int:
    """Refunds pending longer than ``older_than`` (their request timed out or died): each is
    asked about at the provider with its own key (``get_refund`` once its id is known) and its
    answer recorded. Claimed rows are stamped, so one still unanswered is asked again only after
    ``older_than``. How many were asked about."""
    now = clock.now()
    with transaction(context.sessions) as session:
        statement = (
            sa.select(Refund)
            .where(Refund.status == "pending", Refund.updated_at <= now - older_than)
            .order_by(Refund.updated_at, Refund.id)
        )
        claimed = claim_batch(session, statement, limit)
        for row in claimed:
            row.updated_at = now
        refund_ids = [row.id for row in claimed]
    for refund_id in refund_ids:
        try:
            settle(context.sessions, context.security, refund_id, by=SYSTEM)
        except BillfoldError as error:  # still unknown (or the provider is switched off): asked again later
            log.warning("refund %s left pending: %s", refund_id, error.detail)
        except Exception:  # one refund's trouble does not hold back the others
            log.exception("refund %s left pending", refund_id)
    return len(refund_ids)
