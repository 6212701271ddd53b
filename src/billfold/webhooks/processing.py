"""Processing the webhook inbox: each stored event converges the payment or refund it is about on
the provider's current state.

An event says only that something happened to a provider's object. It may come twice, late, or
after a later one (a ``charge.failed`` after the ``charge.succeeded`` it preceded), so its snapshot
is never trusted: the sweep finds our payment or refund by the provider's object id (or, when our
record never heard that id, by the ``payment_id`` / ``refund_id`` Billfold put in the object's
metadata, as the provider reports it now) and settles it through the money path
(``engine.settle_charge`` with ``engine.ask``, ``refunds.settle``), which asks the provider and
moves only a pending record. A completed payment stays completed, whatever an event says.

A ``refund.failed`` may come after the refund succeeded: the refund is asked about even then
(``refunds.recheck``), and a payment refunded in full has its money back. A dispute is read from
the provider (``get_dispute``) and written on the payment it disputes; one lost becomes a refund
(``refunds.record_dispute``). A saved method updated or detached at the provider is brought in line
(``methods.provider_changed``).

An event is then ``processed`` with a ``note`` of what it did; one about an object Billfold does not
know, or of a type it does not act on, is processed with a note saying so. An event whose
processing fails (the provider does not answer, or is switched off) stays unprocessed with its
``attempts``, ``last_error`` and ``next_attempt_at`` (``kit.sweeps.backoff``), and is tried again then.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billfold.kit import clock
from billfold.kit.db import reading, transaction
from billfold.kit.errors import BillfoldError
from billfold.kit.sweeps import Context, backoff, claim_batch, sweep
from billfold.kit.db.dialects import for_update
from billfold.models import Payment, PaymentMethod, PaymentWebhook, Refund
from billfold.payments import engine, methods, provider_config, refunds
from billfold.payments.engine import Result
from billfold.providers.base import PaymentMethodResult, ProviderAdapter, ReadsDisputes, ReadsPaymentMethods, WebhookEvent
from billfold.providers.errors import ProviderObjectNotFound

log = logging.getLogger("billfold.webhooks")

BATCH = 50
SYSTEM = "system"
LEASE = timedelta(minutes=5)  # a claimed event is not claimed again before this, should its worker die

PAYMENT_OBJECTS = frozenset({"charge"})
REFUND_OBJECTS = frozenset({"refund"})


def due(statement: sa.Select[tuple[PaymentWebhook]], now: object) -> sa.Select[tuple[PaymentWebhook]]:
    return statement.where(
        PaymentWebhook.processed == sa.false(),
        sa.or_(PaymentWebhook.next_attempt_at.is_(None), PaymentWebhook.next_attempt_at <= now),
    ).order_by(PaymentWebhook.created_at, PaymentWebhook.id)


@sweep("webhooks.process", every=timedelta(seconds=30))
def process_webhooks(context: Context, *, limit: int = BATCH) -> int:
    """The inbox's due events, oldest first, each converging its payment or refund on the
    provider's state. How many were tried."""
    now = clock.now()
    with transaction(context.sessions) as session:
        claimed = claim_batch(session, due(sa.select(PaymentWebhook), now), limit)
        for row in claimed:
            row.next_attempt_at = now + LEASE
        work = [(row.id, row.provider_id, row.payload) for row in claimed]
    for webhook_id, provider_id, payload in work:
        try:
            note = process(context, provider_id, payload)
        except Exception as error:  # noqa: BLE001  (one event's trouble does not hold back the others)
            detail = error.detail if isinstance(error, BillfoldError) else f"{type(error).__name__}: {error}"
            log.warning("webhook %s left unprocessed: %s", webhook_id, detail)
            _failed(context, webhook_id, detail)
            continue
        with transaction(context.sessions) as session:
            row = session.get(PaymentWebhook, webhook_id)
            if row is not None:
                row.processed, row.processed_at, row.note = True, clock.now(), note[:500]
                row.last_error, row.next_attempt_at = None, None
    return len(work)


def _failed(context: Context, webhook_id: str, detail: str) -> None:
    with transaction(context.sessions) as session:
        row = session.get(PaymentWebhook, webhook_id)
        if row is not None:
            row.attempts = (row.attempts or 0) + 1
            row.last_error = detail[:2000]
            row.next_attempt_at = clock.now() + backoff(row.attempts)


def process(context: Context, provider_id: str, payload: object) -> str:
    """Converge what the event is about; a note of what was done. Raises when the provider could
    not be asked (the event is then tried again later)."""
    try:
        event = WebhookEvent.from_dict(payload)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as error:
        return f"not an event Billfold can read ({type(error).__name__}); ignored"
    if event.object_type in PAYMENT_OBJECTS:
        payment_id = _payment_of(context, provider_id, event.object_id)
        if payment_id is None:
            return f"{event.type}: no payment of Billfold's is charge {event.object_id}; nothing changed"
        outcome = engine.settle_charge(
            context.sessions, context.security, context.settings, payment_id, engine.ask, by=SYSTEM
        )
        if outcome.result is Result.UNKNOWN:
            raise outcome.error if isinstance(outcome.error, Exception) else RuntimeError("the provider did not answer")
        return f"{event.type}: payment {payment_id} is {_status(context, Payment, payment_id)}"
    if event.object_type in REFUND_OBJECTS:
        refund_id = _refund_of(context, provider_id, event.object_id)
        if refund_id is None:
            return f"{event.type}: no refund of Billfold's is refund {event.object_id}; nothing changed"
        refunds.recheck(context.sessions, context.security, refund_id, by=SYSTEM)
        return f"{event.type}: refund {refund_id} is {_status(context, Refund, refund_id)}"
    if event.object_type == "dispute":
        return f"{event.type}: {_dispute(context, provider_id, event.object_id)}"
    if event.object_type == "payment_method":
        return f"{event.type}: {_payment_method(context, provider_id, event.object_id)}"
    return f"{event.type}: Billfold does not act on {event.object_type} events"


def _dispute(context: Context, provider_id: str, dispute_id: str) -> str:
    """Record the dispute as the provider has it now, on the payment it disputes (a lost one
    becomes a refund: ``refunds.record_dispute``)."""
    with reading(context.sessions) as session:
        adapter = _adapter(session, context, provider_id)
    if not adapter.capabilities.disputes or not isinstance(adapter, ReadsDisputes):
        return f"provider {provider_id} cannot be asked about disputes; nothing changed"
    try:
        dispute = adapter.get_dispute(dispute_id)
    except ProviderObjectNotFound:
        return f"the provider has no dispute {dispute_id}; nothing changed"
    with reading(context.sessions) as session:
        payment_id = session.scalars(
            sa.select(Payment.id).where(Payment.provider_id == provider_id, Payment.provider_payment_id == dispute.charge_id)
        ).first()
    if payment_id is None:
        return f"no payment of Billfold's is charge {dispute.charge_id}; nothing changed"
    with transaction(context.sessions) as session:
        return refunds.record_dispute(session, context.settings, payment_id, dispute, by=SYSTEM)


def _payment_method(context: Context, provider_id: str, provider_method_id: str) -> str:
    """Bring our saved method in line with the provider's (a new expiry; detached there)."""
    with reading(context.sessions) as session:
        known = session.scalars(
            sa.select(PaymentMethod.id).where(
                PaymentMethod.provider_id == provider_id, PaymentMethod.provider_payment_method_id == provider_method_id
            )
        ).all()
        adapter = _adapter(session, context, provider_id) if known else None
    if adapter is None:
        return f"no saved method of Billfold's is {provider_method_id}; nothing changed"
    if not isinstance(adapter, ReadsPaymentMethods):
        return f"provider {provider_id} cannot be asked about payment methods; nothing changed"
    try:
        result: PaymentMethodResult | None = adapter.get_payment_method(provider_method_id)
    except ProviderObjectNotFound:  # gone at the provider: as good as detached
        result = None
    notes = []
    with transaction(context.sessions) as session:
        for method_id in known:
            method = session.scalars(
                for_update(sa.select(PaymentMethod).where(PaymentMethod.id == method_id), session)
            ).one_or_none()
            if method is None:
                continue
            if result is None:
                result = PaymentMethodResult(provider_method_id, None, method.payment_type, None, None, None, None,
                                             clock.now(), detached=True)
            notes.append(f"{method_id} {methods.provider_changed(session, method, result)}")
    return "; ".join(notes) or "nothing changed"


def _adapter(session: Session, context: Context, provider_id: str) -> ProviderAdapter:
    return provider_config.adapter_for_provider(session, context.security, provider_id, require_active=False)


def _payment_of(context: Context, provider_id: str, charge_id: str) -> str | None:
    """Our payment charged as ``charge_id``: by the id we recorded, else by the payment id Billfold
    put in the charge's metadata (its answer was lost, so the id was never recorded). The provider
    is asked with no transaction open."""
    with reading(context.sessions) as session:
        found = session.scalars(
            sa.select(Payment.id).where(Payment.provider_id == provider_id, Payment.provider_payment_id == charge_id)
        ).first()
        adapter = _adapter(session, context, provider_id) if found is None else None
    if adapter is None:
        return found
    try:
        charge = adapter.get_charge(charge_id)
    except ProviderObjectNotFound:
        return None
    named = (charge.metadata or {}).get("payment_id")
    if not named:
        return None
    with reading(context.sessions) as session:
        return session.scalars(
            sa.select(Payment.id).where(
                Payment.id == named, Payment.provider_id == provider_id,
                sa.or_(Payment.provider_payment_id.is_(None), Payment.provider_payment_id == charge_id),
            )
        ).first()


def _refund_of(context: Context, provider_id: str, provider_refund_id: str) -> str | None:
    """Our refund made as ``provider_refund_id``: by the id we recorded, else by its metadata. The
    provider is asked with no transaction open."""
    of_provider = sa.select(Refund.id).join(Payment, Payment.id == Refund.payment_id).where(Payment.provider_id == provider_id)
    with reading(context.sessions) as session:
        found = session.scalars(of_provider.where(Refund.provider_refund_id == provider_refund_id)).first()
        adapter = _adapter(session, context, provider_id) if found is None else None
    if adapter is None:
        return found
    try:
        made = adapter.get_refund(provider_refund_id)
    except ProviderObjectNotFound:
        return None
    named = (made.metadata or {}).get("refund_id")
    if not named:
        return None
    with reading(context.sessions) as session:
        return session.scalars(
            of_provider.where(
                Refund.id == named,
                sa.or_(Refund.provider_refund_id.is_(None), Refund.provider_refund_id == provider_refund_id),
            )
        ).first()


def _status(context: Context, model: type[Payment] | type[Refund], row_id: str) -> str:
    with reading(context.sessions) as session:
        return str(session.scalars(sa.select(model.status).where(model.id == row_id)).one())
