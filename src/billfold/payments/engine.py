"""The payment engine: every charge and every refund, for an order or a subscription's invoice, moves
money the same way, in three phases around the one call to the provider (reference/providers.md §1):

1. **prepare**, in the caller's transaction: find the route (routing.py: method, provider,
   adapter), check what the provider can do before any row is written, and start a ``pending``
   payment (``start_payment``) or refund. The row's id makes the provider's idempotency key
   (``provider_key``).
2. **ask** (``run``): read the rows and build the adapters in a short read, then, with no
   transaction open, one call to the provider per row with the row's own key (a batch's calls
   overlap, up to ``concurrency`` at once: ``_ask_all``).
3. **record** (``run``), with the rows locked: the answer moves the row by its state machine
   (states.py), and what the payment pays for follows in the same transaction (its ``Payable``:
   the order becomes paid, the invoice paid, the subscription active or past due). An outcome
   recorded already is left alone.

An adapter that can make the provider's object before any money moves
(``capabilities.creates_before_charging``: Stripe's PaymentIntent, PayPal's order) is asked in two
steps: ``create_charge``, whose id is stored in the payment's details in a transaction of its own
(``remember``), then ``confirm``. Asked again, the engine fetches that object by the stored id
and goes on with it, so a retry never depends on the provider honouring an idempotency key.

The provider not answering (``ProviderUnavailable``, or ``IdempotencyMismatch``: something was made
under this key) leaves the row ``pending`` with its outcome ``UNKNOWN``. It is asked about again
with the same key, by a retry or by a sweep, ``STALE_AFTER`` after it began, and so never charged
or refunded twice.

One exception, failover (routing.py): when a payment's first charge request certainly never
reached its provider (``ProviderUnavailable.sent`` False: the connection was refused), nothing can
have happened there, so ``run`` fails the payment (``provider_unavailable``) and starts a new one
of the same order or invoice with the next provider at which the customer has a usable saved
method, in one transaction, then charges that one (again with no transaction open). Without such
a provider the payment stays pending as above.

Services answer with an ``Outcome`` (a domain result); the routes turn it into an HTTP answer.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from typing import Any, Literal, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from billfold.accounts.security import Security
from billfold.config import Settings
from billfold.kit import clock
from billfold.kit.db import insert_rows, reading, transaction
from billfold.kit.db.dialects import for_update
from billfold.kit.errors import BillfoldError, Conflict
from billfold.kit.ids import new_id
from billfold.kit.money import Money
from billfold.models import Payment, PaymentMethod
from billfold.payments import provider_config, routing
from billfold.payments.details import WAITING_FOR_CUSTOMER, PaymentDetails
from billfold.payments.states import PAYMENT, WAITING
from billfold.providers.base import ChargeResult, ChargeStatus, CreatesBeforeCharging, ProviderAdapter, RefundResult
from billfold.providers.errors import Declined, IdempotencyMismatch, ProviderError, ProviderUnavailable

log = logging.getLogger("billfold.payments")

STALE_AFTER = timedelta(minutes=10)
"""A charge or refund whose outcome is still unknown this long after it began has lost its request
(a crash, a timeout): a sweep asks the provider what its key made."""

Operation = Literal["charge", "pay", "confirm", "cancel", "refund"]
"""``charge``: the charge, or the provider's object made before it; ``pay``: confirming that object
(the money moves); ``confirm``: going on after the customer's action."""


def provider_key(row_id: str, operation: Operation) -> str:
    """The idempotency key sent to the provider for ``operation`` on our row ``row_id`` (a payment,
    or a refund): derived from the row, so every ask about it, after a timeout or a crash, gets
    the provider's first answer and never moves money twice."""
    return f"billfold-{row_id}-{operation}"


# Errors


class ChargeNotMade(BillfoldError):
    """The provider made no charge for a payment whose request never heard its answer."""

    status = 402
    code = "payment_not_made"
    title = "The payment was never made"


class PaymentNotWaiting(Conflict):
    code = "payment_not_waiting"
    title = "The payment is not waiting for the customer"


class PaymentRequiresAction(Conflict):
    code = "payment_requires_action"
    title = "A payment waits for the customer"


# Outcomes


class Result(StrEnum):
    """How a charge or a refund ended, as far as Billfold knows."""

    SUCCEEDED = "succeeded"  # the money moved: the payment is completed (or refunded since), the refund made
    CANCELLED = "cancelled"  # the charge was ended (the payment failed) as someone asked: see Outcome.error
    PENDING = "pending"  # the customer must act (3-D Secure), or the provider is still processing
    FAILED = "failed"  # declined, refused by the provider, or never made: ``error`` says why
    UNKNOWN = "unknown"  # the provider did not answer; the row stays pending for a retry or a sweep


@dataclass(frozen=True)
class Outcome:
    """What became of one payment (or, with ``refund_id``, one refund of it), and what it pays for."""

    result: Result
    payment_id: str
    order_id: str | None = None
    subscription_id: str | None = None
    invoice_id: str | None = None
    refund_id: str | None = None
    error: Exception | None = None

    @property
    def succeeded(self) -> bool:
        return self.result is Result.SUCCEEDED


def outcome_of(payment: Payment, result: Result, *, refund_id: str | None = None, error: Exception | None = None) -> Outcome:
    return Outcome(
        result, payment.id, payment.order_id, payment.subscription_id, PaymentDetails.of(payment).invoice_id,
        refund_id, error,
    )


@dataclass(frozen=True)
class Answer:
    """What the provider said about one row: the charge (or refund) as it has it, None when it made
    none; and its refusal (a decline, a request it refused), raised to no one but recorded."""

    result: ChargeResult | RefundResult | None
    error: Exception | None = None
    unsent: bool = False  # the request certainly never reached the provider (``error`` says why)


# What payments pay for


@dataclass(frozen=True)
class ChargeFor:
    """How a payable asks the provider for a charge."""

    description: str | None
    metadata: dict[str, str]
    off_session: bool = False  # the customer is not there (a renewal): the provider may not ask them to act
    may_wait: bool = True  # False: a charge that needs the customer's action is ended and declined
    # Stores the provider's object id on the payment before its money moves (``Charges`` sets it).
    remember: Callable[[str, str], None] | None = None


class Payable(Protocol):
    """What payments pay for (an order; a subscription's invoice), as the engine sees it. One is made
    for each phase (``payable_for``); ``lock`` and ``charged`` are called in one transaction."""

    def read(self, session: Session, payments: Sequence[Payment]) -> None:
        """Before the provider is asked (no transaction open after): read what ``describe`` needs."""

    def describe(self, payment: Payment) -> ChargeFor: ...

    def lock(self, session: Session, payments: Sequence[Payment]) -> None:
        """In the recording transaction, before the payments are locked: lock the payable's own rows
        that must be locked first (always in the same order, so recorders never deadlock)."""

    def charged(self, session: Session, payment: Payment, error: Exception | None, *, by: str | None) -> None:
        """After the provider's answer was recorded on ``payment`` (completed, failed, or still pending)."""

    def refunded(self, session: Session, payment: Payment, *, by: str | None) -> None:
        """After ``payment`` became ``refunded`` (nothing is left of it)."""


PayableKind = Literal["order", "subscription"]
PAYABLES: dict[PayableKind, str] = {
    "order": "billfold.orders.checkout:OrderPayments",
    "subscription": "billfold.subscriptions.charging:SubscriptionCharges",
}
"""What each kind of payment pays for: the class (made with the settings) that follows its payments.
Listed here rather than registered on import, so the engine works the same whatever a process has
imported; imported when first needed, since orders and subscriptions import the engine."""


def kind_of(payment: Payment) -> PayableKind:
    return "order" if payment.order_id is not None else "subscription"


def payable_for(kind: PayableKind, settings: Settings) -> Payable:
    module, _, name = PAYABLES[kind].partition(":")
    factory: Callable[[Settings], Payable] = getattr(importlib.import_module(module), name)
    return factory(settings)


def _by_kind(payments: Iterable[Payment]) -> dict[PayableKind, list[Payment]]:
    grouped: dict[PayableKind, list[Payment]] = {}
    for payment in payments:
        grouped.setdefault(kind_of(payment), []).append(payment)
    return grouped


# Phase 1: starting a payment


def start_payment(
    session: Session,
    *,
    amount_cents: int,
    currency: str,
    provider_id: str,
    method: PaymentMethod | None,
    user_id: str | None,
    organization_id: str | None,
    order_id: str | None = None,
    subscription_id: str | None = None,
    token: str | None = None,
    customer_id: str | None = None,
    details: PaymentDetails | None = None,
    approval: bool = False,
    by: str | None,
    write: bool = False,
) -> Payment:
    """A new ``pending`` payment of ``amount_cents`` for an order or a subscription, through
    ``provider_id`` with a saved ``method`` (at the provider's customer ``customer_id``) or a
    one-time ``token`` (or, with ``approval``, neither: the customer approves it on the provider's
    page); added to the session with its event, not flushed (a batch's payments go in one
    statement), or with ``write`` written at once (``kit.db.insert_rows``: a checkout's one
    payment). Its id makes its provider key."""
    stored = (details or PaymentDetails()).but(
        provider_status="created",
        token=token,
        approval="provider" if approval and not token and method is None else None,
        provider_payment_method_id=method.provider_payment_method_id if method else None,
        provider_customer_id=customer_id if method else None,
    )
    payment = Payment(
        id=new_id("pay"),
        order_id=order_id,
        subscription_id=subscription_id,
        user_id=user_id,
        organization_id=organization_id,
        payment_method_id=method.id if method else None,
        provider_id=provider_id,
        amount_cents=amount_cents,
        currency=currency,
        status="pending",
        metadata_=stored.to_json(),
    )
    if write:
        insert_rows(session, [payment])
    else:
        session.add(payment)
    PAYMENT.start(
        session, payment, "pending", by=by, order_id=order_id, subscription_id=subscription_id,
        invoice_id=stored.invoice_id, amount_cents=amount_cents,
    )
    return payment


def stale(payment: Payment) -> bool:
    return payment.created_at <= clock.now() - STALE_AFTER


# Phase 2: the calls to the provider. Each takes the adapter (None when there is nothing to charge),
# the payment as read, and how its payable asks; each answers what the provider said, or raises
# ProviderUnavailable / IdempotencyMismatch when the outcome is unknown.

Call = Callable[[ProviderAdapter | None, Payment, ChargeFor], Answer]


def charge(adapter: ProviderAdapter | None, payment: Payment, about: ChargeFor) -> Answer:
    """Charge the payment's saved method or token, with its own key (asking again gets the first
    answer). A first request that certainly never reached the provider answers ``unsent`` (the
    runner may fail the payment over to another provider)."""
    try:
        return _charge(adapter, payment, about)
    except ProviderUnavailable as error:
        if error.sent:
            raise
        return Answer(None, error, unsent=True)


def _charge(adapter: ProviderAdapter | None, payment: Payment, about: ChargeFor) -> Answer:
    details = PaymentDetails.of(payment)
    if adapter is None or not details.chargeable:
        return Answer(None, Declined("the customer has no payment method to charge", "generic_decline"))
    arguments: dict[str, Any] = dict(
        amount=Money(payment.amount_cents, payment.currency),
        idempotency_key=provider_key(payment.id, "charge"),
        customer_id=details.provider_customer_id,
        payment_method_id=details.provider_payment_method_id,
        token=details.token,
        off_session=about.off_session,
        description=about.description,
        metadata=about.metadata,
    )
    try:
        if creates_first(adapter):
            created = adapter.create_charge(**arguments)  # type: ignore[attr-defined]
            if about.remember is not None:
                try:
                    about.remember(payment.id, created.id)
                except Exception as error:  # the database failed us: no money moved; asked about again later
                    raise ProviderUnavailable(
                        f"the provider's object {created.id} for payment {payment.id} was made but could not be "
                        "recorded; it is found and confirmed when the payment is asked about again",
                    ) from error
            result = _pay(adapter, payment, created)
        else:
            result = adapter.charge(**arguments)
    except Declined as declined:
        return Answer(declined.charge, declined)
    except (ProviderUnavailable, IdempotencyMismatch):
        raise  # outcome unknown (a mismatch: something was charged under this key): asked about later
    except ProviderError as refused:  # a definite refusal (an unknown token, say): nothing was charged
        return Answer(None, refused)
    if result.status == ChargeStatus.REQUIRES_ACTION and not about.may_wait:
        # No one is there to authenticate: end the charge, and treat it as declined.
        ended = adapter.cancel(charge_id=result.id, idempotency_key=provider_key(payment.id, "cancel"))
        return Answer(ended, Declined("the bank asks the customer to authenticate this payment", "authentication_required"))
    return Answer(result)


def creates_first(adapter: ProviderAdapter) -> bool:
    """Whether the adapter makes the provider's object before moving money (``create_charge``)."""
    return adapter.capabilities.creates_before_charging and isinstance(adapter, CreatesBeforeCharging)


def _pay(adapter: ProviderAdapter, payment: Payment, created: ChargeResult) -> ChargeResult:
    """Move the money of an object ``create_charge`` made; one the customer must approve first
    (PayPal's approve link) waits for them as it is."""
    if created.status != ChargeStatus.CREATED:
        return created
    return adapter.confirm(charge_id=created.id, idempotency_key=provider_key(payment.id, "pay"))


def remember(sessions: sessionmaker[Session], payment_id: str, provider_payment_id: str) -> None:
    """Store the provider's object id on a payment that has none yet (``PaymentDetails.provider_object_id``),
    and commit, before its money moves: should this process die now, whoever asks again fetches that object instead of making
    another."""
    with transaction(sessions) as session:
        statement = for_update(sa.select(Payment).where(Payment.id == payment_id), session)
        payment = session.scalars(statement.execution_options(populate_existing=True)).one()
        details = PaymentDetails.of(payment)
        if payment.provider_payment_id is None and details.provider_object_id is None:
            details.but(provider_object_id=provider_payment_id).write(payment)


def ask(adapter: ProviderAdapter | None, payment: Payment, about: ChargeFor) -> Answer:
    """For a payment whose outcome this request did not hear: what the provider made under its key,
    without charging again. No charge there: a young payment is charged now with the same key (its
    first request may still be under way; the provider makes one charge for both), a stale one
    failed (``ChargeNotMade``)."""
    assert adapter is not None
    made = payment.provider_payment_id or PaymentDetails.of(payment).provider_object_id
    if made:
        found: ChargeResult | None = adapter.get_charge(made)
    else:
        found = adapter.find_charge(idempotency_key=provider_key(payment.id, "charge"))
    if found is not None and found.status == ChargeStatus.CREATED and creates_first(adapter):
        try:  # made, and stored, but its money never moved: move it now, under the same key
            found = _pay(adapter, payment, found)
        except Declined as declined:
            return Answer(declined.charge, declined)
    if found is None:
        if stale(payment):
            return Answer(None, ChargeNotMade(
                f"the provider made no charge for payment {payment.id}, and its request never heard an answer; "
                "pay the order again"
            ))
        # An earlier request for this payment may still reach the provider: never failed over from here.
        return _charge(adapter, payment, about)
    if found.status == ChargeStatus.FAILED:
        return Answer(found, Declined(found.failure_message or "The payment was declined.", found.failure_code or "generic_decline", charge=found))
    return Answer(found)


def confirm(adapter: ProviderAdapter | None, payment: Payment, about: ChargeFor) -> Answer:
    """Go on with a charge after the customer's action (3-D Secure)."""
    assert adapter is not None
    try:
        return Answer(adapter.confirm(charge_id=payment.provider_payment_id, idempotency_key=provider_key(payment.id, "confirm")))  # type: ignore[arg-type]
    except Declined as declined:
        return Answer(declined.charge, declined)


def cancel(adapter: ProviderAdapter | None, payment: Payment, about: ChargeFor) -> Answer:
    """End a charge that waits for the customer. If the provider cannot (the charge was completed,
    or ended, meanwhile), what the charge became is the answer, so the payment does not wait for an
    action that cannot come."""
    assert adapter is not None
    try:
        return Answer(adapter.cancel(charge_id=payment.provider_payment_id, idempotency_key=provider_key(payment.id, "cancel")))  # type: ignore[arg-type]
    except (ProviderUnavailable, IdempotencyMismatch):
        raise
    except ProviderError:
        return ask(adapter, payment, about)


# Phase 3: recording a charge


def record_charge(session: Session, payment: Payment, answer: Answer, *, by: str | None) -> Result:
    """Write what the provider said on the (locked) payment and move it by its state machine; what
    the answer means. The changes are flushed with the caller's next query or commit."""
    details = PaymentDetails.of(payment)
    result, error = answer.result, answer.error
    assert result is None or isinstance(result, ChargeResult)
    if result is not None:
        payment.provider_payment_id = result.id
        details = details.but(provider_status=result.provider_status, next_action=result.next_action or None)
    if isinstance(error, Declined):
        details = details.but(decline_code=str(error.decline_code))
        payment.error_message = error.detail
    elif isinstance(error, BillfoldError):  # a refusal, or no charge made: the payment failed all the same
        details = details.but(failure=error.code)
        payment.error_message = error.detail
    status = result.status if result is not None else ChargeStatus.FAILED
    # The machine reads the payment's state from the row as it was (waiting for the customer, or
    # not), so the move comes first and the details the provider gave are written after it.
    if status == ChargeStatus.SUCCEEDED:
        if PAYMENT.move(session, payment, "completed", by=by, provider_payment_id=payment.provider_payment_id):
            payment.completed_at = clock.now()
        ended = Result.SUCCEEDED
    elif status in (ChargeStatus.FAILED, ChargeStatus.CANCELED):
        PAYMENT.move(session, payment, "failed", by=by, reason=details.decline_code or details.failure or status.value)
        ended = Result.FAILED if status == ChargeStatus.FAILED else Result.CANCELLED
    else:  # waiting for the customer, or the provider is still processing
        waits = status == ChargeStatus.REQUIRES_ACTION
        PAYMENT.move(session, payment, WAITING if waits else "pending", by=by)
        if waits:
            details = details.but(provider_status=WAITING_FOR_CUSTOMER)
        ended = Result.PENDING
    details.write(payment)
    return ended


def failure_of(payment: Payment) -> BillfoldError:
    """The error a failed payment answers with to a request that did not hear the provider itself."""
    details = PaymentDetails.of(payment)
    if details.failure == ChargeNotMade.code:
        return ChargeNotMade(payment.error_message or "the provider made no charge for this payment")
    return Declined(payment.error_message or "The payment was declined.", details.decline_code or "generic_decline")


_AS_STORED = {"pending": Result.PENDING, "completed": Result.SUCCEEDED, "refunded": Result.SUCCEEDED, "failed": Result.FAILED}


# The runner

Row = TypeVar("Row")


class Move(Protocol[Row]):
    """One kind of money move for the runner: how its rows are read, asked about and recorded.
    A move is made for one run (it may keep what it read for its calls)."""

    def read(self, session: Session, ids: Sequence[str]) -> list[Row]: ...

    def asks(self, row: Row) -> bool:
        """Whether the provider is to be asked about ``row`` (not when it is settled already)."""

    def provider(self, row: Row) -> str | None:
        """The provider whose adapter ``ask`` needs, or None (nothing to ask it with)."""

    def ask(self, adapter: ProviderAdapter | None, row: Row) -> Answer: ...

    def record(self, session: Session, heard: list[tuple[Row, Answer | None]]) -> list[Outcome]:
        """Lock, record each answer (None: not asked), and say what became of each row."""

    def unknown(self, row: Row, error: Exception) -> Outcome: ...


class FailsOver(Protocol[Row]):
    """A move whose rows can go to another provider when theirs was unreachable (``Charges``)."""

    def fail_over(self, session: Session, security: Security, heard: list[tuple[Row, Exception]]) -> dict[str, str]:
        """In one transaction: fail each row that can go elsewhere and start its next attempt there
        (row id → the new row's id); a row left out stays pending (nowhere to go)."""

    def again(self) -> Move[Row]:
        """A new move of the same kind, for the next attempts."""


def run(
    sessions: sessionmaker[Session],
    security: Security,
    move: Move[Any],
    ids: Sequence[str],
    *,
    after: Callable[[Session, list[Outcome]], None] | None = None,
    concurrency: int = 1,
    read: Read | None = None,
) -> list[Outcome]:
    """Phases 2 and 3 for the rows ``ids``: read them and build their adapters in a short read
    (or take ``read``, made by ``read_rows`` in the transaction that started them); ask
    the provider about each, with no transaction open (up to ``concurrency`` asks at once, each
    with its own key: ``_ask_all``); record every answer in one transaction,
    which ``after`` joins (an API stores its answer under the Idempotency-Key there: a run of one
    row). A row the provider did not answer about is not recorded: its outcome is ``UNKNOWN``.
    A row whose request never reached the provider is failed over when the move can
    (``FailsOver``): its outcome is then its next attempt's, run the same way.

    Should the one transaction fail for several rows (a deadlock, a bug one row trips), each is
    recorded in a transaction of its own instead, so one cannot hold back the others; a row whose
    answer still cannot be recorded stays pending, ``UNKNOWN``, for the sweep."""
    if read is None:
        with reading(sessions) as session:
            read = read_rows(session, security, move, ids)
    rows, adapters = read.rows, read.adapters
    heard: list[tuple[Any, Answer | None]] = []
    unknown: list[Outcome] = []
    for row, answer in zip(rows, _ask_all(move, adapters, rows, concurrency), strict=True):
        if isinstance(answer, Exception):
            unknown.append(move.unknown(row, answer))
        else:
            heard.append((row, answer))
    unsent = [(row, answer) for row, answer in heard if answer is not None and answer.unsent]
    if unsent:
        heard = [(row, answer) for row, answer in heard if answer is None or not answer.unsent]
        followed = _fail_over(sessions, security, move, unsent, unknown)
        if followed:
            again: Move[Any] = move.again()  # type: ignore[attr-defined]
            unknown += run(sessions, security, again, followed, after=after if not heard else None, concurrency=concurrency)
    if not heard:
        return unknown
    try:
        return _record(sessions, move, heard, after) + unknown
    except Exception:
        if len(heard) == 1:
            raise
    outcomes: list[Outcome] = []
    for one in heard:
        try:
            outcomes += _record(sessions, move, [one], None)
        except Exception as error:  # noqa: BLE001  (logged; the row stays pending for the sweep)
            log.warning("outcome of %s not recorded, left pending: %s", one[0].id, error)
            outcomes.append(move.unknown(one[0], error))
    return outcomes + unknown


@dataclass
class Read:
    """What phase 2 needs of its rows: the rows as read, and an adapter for each provider asked."""

    rows: list[Any]
    adapters: dict[str, ProviderAdapter]


def read_rows(session: Session, security: Security, move: Move[Any], ids: Sequence[str]) -> Read:
    """The rows ``ids`` and their adapters, read in ``session``. A caller that has just started
    the rows reads them in that same transaction, before its commit (``checkout.buy``): what it
    reads is what it commits, and phase 2 needs no transaction of its own."""
    rows = move.read(session, ids)
    adapters: dict[str, ProviderAdapter] = {}
    for row in rows:
        provider_id = move.provider(row) if move.asks(row) else None
        if provider_id is not None and provider_id not in adapters:
            adapters[provider_id] = provider_config.adapter_for_provider(session, security, provider_id)
    return Read(rows, adapters)


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(size: int) -> ThreadPoolExecutor:
    """This process's pool of ``size`` threads for the provider calls of batches, kept for the
    process's life: an adapter may keep a connection per thread (the sandbox's store does), which
    threads made afresh for each batch would open again every time. Keyed by the process id too:
    a forked child has none of its parent's threads."""
    key = (os.getpid(), size)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="billfold-provider-call")
        return pool


def _ask_all(
    move: Move[Any], adapters: dict[str, ProviderAdapter], rows: Sequence[Any], concurrency: int,
) -> list[Answer | None | ProviderUnavailable | IdempotencyMismatch]:
    """Phase 2 for ``rows``, in their order: each row's answer, None when it is not asked about, or
    the error that leaves its outcome unknown. With ``concurrency`` above 1 the calls overlap, up
    to that many at once, on threads that hold no transaction or connection of ours: a batch waits
    about one provider round trip, not one per row. Each call still carries its row's own key, so
    what a crash or a timeout leaves is what a call made alone would leave."""

    def one(row: Any) -> Answer | None | ProviderUnavailable | IdempotencyMismatch:
        if not move.asks(row):
            return None
        provider_id = move.provider(row)
        try:
            return move.ask(adapters[provider_id] if provider_id is not None else None, row)
        except (ProviderUnavailable, IdempotencyMismatch) as error:
            return error

    asked = sum(1 for row in rows if move.asks(row))
    if concurrency <= 1 or asked <= 1:
        return [one(row) for row in rows]
    calls = [_pool(concurrency).submit(one, row) for row in rows]
    wait(calls)  # all of them ended before any error is raised: none is still asking when a caller retries
    return [call.result() for call in calls]


def _fail_over(
    sessions: sessionmaker[Session], security: Security, move: Move[Any], unsent: list[tuple[Any, Answer]],
    unknown: list[Outcome],
) -> list[str]:
    """The rows whose request never reached their provider failed over in one transaction (the next
    attempts' ids); a row with nowhere to go is ``UNKNOWN`` (added to ``unknown``), left pending."""
    fail_over = getattr(move, "fail_over", None)
    followed: dict[str, str] = {}
    if fail_over is not None:
        try:
            with transaction(sessions) as session:
                followed = fail_over(session, security, [(row, answer.error) for row, answer in unsent])
        except Exception as error:  # noqa: BLE001  (logged; the rows stay pending for the sweep)
            log.warning("failover of %s not recorded, left pending: %s", [row.id for row, _ in unsent], error)
            followed = {}
    for row, answer in unsent:
        if row.id not in followed:
            assert answer.error is not None
            unknown.append(move.unknown(row, answer.error))
    return [followed[row.id] for row, _ in unsent if row.id in followed]


def _record(
    sessions: sessionmaker[Session], move: Move[Any], heard: list[tuple[Any, Answer | None]],
    after: Callable[[Session, list[Outcome]], None] | None,
) -> list[Outcome]:
    with transaction(sessions) as session:
        outcomes = move.record(session, heard)
        if after is not None:
            after(session, outcomes)
        return outcomes


@dataclass
class Charges:
    """The runner's move for payments: ``call`` asks the provider (``charge``, ``ask``,
    ``confirm``, ``cancel``), and each payment's payable describes the charge and follows its
    outcome."""

    call: Call
    settings: Settings
    by: str | None
    sessions: sessionmaker[Session] | None = None  # for ``remember``: where the provider's object id is stored
    _about: dict[str, ChargeFor] = field(default_factory=dict)

    def read(self, session: Session, ids: Sequence[str]) -> list[Payment]:
        # Rows this transaction holds already (it started them) are not read again.
        found = {i: p for i in ids if isinstance(p := session.identity_map.get(Session.identity_key(Payment, i)), Payment)}
        missing = [i for i in ids if i not in found]
        if missing:
            found.update({p.id: p for p in session.scalars(sa.select(Payment).where(Payment.id.in_(missing)))})
        rows = [found[payment_id] for payment_id in ids]
        for kind, payments in _by_kind(p for p in rows if self.asks(p)).items():
            payable = payable_for(kind, self.settings)
            payable.read(session, payments)
            self._about.update({p.id: payable.describe(p) for p in payments})
        return rows

    def asks(self, row: Payment) -> bool:
        return row.status == "pending"

    def provider(self, row: Payment) -> str | None:
        return row.provider_id if PaymentDetails.of(row).chargeable else None

    def ask(self, adapter: ProviderAdapter | None, row: Payment) -> Answer:
        about = self._about[row.id]
        if self.sessions is not None:
            sessions = self.sessions
            about = replace(about, remember=lambda payment_id, provider_id: remember(sessions, payment_id, provider_id))
        return self.call(adapter, row, about)

    def record(self, session: Session, heard: list[tuple[Payment, Answer | None]]) -> list[Outcome]:
        payables: dict[PayableKind, Payable] = {}
        for kind, payments in _by_kind(row for row, _ in heard).items():
            payables[kind] = payable_for(kind, self.settings)
            payables[kind].lock(session, payments)
        ids = sorted(row.id for row, _ in heard)
        statement = for_update(sa.select(Payment).where(Payment.id.in_(ids)).order_by(Payment.id), session)
        locked = {p.id: p for p in session.scalars(statement.execution_options(populate_existing=True))}
        outcomes = []
        for row, answer in heard:
            payment = locked[row.id]
            result = answer.result if answer is not None else None
            if answer is not None and (
                payment.status == "pending"
                or (payment.status == "failed" and isinstance(result, ChargeResult) and result.status == ChargeStatus.SUCCEEDED)
            ):
                ended = record_charge(session, payment, answer, by=self.by)
                payables[kind_of(payment)].charged(session, payment, answer.error, by=self.by)
            else:  # settled already (by another request, or the sweep): what it became
                ended = _AS_STORED[payment.status]
            error = answer.error if answer is not None else None
            if ended is Result.FAILED and error is None:
                error = failure_of(payment)
            outcomes.append(outcome_of(payment, ended, error=error if ended in (Result.FAILED, Result.CANCELLED) else None))
        session.flush()
        return outcomes

    def unknown(self, row: Payment, error: Exception) -> Outcome:
        if isinstance(error, ProviderUnavailable) and not error.sent:
            tried = routing.tried_providers(row)
            error = ProviderUnavailable(
                f"no payment provider could be reached (tried {', '.join(tried)}); nothing was charged, "
                "try again later", sent=False, providers_tried=tried, payment_id=row.id,
            )
        return outcome_of(row, Result.UNKNOWN, error=error)

    def again(self) -> Charges:
        return Charges(charge, self.settings, self.by)

    def fail_over(self, session: Session, security: Security, heard: list[tuple[Payment, Exception]]) -> dict[str, str]:
        """Each payment (locked, still pending with no charge) that has a next provider (a saved
        method of the customer there: routing.Failover) failed ``provider_unavailable``, and a new
        payment of the same order or invoice started there: old id → new id."""
        errors = {row.id: error for row, error in heard}
        statement = for_update(sa.select(Payment).where(Payment.id.in_(sorted(errors))).order_by(Payment.id), session)
        locked = [
            p for p in session.scalars(statement.execution_options(populate_existing=True))
            if p.status == "pending" and p.provider_payment_id is None
        ]
        where = routing.Failover(session, security, locked)
        followed: dict[str, str] = {}
        for payment in locked:
            about = self._about.get(payment.id)
            found = where.next_attempt(payment, off_session=about.off_session if about else False)
            if found is None:
                continue
            provider_id, method, customer_id = found
            details = PaymentDetails.of(payment)
            following = start_payment(
                session, amount_cents=payment.amount_cents, currency=payment.currency, provider_id=provider_id,
                method=method, user_id=payment.user_id, organization_id=payment.organization_id,
                order_id=payment.order_id, subscription_id=payment.subscription_id, customer_id=customer_id,
                details=PaymentDetails(
                    invoice_id=details.invoice_id, purpose=details.purpose, revert=details.revert,
                    others={"tried_providers": routing.tried_providers(payment)},
                ),
                by=self.by,
            )
            error = errors[payment.id]
            PAYMENT.move(  # first, as in record_charge: the machine reads the row as it was
                session, payment, "failed", by=self.by, reason=routing.FAILED_OVER, next_payment_id=following.id,
                next_provider_id=provider_id,
            )
            details.but(failure=routing.FAILED_OVER, others={**details.others, "next_payment_id": following.id}).write(payment)
            payment.error_message = (error.detail if isinstance(error, BillfoldError) else str(error))[:1000]
            followed[payment.id] = following.id
        session.flush()
        return followed


def settle_charge(
    sessions: sessionmaker[Session], security: Security, settings: Settings, payment_id: str, call: Call, *,
    by: str | None, after: Callable[[Session, Outcome], None] | None = None, read: tuple[Charges, Read] | None = None,
) -> Outcome:
    """``run`` for one payment: its outcome (``UNKNOWN`` when the provider did not answer).
    ``read``: the move and what it read in the transaction that started the payment
    (``charges_read``), so phase 2 begins with no read of its own."""
    move, rows = read if read is not None else (Charges(call, settings, by, sessions), None)
    [outcome] = run(
        sessions, security, move, [payment_id],
        after=(lambda session, outcomes: after(session, outcomes[0])) if after is not None else None, read=rows,
    )
    return outcome


def stale_pending(statement: sa.Select[Any]) -> sa.Select[Any]:
    """Narrow a select of payments to those still pending ``STALE_AFTER`` after they began, oldest
    first: their outcome was never heard (what the sweeps settle)."""
    return statement.where(Payment.status == "pending", Payment.created_at <= clock.now() - STALE_AFTER).order_by(Payment.id)



def charges_read(
    sessions: sessionmaker[Session], session: Session, security: Security, payment_id: str, call: Call, *,
    by: str | None,
) -> tuple[Charges, Read]:
    """For ``settle_charge(read=...)``: the move for ``payment_id`` and its read, made in
    ``session``, the transaction (of ``sessions``) that has just started the payment, before its
    commit."""
    move = Charges(call, security.settings, by, sessions)
    return move, read_rows(session, security, move, [payment_id])
